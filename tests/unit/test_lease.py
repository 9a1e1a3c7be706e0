"""SPEC §9, one active proposer: the pure lease decisions and the lease settings."""

from __future__ import annotations

import os
import socket

import pytest

from microservices.allocation_target.lease import (
    MAX_FENCE_MARGIN_MS,
    Fence,
    Lease,
    fence_margin_ms,
    lease_from_reply,
    process_instance_id,
    role_change,
    ttl_ms,
)
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import ConfigError, load_settings

ME = "host-a:100:aaaa"
OTHER = "host-b:200:bbbb"


def mine(server_ms: int = 1_000_000, ttl: int = 30_000, sent_at: float = 50.0) -> Lease:
    return Lease(ME, ME, server_ms, ttl, sent_at)


def theirs(pttl: int = 12_000, holder: str = OTHER) -> Lease:
    return Lease(ME, holder, 1_000_000, pttl, 50.0)


def test_a_won_reply_is_our_lease_with_the_full_ttl_from_the_server_time() -> None:
    lease = lease_from_reply([1, 1_700_000_000_123], ME, 30_000, 5.0)
    assert lease == Lease(ME, ME, 1_700_000_000_123, 30_000, 5.0)
    assert lease.held


def test_a_lost_reply_names_the_holder_and_its_ttl_left() -> None:
    lease = lease_from_reply([0, 1_700_000_000_123, OTHER.encode(), 4_321], ME, 30_000, 5.0)
    assert (lease.held, lease.holder, lease.ttl_ms) == (False, OTHER, 4_321)


@pytest.mark.parametrize("reply", [None, [], [1], [1, 2, 3], [0, 5], [2, 5], b"OK", [1, 5, OTHER, 3]])
def test_any_other_reply_shape_is_refused(reply: object) -> None:
    with pytest.raises(ValueError, match="unexpected lease script reply"):
        lease_from_reply(reply, ME, 30_000, 0.0)


def test_the_fence_ends_a_margin_before_the_lease_by_the_server_clock() -> None:
    assert mine(server_ms=1_000_000, ttl=30_000).fence("lease") == Fence(1_029_000, ME, "lease")
    assert mine(server_ms=1_000_000, ttl=1_500).fence(None) == Fence(1_001_350, ME, None)  # a tenth of a short TTL


def test_the_margin_is_a_tenth_of_the_ttl_capped() -> None:
    assert [fence_margin_ms(t) for t in (1, 999, 1_500, 10_000, 30_000, 10**9)] == [0, 99, 150, 1_000, 1_000, 1_000]
    assert MAX_FENCE_MARGIN_MS == 1_000


def test_no_fence_for_a_lease_another_holds() -> None:
    with pytest.raises(ValueError, match=OTHER):
        theirs().fence("lease")


def test_renewal_is_due_when_less_than_half_the_ttl_is_left_by_the_local_clock() -> None:
    lease = mine(ttl=30_000, sent_at=100.0)  # ends at local 130 at the latest
    assert not lease.needs_renewal(114.9)
    assert lease.needs_renewal(115.1)
    assert lease.remaining_sec(120.0) == pytest.approx(10.0)
    assert not lease.expired(129.9)
    assert lease.expired(130.0)


def test_ttl_in_ms_is_rounded_and_never_zero() -> None:
    assert [ttl_ms(s) for s in (30.0, 1.5, 0.0004, 0.0006)] == [30_000, 1_500, 1, 1]


def test_one_line_per_change_of_role_none_while_it_holds() -> None:
    assert role_change(None, mine()) == f"acquired the proposer lease as {ME}: writing proposals, TTL 30000 ms"
    assert role_change(theirs(), mine()) == (
        f"acquired the proposer lease as {ME} (after {OTHER}): writing proposals, TTL 30000 ms"
    )
    assert role_change(mine(), mine(server_ms=2_000_000)) is None
    assert role_change(mine(), theirs()) == f"lost the proposer lease to {OTHER}: standing by"
    assert role_change(None, theirs(pttl=12_000)) == f"standing by behind {OTHER} (its lease has 12000 ms left)"
    assert role_change(theirs(pttl=12_000), theirs(pttl=2_000)) is None  # the same holder, checked again
    assert role_change(theirs(), theirs(holder="host-c:3:cccc")) == (
        "standing by behind host-c:3:cccc (its lease has 12000 ms left)"
    )
    assert role_change(None, theirs(pttl=-1)) == (
        f"standing by behind {OTHER}, whose lease key has no TTL: delete it if {OTHER} is gone"
    )


def test_the_instance_id_is_host_pid_and_a_random_suffix_one_per_process() -> None:
    host, pid, suffix = process_instance_id().rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert len(suffix) == 8
    assert int(suffix, 16) >= 0
    assert process_instance_id() == process_instance_id()


# --- settings ---------------------------------------------------------------------------------------------------


def test_lease_defaults_key_and_three_intervals() -> None:
    settings = load_settings(ProposerSettings, {})
    assert (settings.lease_key, settings.lease_ttl_setting, settings.lease_ttl_sec) == (
        "quantum:allocation_target:leader", None, 30.0,
    )  # fmt: skip
    assert load_settings(ProposerSettings, {"LOOP_INTERVAL_SEC": "0.5"}).lease_ttl_sec == 1.5
    assert load_settings(ProposerSettings, {"PROPOSER_LEASE_TTL_SEC": "12.5"}).lease_ttl_sec == 12.5
    assert load_settings(ProposerSettings, {"PROPOSER_LEASE_TTL_SEC": ""}).lease_ttl_sec == 30.0  # empty: unset


@pytest.mark.parametrize(("ttl", "interval"), [("10", "10"), ("5", "10"), ("0.9", "1")])
def test_a_ttl_not_above_the_interval_is_refused_naming_it(ttl: str, interval: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {"PROPOSER_LEASE_TTL_SEC": ttl, "LOOP_INTERVAL_SEC": interval})
    assert caught.value.variable == "PROPOSER_LEASE_TTL_SEC"
    assert str(caught.value) == (
        f"invalid configuration: PROPOSER_LEASE_TTL_SEC={float(ttl)!r}: must exceed LOOP_INTERVAL_SEC "
        f"({float(interval):g})"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PROPOSER_LEASE_TTL_SEC", "0"), ("PROPOSER_LEASE_TTL_SEC", "-3"), ("PROPOSER_LEASE_TTL_SEC", "abc"),
     ("PROPOSER_LEASE_TTL_SEC", "86401"), ("PROPOSER_LEASE_KEY", "two words"), ("PROPOSER_LEASE_KEY", "")],
)  # fmt: skip
def test_bad_lease_values_are_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {variable: value})
    assert caught.value.variable == variable
