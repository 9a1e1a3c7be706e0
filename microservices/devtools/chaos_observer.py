"""What the chaos run watches while it runs, as the systems downstream of the daemons would see Redis.

Every half second, as long as Redis answers:

* **permits**, as the apply layer reads them: each new ``permit`` event on the governors' events stream names a
  plan_id, whose permit key is read at once and again a few seconds later; a plan_id ever seen with two different
  permit JSONs is a violation (a permit rewritten, or a second one granted);
* **proposals**: each new entry of the proposals stream is checked (:func:`~microservices.devtools.invariants.
  proposal_violations`);
* **the never-trimmed streams** (plans, events) are measured: they only grow, or Redis lost acknowledged writes.

Violations are printed as they are found and kept for the summary. :meth:`ChaosObserver.final_pass` repeats the
permit reads over every plan_id seen, checks that no permit key exists without its event, and checks every shadow hash.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import redis

from microservices.allocation_target.proposal import PROPOSED_PREFIX
from microservices.core.redis_client import REDIS_ERRORS
from microservices.devtools.background import Background
from microservices.devtools.invariants import (
    MultiplierBounds,
    double_permit_violations,
    growth_violations,
    proposal_violations,
)
from microservices.devtools.permit_observer import PermitObserver
from microservices.devtools.plans import EVENTS, PLANS, text
from microservices.governor.records import PERMIT_KEY_PREFIX

LOOK_EVERY_SEC = 0.5
#: A permit is read again this long after it was first seen.
LOOK_AGAIN_SEC = 5.0
READ_COUNT = 2000
#: Plan ids per pipelined round trip.
CHUNK = 1000

Entry = tuple[bytes, dict[bytes, bytes]]


def _fields(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class ChaosObserver(Background):
    def __init__(
        self, client: redis.Redis, *, proposals_stream: str, bounds: MultiplierBounds, say: Callable[[str], None]
    ) -> None:
        super().__init__("observer")
        self._client = client
        self._proposals = proposals_stream
        self._bounds = bounds
        self._say = say
        self.violations: list[str] = []
        self._seen: set[str] = set()
        #: Every permit read, as the apply layer reads it (a round of its own per look, no thread).
        self.permits = PermitObserver(client)
        self._again: deque[tuple[float, str]] = deque()
        self._cursors = {EVENTS: "0-0", proposals_stream: "0-0"}
        self._lengths: dict[str, list[int]] = {PLANS: [], EVENTS: []}
        self.proposals_checked = 0
        self.rounds = 0

    def report(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._seen:
                self._seen.add(problem)
                self.violations.append(problem)
                self._say(f"VIOLATION: {problem}")

    def _run(self) -> None:
        while not self._stop.wait(LOOK_EVERY_SEC):
            try:
                self.look()
            except REDIS_ERRORS:
                continue  # Redis down, paused or refusing: look again next round
            self.rounds += 1

    def look(self) -> None:
        for name, lengths in self._lengths.items():
            lengths.append(int(self._client.xlen(name)))
            self.report(growth_violations(name, lengths[-2:]))
        permitted = [e["plan_id"] for e in self._read_new(EVENTS) if e.get("event") == "permit"]
        self._read_permits(permitted)
        now = time.monotonic()
        self._again.extend((now + LOOK_AGAIN_SEC, plan_id) for plan_id in permitted)
        due = []
        while self._again and self._again[0][0] <= now:
            due.append(self._again.popleft()[1])
        self._read_permits(due)
        for entry in self._read_new(self._proposals):
            self.proposals_checked += 1
            where = f"proposal {entry.get('symbol')} at {entry.get('ts_epoch')}"
            self.report(proposal_violations(where, entry, self._bounds))

    def _read_new(self, stream: str) -> list[dict[str, str]]:
        """The entries of ``stream`` after the last one read; the cursor moves only once they are in hand."""
        found: list[dict[str, str]] = []
        while True:
            reply = cast(Any, self._client.xread({stream: self._cursors[stream]}, count=READ_COUNT))
            if not reply:
                return found
            entries: list[Entry] = reply[0][1]
            found += [_fields(fields) for _, fields in entries]
            self._cursors[stream] = text(entries[-1][0])
            if len(entries) < READ_COUNT:
                return found

    def _read_permits(self, plan_ids: list[str]) -> None:
        self.permits.look(plan_ids, chunk=CHUNK)
        self.report(double_permit_violations(self.permits.doubles))

    def final_pass(self) -> None:
        """Once the run is quiet: every event and proposal read, every permit seen read once more, no permit without
        its event, every shadow hash checked."""
        self.look()
        permitted = self.permits.permitted
        self._read_permits(sorted(permitted))
        keys = self._client.scan_iter(match=PERMIT_KEY_PREFIX + "*", count=1000)
        orphans = sorted({text(k)[len(PERMIT_KEY_PREFIX) :] for k in keys} - permitted)
        if orphans:  # a permit and its event are written in one transaction: one never exists without the other
            self.report([f"{len(orphans)} permits without a permit event: {orphans[:10]}"])
        for key in self._client.scan_iter(match=PROPOSED_PREFIX + "*", count=1000):
            fields = _fields(cast(dict[bytes, bytes], self._client.hgetall(key)))
            if fields:
                self.report(proposal_violations(f"shadow hash {text(key)}", fields, self._bounds))
