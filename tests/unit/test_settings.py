"""SPEC §4: defaults, parsing, every check, the env file, and secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.secrets import secret_values
from microservices.core.settings import ConfigError, environment, load_settings, read_env_file
from microservices.governor.settings import GovernorSettings

SPEC_DEFAULTS = {
    "P31_MIN_CONF": 0.65, "P31_STALE_SEC": 600.0, "P31_MIN_MULT": 0.5, "P31_MAX_MULT": 1.5, "P31_SCALE": 1.0,
    "P31_BASE": 1.0, "PROPOSE_STREAM_NAME": "quantum:stream:allocation.target.proposed",
    "PROPOSE_STREAM_MAXLEN": 10000, "PROPOSE_KEY_TTL": 600, "LOOP_INTERVAL_SEC": 10.0, "METRICS_PORT": 8065,
    "METRICS_ADDR": "127.0.0.1", "METRICS_MAX_SYMBOLS": 500, "P31_MAX_FUTURE_SEC": 60.0, "REDIS_BACKOFF_MAX_SEC": 5.0,
    "REDIS_HOST": "localhost", "REDIS_PORT": 6379, "REDIS_DB": 0, "REDIS_PASSWORD": None, "REDIS_URL": None,
    "REDIS_CLUSTER": False, "REDIS_SENTINELS": None, "REDIS_SENTINEL_MASTER": "mymaster",
    "REDIS_SENTINEL_PASSWORD": None, "PROPOSER_LEASE_KEY": "quantum:allocation_target:leader",
    "PROPOSER_LEASE_TTL_SEC": None,
}  # fmt: skip


def test_defaults_are_the_spec_defaults() -> None:
    assert load_settings(ProposerSettings, {}).as_environment() == SPEC_DEFAULTS


def test_values_are_parsed_by_type() -> None:
    settings = load_settings(
        ProposerSettings,
        {"P31_MIN_CONF": "0.5", "PROPOSE_KEY_TTL": "30", "REDIS_CLUSTER": "1", "PROPOSE_STREAM_NAME": "s:x"},
    )
    assert (settings.min_conf, settings.key_ttl_sec, settings.redis_cluster, settings.stream_name) == (
        0.5, 30, True, "s:x",
    )  # fmt: skip


BAD = [
    ("P31_MIN_CONF", "abc"), ("P31_MIN_CONF", "1.5"), ("P31_MIN_CONF", "-0.1"), ("P31_MIN_CONF", ""),
    ("P31_MIN_CONF", "0.65 # note"), ("P31_MIN_CONF", "nan"), ("P31_STALE_SEC", "0"), ("P31_STALE_SEC", "-1"),
    ("P31_MIN_MULT", "x"), ("P31_MAX_MULT", "-1"), ("P31_SCALE", "inf"), ("P31_BASE", ""),
    ("PROPOSE_STREAM_MAXLEN", "0"), ("PROPOSE_STREAM_MAXLEN", "1.5"), ("PROPOSE_KEY_TTL", "0"),
    ("LOOP_INTERVAL_SEC", "0"), ("METRICS_PORT", "65536"), ("METRICS_PORT", "-1"), ("METRICS_PORT", "http"),
    ("METRICS_MAX_SYMBOLS", "0"), ("P31_MAX_FUTURE_SEC", "-1"), ("REDIS_BACKOFF_MAX_SEC", "0"),
    ("REDIS_PORT", "70000"), ("REDIS_DB", "-1"), ("REDIS_CLUSTER", "maybe"), ("REDIS_URL", "http://x"),
    ("REDIS_URL", "redis://"), ("PROPOSE_STREAM_NAME", ""), ("METRICS_ADDR", " 127.0.0.1"),
]  # fmt: skip


@pytest.mark.parametrize(("variable", "value"), BAD)
def test_each_bad_value_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {variable: value})
    assert caught.value.variable == variable
    message = str(caught.value)
    assert message.startswith(f"invalid configuration: {variable}=")
    assert "\n" not in message


def test_min_mult_may_not_exceed_max_mult() -> None:
    with pytest.raises(ConfigError, match=r"P31_MIN_MULT=1\.2: must not exceed P31_MAX_MULT"):
        load_settings(ProposerSettings, {"P31_MIN_MULT": "1.2", "P31_MAX_MULT": "1.1"})
    assert load_settings(ProposerSettings, {"P31_MIN_MULT": "1.1", "P31_MAX_MULT": "1.1"}).min_mult == 1.1


def test_secrets_never_appear() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {"REDIS_URL": "redis://:hunter2@", "REDIS_PASSWORD": "hunter2"})
    assert "hunter2" not in str(caught.value)
    settings = load_settings(ProposerSettings, {"REDIS_URL": "redis://:hunter2@h:1/0", "REDIS_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings.as_environment())


@pytest.mark.parametrize("password", ["S3cr3t?p4ss", "S3cr3t/p4ss", "S3cr3t#p4ss", "S3cr3t[p4ss", "S3cr3t]p4ss"])
def test_a_url_whose_password_breaks_the_parser_is_refused_without_quoting_it(password: str) -> None:
    """redis-py's parser quotes what it took for the port: with an unencoded ? / or # in the password, that is a
    piece of the password. The refusal (which p31ctl check-config prints as it is) must not show it."""
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {"REDIS_URL": f"redis://:{password}@127.0.0.1:6379/0"})
    message = str(caught.value)
    assert message.startswith("invalid configuration: REDIS_URL=<redacted>: ")
    for piece in (password, *password.replace("?", "/").replace("#", "/").split("/")):
        assert piece not in message, message


def test_empty_optional_strings_mean_unset() -> None:
    settings = load_settings(ProposerSettings, {"REDIS_URL": "", "REDIS_PASSWORD": ""})
    assert (settings.redis_url, settings.redis_password) == (None, None)


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://h:6380/1?ssl_cert_reqs=none", "unix:///run/redis.sock"]
)
def test_supported_redis_urls(url: str) -> None:
    assert load_settings(ProposerSettings, {"REDIS_URL": url}).redis_url == url


def test_env_file_values_are_overridden_by_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "p31.env"
    env_file.write_text("# comment line\nP31_MIN_CONF=0.7\nLOOP_INTERVAL_SEC=5\nP31_SCALE='2.0'\n")
    merged = environment(env_file, {"LOOP_INTERVAL_SEC": "3"})
    settings = load_settings(ProposerSettings, merged)
    assert (settings.min_conf, settings.loop_interval_sec, settings.scale) == (0.7, 3.0, 2.0)


def test_inline_comment_in_env_file_is_refused_as_systemd_would_misread_it(tmp_path: Path) -> None:
    env_file = tmp_path / "p31.env"
    env_file.write_text("P31_MIN_CONF=0.65 # note\n")
    with pytest.raises(ConfigError) as caught:
        read_env_file(env_file)
    assert caught.value.variable == "P31_MIN_CONF"
    assert "inline comment on line 1" in str(caught.value)


def test_unreadable_env_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--env-file"):
        read_env_file(tmp_path / "absent.env")


def test_settings_are_frozen() -> None:
    settings = ProposerSettings()
    with pytest.raises(AttributeError):
        settings.min_conf = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:7000/1"}, "REDIS_URL"),
        ({"REDIS_URL": "unix:///run/redis.sock"}, "REDIS_URL"),
        ({"REDIS_DB": "2"}, "REDIS_DB"),
    ],
)
def test_a_cluster_with_a_database_other_than_0_or_a_socket_is_refused(env: dict[str, str], variable: str) -> None:
    """redis-py refuses these while building the cluster client, which the daemon would take for an unreachable
    cluster and retry for ever: refused at start-up instead (exit 78)."""
    for cls in (ProposerSettings, GovernorSettings):
        with pytest.raises(ConfigError, match=variable):
            load_settings(cls, {"REDIS_CLUSTER": "1", "GOV_CONSUMER": "c", **env})
        load_settings(cls, {"GOV_CONSUMER": "c", **env})  # fine without a cluster
    load_settings(ProposerSettings, {"REDIS_CLUSTER": "1", "REDIS_URL": "redis://127.0.0.1:7000/0"})


@pytest.mark.parametrize("url", ["127.0.0.1:26431", "localhost:6379/0", "http://127.0.0.1:6379"])
def test_a_redis_url_without_its_scheme_says_which_schemes_are_meant(url: str) -> None:
    """Issue 12: ``127.0.0.1:26431`` was told "the path must be a database number such as /0"."""
    with pytest.raises(ConfigError) as caught:
        load_settings(ProposerSettings, {"REDIS_URL": url})
    assert str(caught.value) == (
        "invalid configuration: REDIS_URL=<redacted>: must start with redis://, rediss://, unix:// "
        "(e.g. redis://127.0.0.1:6379/0)"
    )


def test_an_inline_comment_shows_a_plain_value_and_hides_a_secret_one(tmp_path: Path) -> None:
    """Issue 12: ``PERMIT_TTL_SEC=60 # note`` was shown as ``PERMIT_TTL_SEC=<redacted>``."""
    plain, secret = tmp_path / "plain.env", tmp_path / "secret.env"
    plain.write_text("PERMIT_TTL_SEC=60 # one minute\n")
    secret.write_text("REDIS_PASSWORD=hunter2 # rotated\n")
    with pytest.raises(ConfigError) as caught:
        read_env_file(plain)
    assert str(caught.value) == (
        f"invalid configuration: PERMIT_TTL_SEC='60 # one minute': inline comment on line 1 of {plain} "
        "(systemd keeps it in the value)"
    )
    with pytest.raises(ConfigError) as hidden:
        read_env_file(secret)
    assert str(hidden.value).startswith("invalid configuration: REDIS_PASSWORD=<redacted>: inline comment")
    assert "hunter2" not in str(hidden.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:26379", (("127.0.0.1", 26379),)),
        ("s1.example:26379,s2.example:26380", (("s1.example", 26379), ("s2.example", 26380))),
        ("[::1]:26379,[fe80::1%eth0]:5000", (("::1", 26379), ("fe80::1%eth0", 5000))),
    ],
)
def test_sentinel_addresses_are_read_host_and_port_ipv6_in_brackets(
    value: str, expected: tuple[tuple[str, int], ...]
) -> None:
    settings = load_settings(ProposerSettings, {"REDIS_SENTINELS": value})
    assert settings.sentinel_addresses == expected
    assert load_settings(ProposerSettings, {}).sentinel_addresses == ()


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("127.0.0.1", "'127.0.0.1' is not host:port"),
        ("a:1, b:2", "' b:2' is not host:port"),
        ("a:1,", "'' is not host:port"),
        ("::1:26379", "'::1:26379' is not host:port"),
        ("[zz::1]:26379", "'zz::1' is not an IPv6 address"),
        ("a:65536", "the port must be within [1, 65535]"),
    ],
)
def test_a_malformed_sentinel_list_is_refused_saying_which_part(value: str, detail: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS") as raised:
        load_settings(ProposerSettings, {"REDIS_SENTINELS": value})
    assert detail in str(raised.value)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"REDIS_CLUSTER": "1"}, "cannot be used with REDIS_CLUSTER=1"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, "cannot be used with REDIS_URL"),
    ],
)
def test_sentinels_beside_a_cluster_or_a_url_are_refused(env: dict[str, str], problem: str) -> None:
    for cls in (ProposerSettings, GovernorSettings):
        with pytest.raises(ConfigError, match="REDIS_SENTINELS") as raised:
            load_settings(cls, {"REDIS_SENTINELS": "127.0.0.1:26379", "GOV_CONSUMER": "c", **env})
        assert problem in str(raised.value)
    # REDIS_HOST and REDIS_PORT, which the shipped env files set, are merely ignored
    load_settings(ProposerSettings, {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_HOST": "x", "REDIS_PORT": "1"})


def test_the_sentinel_password_is_redacted_like_the_others() -> None:
    settings = load_settings(
        ProposerSettings, {"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_SENTINEL_PASSWORD": "s3cret-pw"}
    )
    assert settings.as_environment()["REDIS_SENTINEL_PASSWORD"] == "<redacted>"
    assert "s3cret-pw" in secret_values({"REDIS_SENTINEL_PASSWORD": "s3cret-pw"})
