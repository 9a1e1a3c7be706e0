"""Reading a symbol's capital-efficiency score (SPEC §1): one pure classification shared by both daemons.

The upstream hash ``quantum:capital:efficiency:{symbol}`` is read with ``HMGET`` of :data:`EFFICIENCY_FIELDS` (never
``HGETALL``, so a hash with thousands of unrelated fields costs nothing extra); only when every field comes back absent
does ``EXISTS`` tell an absent key from a hash without those fields. :func:`classify_values` classifies the ``HMGET``
reply, :func:`classify_efficiency` the same reading given as a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from microservices.core.numbers import MAX_NUMBER_LENGTH, Raw, parse_float, show_raw

EFFICIENCY_KEY_PREFIX = "quantum:capital:efficiency:"
SCORE_FIELD = "efficiency_score"
CONFIDENCE_FIELD = "confidence"
TS_FIELD = "ts"
TIMESTAMP_FIELD = "timestamp"
#: The only fields of the efficiency hash that are read; all others are ignored.
EFFICIENCY_FIELDS: tuple[str, ...] = (SCORE_FIELD, CONFIDENCE_FIELD, TS_FIELD, TIMESTAMP_FIELD)

#: An epoch value above this is taken as milliseconds.
MILLISECONDS_ABOVE = 1e11

#: Present fields of the hash, by name; a field the hash lacks is simply not in the mapping.
EfficiencyFields = Mapping[str, bytes | str]


class EffReason(StrEnum):
    """Why a reading may or may not act, checked in the order listed (SPEC §1)."""

    REDIS_ERROR = "redis_error"
    MISSING = "missing_eff"
    INVALID = "invalid_eff"
    STALE = "stale_eff"
    LOW_CONF = "low_conf"
    OK = "ok"


class EffCheck(StrEnum):
    """The checks of SPEC §1 in the order the classification makes them; a reading names the one that decided it."""

    READ = "read ok"
    PRESENT = "key present"
    SCORE = "score usable"
    CONFIDENCE = "confidence usable"
    TIMESTAMP = "timestamp usable"
    FUTURE = "not in the future"
    STALE = "not stale"
    MIN_CONF = "confidence high enough"


@dataclass(frozen=True)
class EfficiencyPolicy:
    """The thresholds a reading is judged by."""

    min_conf: float
    stale_sec: float
    max_future_sec: float


@dataclass(frozen=True, slots=True)
class EfficiencyReading:
    """A classified reading. ``score`` and ``confidence`` are kept whenever they parsed as finite numbers, even when the
    reading is not usable, so that outputs can show what upstream wrote; only ``reason == OK`` lets the score act."""

    reason: EffReason
    score: float | None = None
    confidence: float | None = None
    ts: float | None = None
    age_sec: float | None = None
    detail: str = ""
    #: The check that failed and so gave the reason; None for ``ok``, which passed them all.
    check: EffCheck | None = None

    @property
    def ok(self) -> bool:
        return self.reason is EffReason.OK

    @property
    def usable_score(self) -> float | None:
        """The score when it may act, else None."""
        return self.score if self.reason is EffReason.OK else None

    @property
    def stale_flag(self) -> str:
        """The ``eff_stale`` field: ``"1"`` exactly when the reason is ``stale_eff``."""
        return "1" if self.reason is EffReason.STALE else "0"

    @classmethod
    def redis_error(cls, detail: str) -> EfficiencyReading:
        return cls(EffReason.REDIS_ERROR, detail=detail, check=EffCheck.READ)


def efficiency_key(symbol: str) -> str:
    return EFFICIENCY_KEY_PREFIX + symbol


def _epoch_seconds(value: float) -> float | None:
    seconds = value / 1000.0 if value > MILLISECONDS_ABOVE else value
    return seconds if seconds > 0 else None


def parse_timestamp(raw: Raw, *, allow_iso: bool) -> float | None:
    """Epoch seconds from a number (seconds, or milliseconds above 1e11) or, with ``allow_iso``, an ISO-8601 string
    (naive means UTC). None when unusable."""
    number = parse_float(raw)
    if number is not None:
        return _epoch_seconds(number)
    if not allow_iso or raw is None or len(raw) > MAX_NUMBER_LENGTH:
        return None
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        moment = datetime.fromisoformat(text)
    except (UnicodeDecodeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return _epoch_seconds(moment.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


#: The reading of an absent efficiency hash.
MISSING_READING = EfficiencyReading(EffReason.MISSING, detail="efficiency hash absent or empty", check=EffCheck.PRESENT)

#: The values of :data:`EFFICIENCY_FIELDS`, in that order, as ``HMGET`` returns them (None for an absent field).
EfficiencyValues = Sequence[Raw]


def classify_efficiency(fields: EfficiencyFields | None, now: float, policy: EfficiencyPolicy) -> EfficiencyReading:
    """Classify an efficiency hash, given as a mapping of its fields, at time ``now``: rows 2 to 6 of SPEC §1.

    ``fields`` is None when the key is absent (Redis deletes an empty hash, so "absent or empty" is one case); an
    empty mapping is a hash that exists but holds none of :data:`EFFICIENCY_FIELDS`, which is ``invalid_eff``.
    Row 1 (``redis_error``) is the caller's, who alone sees a failed read: :meth:`EfficiencyReading.redis_error`.
    """
    if fields is None:
        return MISSING_READING
    return classify_values([fields.get(name) for name in EFFICIENCY_FIELDS], now, policy)


def classify_values(values: EfficiencyValues | None, now: float, policy: EfficiencyPolicy) -> EfficiencyReading:
    """:func:`classify_efficiency` for the values of :data:`EFFICIENCY_FIELDS` in order (None: the key is absent).

    This is the form the daemons call with an ``HMGET`` reply, once per symbol, so it builds no mapping.
    """
    if values is None:
        return MISSING_READING
    raw_score, raw_conf, raw_ts, raw_timestamp = values
    score = parse_float(raw_score)
    confidence = parse_float(raw_conf)
    if raw_score is None:
        return _invalid(score, confidence, EffCheck.SCORE, f"{SCORE_FIELD} absent")
    if score is None or not 0.0 <= score <= 1.0:
        detail = f"{SCORE_FIELD} {show_raw(raw_score)} is not a number in [0, 1]"
        return _invalid(score, confidence, EffCheck.SCORE, detail)
    if raw_conf is None:
        return _invalid(score, confidence, EffCheck.CONFIDENCE, f"{CONFIDENCE_FIELD} absent")
    if confidence is None or not 0.0 <= confidence <= 1.0:
        detail = f"{CONFIDENCE_FIELD} {show_raw(raw_conf)} is not a number in [0, 1]"
        return _invalid(score, confidence, EffCheck.CONFIDENCE, detail)

    if raw_ts is not None:  # a present ts decides, usable or not: no fall-back to timestamp
        ts = parse_timestamp(raw_ts, allow_iso=False)
        if ts is None:
            return _invalid(
                score, confidence, EffCheck.TIMESTAMP, f"{TS_FIELD} {show_raw(raw_ts)} is not an epoch time"
            )
    elif raw_timestamp is not None:
        ts = parse_timestamp(raw_timestamp, allow_iso=True)
        if ts is None:
            detail = f"{TIMESTAMP_FIELD} {show_raw(raw_timestamp)} is not an epoch or ISO-8601 time"
            return _invalid(score, confidence, EffCheck.TIMESTAMP, detail)
    else:
        return _invalid(score, confidence, EffCheck.TIMESTAMP, f"no {TS_FIELD} or {TIMESTAMP_FIELD}")

    age = now - ts
    if -age > policy.max_future_sec:
        detail = f"timestamp {-age:.0f}s in the future"
        return EfficiencyReading(EffReason.INVALID, score, confidence, ts, age, detail, EffCheck.FUTURE)
    if age > policy.stale_sec:
        detail = f"{age:.0f}s old > {policy.stale_sec:g}s"
        return EfficiencyReading(EffReason.STALE, score, confidence, ts, age, detail, EffCheck.STALE)
    if confidence < policy.min_conf:
        detail = f"confidence {confidence:g} < {policy.min_conf:g}"
        return EfficiencyReading(EffReason.LOW_CONF, score, confidence, ts, age, detail, EffCheck.MIN_CONF)
    return EfficiencyReading(EffReason.OK, score, confidence, ts, age)


def _invalid(score: float | None, confidence: float | None, check: EffCheck, detail: str) -> EfficiencyReading:
    return EfficiencyReading(EffReason.INVALID, score=score, confidence=confidence, detail=detail, check=check)
