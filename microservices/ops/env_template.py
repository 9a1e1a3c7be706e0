"""The shipped env files, generated from the settings classes so that they cannot drift from what the daemons read.

Every variable a daemon reads is written with its default, preceded by comment lines (never inline: systemd keeps an
inline ``# ...`` in the value) saying what it means (the setting's own ``doc``), its type, its allowed range (the
setting's own check, asked what it refuses) and its default. A variable without a default (``REDIS_URL``,
``REDIS_PASSWORD``) or whose default is computed at start-up (``GOV_CONSUMER``) is written commented out with an
example value, so the file still names it. ``deploy/allocation-target.env`` and ``deployment/config/governor.env``
are exactly :func:`render_env_file`'s output; a test holds them to it, so a new setting without an entry here (an
example or note for a commented-out variable) fails.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import MISSING, Field
from typing import TYPE_CHECKING, Any, Literal

from microservices.core.settings import CommonSettings, env_fields
from microservices.ops.daemons import DAEMONS, DaemonInfo

if TYPE_CHECKING:
    from microservices.ops.cli import Context

#: Variables written commented out: why they are, and an example an operator may uncomment.
UNSET: dict[str, tuple[str, str]] = {
    "REDIS_URL": (
        "Unset by default: REDIS_HOST, REDIS_PORT, REDIS_DB and REDIS_PASSWORD are used. A password in the URL is "
        "never logged; keep this file mode 0640.",
        "redis://localhost:6379/0",
    ),
    "REDIS_PASSWORD": ("Unset by default: no password.", "change-me"),
    "REDIS_SENTINELS": (
        "Unset by default: Redis is reached directly. With Redis Sentinel, list the sentinels; REDIS_HOST and "
        "REDIS_PORT are then ignored, and REDIS_URL and REDIS_CLUSTER=1 must not be set.",
        "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379",
    ),
    "REDIS_SENTINEL_PASSWORD": ("Unset by default: the sentinels ask for no password.", "change-me"),
    "GOV_CONSUMER": (
        "Default: the host name, computed at start-up. It must stay the same across restarts (pending plans are "
        "re-read under it) and differ between replicas; an empty value is refused.",
        "governor-1",
    ),
    "PROPOSER_LEASE_TTL_SEC": (
        "Default: 3 x LOOP_INTERVAL_SEC, computed at start-up (30 with the default interval). Every proposer of a "
        "deployment should use the same.",
        "30",
    ),
}

#: Constraints between variables (a settings class's ``cross_check``), which no single check states.
CROSS_CHECKS: dict[str, str] = {
    "P31_MIN_MULT": "must not exceed P31_MAX_MULT",
    "P31_MAX_MULT": "must not be below P31_MIN_MULT",
    "REDIS_SENTINELS": "not with REDIS_URL or REDIS_CLUSTER=1",
    "PROPOSER_LEASE_TTL_SEC": "must exceed LOOP_INTERVAL_SEC",
}

_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]*")
_WRAP = 116


def _type_and_range(cls: type[CommonSettings], f: Field[Any]) -> str:
    """The value's type and allowed range, in the words of the check the daemon runs on it."""
    hint = typing.get_type_hints(cls)[f.name]
    optional = typing.get_origin(hint) is not Literal and type(None) in typing.get_args(hint)
    if optional:  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(hint))
    if hint is bool:
        return "boolean: 1/true/yes/on or 0/false/no/off"
    kind = {int: "integer", float: "number"}.get(hint, "text")
    check = f.metadata.get("check")
    probes: tuple[Any, ...] = (-math.inf, math.inf) if hint in (int, float) else ("",)
    refusal = next((p for p in (check(v) if check else None for v in probes) if p is not None), None)
    ranges = [refusal.removeprefix("must be ")] if refusal is not None and refusal.startswith("must be ") else []
    if f.metadata["env"] in CROSS_CHECKS:
        ranges.append(CROSS_CHECKS[f.metadata["env"]])
    if not ranges and hint in (int, float):
        ranges.append("any finite number")
    if optional:
        ranges.append("empty means unset")
    elif hint is str and not ranges:
        ranges.append("non-empty, no surrounding white space")
    return f"{kind}, " + "; ".join(ranges)


def format_default(value: object) -> str:
    """A default as the env file spells it; numbers in the plainest form the daemon parses back to the same value."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value)
    if not _SAFE_VALUE.fullmatch(text):
        raise ValueError(f"default {text!r} would need quoting in an env file")
    return text


def _comment(text: str) -> list[str]:
    """``text`` as comment lines of at most ~120 characters."""
    lines: list[str] = []
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > _WRAP and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def _sentence(doc: str) -> str:
    doc = doc.strip()
    return doc + ("" if doc.endswith(".") else ".")


def _variable(cls: type[CommonSettings], f: Field[Any]) -> list[str]:
    env = f.metadata["env"]
    lines = _comment(f"{env}: {_sentence(f.metadata['doc'])}")
    lines += _comment(f"Type: {_type_and_range(cls, f)}.")
    if f.default is MISSING or f.default is None:
        note, example = UNSET[env]  # a KeyError here: a new setting with no default needs its note and example
        lines += [*_comment(note), f"# {env}={example}"]
    else:
        lines.append(f"{env}={format_default(f.default)}")
    return lines


def render_env_file(daemon: DaemonInfo) -> str:
    """The whole env file of ``daemon``: a header, then every variable it reads (shared ones first)."""
    header = [
        f"# {daemon.name}: {daemon.title}. Environment file of {daemon.unit}.",
        f"# Installed as {daemon.installed_env} (mode 0640, owner root:quantum-p31) and read through EnvironmentFile=.",
        f"# Generated from the daemon's settings by `p31ctl env-template {daemon.name}`: every variable it reads, with",
        "# its default. Change a value on the VPS, then check it with `p31ctl check-config FILE` before restarting.",
        "# Comments go on their own lines only: systemd keeps an inline `# ...` in the value; the daemon refuses it.",
        "# Variables set in the process environment win over this file.",
    ]
    shared = {f.metadata["env"] for f in env_fields(CommonSettings)}
    sections: dict[bool, list[str]] = {True: [], False: []}
    for f in env_fields(daemon.settings_class):
        sections[f.metadata["env"] in shared].extend(["", *_variable(daemon.settings_class, f)])
    lines = [*header, "", "# ===== Shared by both daemons: Redis, HTTP, reading efficiency scores"]
    lines += sections[True]
    lines += ["", f"# ===== {daemon.name} only", *sections[False]]
    return "\n".join(lines) + "\n"


def run_env_template(ctx: Context) -> int:
    daemon = DAEMONS[ctx.args.daemon]
    text = render_env_file(daemon)
    if ctx.json:
        ctx.emit_json({"daemon": daemon.name, "shipped_env": daemon.shipped_env, "text": text})
    else:
        ctx.out.write(text)
    return 0
