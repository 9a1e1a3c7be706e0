"""An execution plan as read from the plans stream (SPEC §3), parsed once into a value with no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from microservices.core.numbers import parse_float, show_raw

EXECUTE = "EXECUTE"
#: Longest accepted ``plan_id`` and ``symbol``: both become parts of Redis key names.
MAX_ID_LENGTH = 128
#: An invalid plan's plan_id and symbol are shown (in its event and log lines) cut to this many characters: enough to
#: show any plausible mistake whole, while a 1 MB plan_id is not copied into every event.
MAX_SHOWN_ID_LENGTH = 1024
#: Actions that reduce a position; ``PARTIAL_*`` and ``CLOSE*`` do too (matched exactly, upper case).
FULL_CLOSE = "FULL_CLOSE_PROPOSED"
REDUCING_PREFIXES = ("PARTIAL_", "CLOSE")
TRUE_FLAGS = ("true", "1")

_WHITE_SPACE = re.compile(r"\s")

#: A stream entry's fields as redis-py returns them (bytes) or as a test builds them (str).
EntryFields = Mapping[bytes, bytes] | Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Plan:
    """A well-formed plan. ``entry_id`` is the stream entry id; ``published_at`` its time part, when the plan was
    published; ``reducing`` whether it reduces a position (:func:`is_reducing`)."""

    entry_id: str
    published_at: float
    plan_id: str
    symbol: str
    action: str
    decision: str
    qty: float
    notional: float
    reducing: bool
    kill_score: float | None
    #: What is wrong with ``qty`` or ``notional`` (present but not a finite number): an EXECUTE plan cannot be
    #: permitted with a number guessed for it.
    quantity_problem: str | None = None
    #: What is wrong with ``kill_score`` (present but not a finite number): a non-reducing plan is held back.
    kill_score_problem: str | None = None


@dataclass(frozen=True, slots=True)
class InvalidPlan:
    """A plan that cannot be decided (SPEC §3 step 1): a dead letter with reason ``invalid_plan``."""

    entry_id: str
    fields: Mapping[str, str]
    detail: str

    @property
    def plan_id(self) -> str:
        """The plan_id as the event and the log show it: cut to :data:`MAX_SHOWN_ID_LENGTH` characters (the dead
        letter keeps the original), so a 1 MB plan_id is not copied into every event and log line."""
        return _cut(self.fields.get("plan_id", ""))

    @property
    def symbol(self) -> str:
        return _cut(self.fields.get("symbol", ""))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_ID_LENGTH else text[:MAX_SHOWN_ID_LENGTH] + "..."


def entry_time(entry_id: str) -> float:
    """Epoch seconds of a stream entry id (``<ms>-<seq>``)."""
    return int(entry_id.partition("-")[0]) / 1000.0


def is_reducing(action: str, reduce_only: bool) -> bool:
    return reduce_only or action == FULL_CLOSE or action.startswith(REDUCING_PREFIXES)


def _text(fields: EntryFields) -> dict[str, str] | str:
    """The fields as text, or what is wrong with them."""
    try:
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
    except UnicodeDecodeError:
        bad = next(k for k, v in fields.items() if not _utf8(k) or not _utf8(v))
        return f"field {show_raw(bad)} is not UTF-8 text"


def _utf8(value: bytes | str) -> bool:
    try:
        value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return False
    return True


def _identifier_problem(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return f"{name} missing"
    if len(value) > MAX_ID_LENGTH:
        return f"{name} longer than {MAX_ID_LENGTH} characters"
    if not value.isprintable() or _WHITE_SPACE.search(value):
        return f"{name} {show_raw(value)} holds white space or control characters"
    return None


def _number(fields: Mapping[str, str], name: str) -> tuple[float | None, str | None]:
    """A numeric field: (value, None), (None, None) when absent, or (None, problem) when present but not a number."""
    raw = fields.get(name)
    if raw is None or raw == "":
        return None, None
    value = parse_float(raw)
    if value is None:
        return None, f"{name} {show_raw(raw)} is not a finite number"
    return value, None


def _quantity(fields: Mapping[str, str], name: str, *, reducing: bool) -> tuple[float | None, str | None]:
    """A size: :func:`_number`, and not negative for a plan that opens or grows a position. The direction is the
    plan's ``side``: a negative size there is an upstream bug, and a permit must not carry (or, in enforce mode,
    scale) a number that means nothing. A reducing plan keeps its number as published: it is never scaled, and a
    close must never be held back by how its producer signs a size (some sign a short's)."""
    value, problem = _number(fields, name)
    if value is not None and value < 0 and not reducing:
        return None, f"{name} {show_raw(fields[name])} is negative"
    return value, problem


def parse_plan(entry_id: str, fields: EntryFields) -> Plan | InvalidPlan:
    """Parse one stream entry. Only a missing or malformed ``plan_id`` or ``symbol`` makes the plan invalid (SPEC §3
    step 1); a numeric field that is present but not a finite number is kept as a problem for the decision steps
    that use it, so that, say, a HOLD plan with a bad ``qty`` is still a skip."""
    text = _text(fields)
    if isinstance(text, str):
        lenient = {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): (
                v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            )
            for k, v in fields.items()
        }
        return InvalidPlan(entry_id, lenient, text)
    for name in ("plan_id", "symbol"):
        problem = _identifier_problem(name, text.get(name))
        if problem is not None:
            return InvalidPlan(entry_id, text, problem)
    action = text.get("action", "")
    reducing = is_reducing(action, text.get("reduceOnly", "").lower() in TRUE_FLAGS)
    qty, qty_problem = _quantity(text, "qty", reducing=reducing)
    notional, notional_problem = _quantity(text, "notional", reducing=reducing)
    kill_score, kill_score_problem = _number(text, "kill_score")
    return Plan(
        entry_id=entry_id,
        published_at=entry_time(entry_id),
        plan_id=text["plan_id"],
        symbol=text["symbol"],
        action=action,
        decision=text.get("decision", ""),
        qty=qty or 0.0,
        notional=notional or 0.0,
        reducing=reducing,
        kill_score=kill_score,
        quantity_problem=qty_problem or notional_problem,
        kill_score_problem=kill_score_problem,
    )
