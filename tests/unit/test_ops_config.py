"""Which daemon an env file belongs to, how the generated env files spell values, and the CLI's subcommands."""

from __future__ import annotations

import pytest

from microservices.allocation_target.settings import ProposerSettings
from microservices.ops.check_config import AmbiguousDaemonError, infer_daemon, own_variables
from microservices.ops.cli import build_parser
from microservices.ops.daemons import ALLOCATION_TARGET, DAEMONS, GOVERNOR
from microservices.ops.env_template import format_default, render_env_file


def test_own_variables_are_those_the_other_daemon_does_not_read() -> None:
    assert {"P31_STALE_SEC", "P31_MIN_MULT", "PROPOSE_STREAM_NAME", "LOOP_INTERVAL_SEC"} <= own_variables(
        ALLOCATION_TARGET
    )
    assert {"P31_EFF_TTL_SEC", "GOV_GROUP", "STREAM_PLANS", "P31_GOV_MODE"} <= own_variables(GOVERNOR)
    shared = {"REDIS_URL", "METRICS_PORT", "P31_MIN_CONF", "P31_MAX_FUTURE_SEC"}
    assert not shared & (own_variables(ALLOCATION_TARGET) | own_variables(GOVERNOR))


def test_the_daemon_is_the_one_whose_own_variables_the_file_sets() -> None:
    assert infer_daemon({"REDIS_HOST", "P31_STALE_SEC"}) is ALLOCATION_TARGET
    assert infer_daemon({"METRICS_PORT", "GOV_BLOCK_MS", "TYPO_VAR"}) is GOVERNOR
    with pytest.raises(AmbiguousDaemonError, match="no variable that only one daemon reads"):
        infer_daemon({"REDIS_HOST", "P31_MIN_CONF"})
    with pytest.raises(AmbiguousDaemonError, match="allocation-target: P31_BASE; governor: GOV_GROUP"):
        infer_daemon({"P31_BASE", "GOV_GROUP"})


@pytest.mark.parametrize(
    ("value", "text"),
    [(False, "0"), (True, "1"), (600.0, "600"), (0.65, "0.65"), (1e-05, "1e-05"), (10000, "10000"),
     ("quantum:stream:apply.plan", "quantum:stream:apply.plan"), ("127.0.0.1", "127.0.0.1")],
)  # fmt: skip
def test_defaults_are_spelled_plainly(value: object, text: str) -> None:
    assert format_default(value) == text


def test_a_default_that_would_need_quoting_is_refused() -> None:
    with pytest.raises(ValueError, match="would need quoting"):
        format_default("two words")


def test_each_variable_is_documented_with_meaning_type_and_range() -> None:
    text = render_env_file(ALLOCATION_TARGET)
    block = text.split("\n\n# P31_MIN_CONF:", 1)[1].split("\n\n", 1)[0]
    assert block.splitlines() == [
        " an efficiency confidence below this is low_conf.",
        "# Type: number, within [0, 1].",
        "P31_MIN_CONF=0.65",
    ]
    assert "# Type: number, 0 or greater; must not exceed P31_MAX_MULT.\nP31_MIN_MULT=0.5\n" in text
    assert "# Type: number, any finite number.\nP31_SCALE=1\n" in text
    governor = render_env_file(GOVERNOR)
    assert "# Type: one of hint, enforce, off.\nP31_GOV_MODE=hint\n" in governor
    assert "# GOV_CONSUMER=governor-1\n" in governor
    assert "/etc/quantum/p31/governor.env (mode 0640, owner root:quantum-p31)" in governor
    assert ProposerSettings().loop_interval_sec == 10.0  # the default the file must show
    assert "\nLOOP_INTERVAL_SEC=10\n" in text


def test_the_cli_has_the_documented_subcommands() -> None:
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert choices is not None
    assert set(choices) == {
        "status", "explain", "report", "check-config", "inject-efficiency", "inject-plan", "env-template", "plan",
        "governor", "dlq",
    }  # fmt: skip
    assert set(DAEMONS) == {"allocation-target", "governor"}
    ns = parser.parse_args(["--json", "report", "--since", "30m"])
    assert (ns.json, ns.since) == (True, "30m")
    ns = parser.parse_args(["report", "--json", "--env-file", "x.env"])
    assert (ns.json, ns.env_file, ns.since) == (True, "x.env", "1h")
