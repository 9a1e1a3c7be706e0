"""One exit status for a command line that cannot be carried out, in every entry point: 64 (``EX_USAGE`` of
sysexits.h), for the daemons and ``p31ctl`` alike.

argparse exits 2 on a usage error, which collides with nothing in sysexits but says nothing either; the daemons'
other statuses (69, 70, 78) are sysexits already, and the units' tooling reads them as such.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EX_USAGE = 64


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit :data:`EX_USAGE` with argparse's own message."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")
