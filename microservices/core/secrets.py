"""The Redis credentials a process was given, and blanking them out of any text it is about to show.

The code never logs a password on purpose; this holds the line when a library's error message quotes one (a URL
parser quoting a piece of a password with an unencoded ``/``, say). Both the daemons' log formatter and the settings'
own error messages use it, so ``p31ctl check-config`` is covered as well as the daemons.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

REDACTED = "<redacted>"
#: A piece of a password shorter than this is not searched for: it would blank out ordinary words.
MIN_SECRET_LEN = 4
#: What ends the authority of a URL: an unencoded one inside a password splits it there, and a parser's error message
#: may then quote the piece before it (``Port could not be cast to integer value as '<piece>'``). Not ``:`` or ``@``,
#: which would also cut host and port out of a URL with an ``@`` in its query and blank them in every log line.
_URL_DELIMITERS = re.compile(r"[/?#]")


def secret_values(environ: Mapping[str, str]) -> frozenset[str]:
    """The Redis credentials in ``environ`` (``REDIS_PASSWORD``, ``REDIS_SENTINEL_PASSWORD``, the password of
    ``REDIS_URL``), as every text a log line could show them in: raw and percent-decoded, and, for a URL that does not
    parse as meant (a password with an unencoded ``/``, ``#`` or ``?``), each piece the parsers could quote. Read
    leniently from the raw environment, so a URL that the settings refuse is covered too."""
    passwords = [environ.get("REDIS_PASSWORD") or "", environ.get("REDIS_SENTINEL_PASSWORD") or ""]
    url = environ.get("REDIS_URL") or ""
    with contextlib.suppress(ValueError):  # e.g. an unbalanced [ in the host: the lenient reading below still applies
        passwords.append(urlsplit(url).password or "")
    _, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo = rest.rpartition("@")[0]  # up to the last @, as urlsplit does, whatever the password holds
        passwords.append(userinfo.partition(":")[2])
    found: set[str] = set()
    for password in passwords:
        for text in (password, unquote(password)):
            found.add(text)
            found.update(_URL_DELIMITERS.split(text))
    return frozenset(text for text in found if len(text) >= MIN_SECRET_LEN)


class Redactor:
    """Blanks out a set of secrets in text: longest first, so that a piece of a secret never leaves the rest of a
    longer one behind; each also as a JSON string body, in which a quote or backslash of the secret appears escaped."""

    def __init__(self, secrets: Iterable[str]) -> None:
        shown = {form for secret in secrets for form in (secret, json.dumps(secret, ensure_ascii=False)[1:-1])}
        self._secrets = sorted((form for form in shown if form), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text
