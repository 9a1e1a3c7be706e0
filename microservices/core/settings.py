"""Typed, validated settings from the environment: the mechanism both daemons' settings classes are built on.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`, which names the environment
variable, the default and the documentation in one place, plus the check the value must pass. :func:`load_settings`
parses the environment into such a class; construction runs every check (defaults included), so an invalid settings
object cannot exist. Any problem raises :class:`ConfigError`, which the daemons turn into one line and exit 78.
"""

from __future__ import annotations

import difflib
import io
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream
from redis import ConnectionPool, RedisError
from redis.connection import parse_url as _parse_url

from microservices.core.numbers import parse_float, parse_int
from microservices.core.secrets import Redactor, secret_values

EX_CONFIG = 78

#: redis-py's own URL parser (untyped upstream), so that a URL it would refuse is refused at start-up.
parse_url: Callable[[str], dict[str, Any]] = _parse_url

_ENV = "env"
_DOC = "doc"
_CHECK = "check"
_SECRET = "secret"

#: A check returns a description of what is wrong with the value, or None when it is fine.
Check = Callable[[Any], str | None]
S = TypeVar("S", bound="Settings")


class ConfigError(Exception):
    """A setting that cannot be used. ``str()`` is the one line the daemon prints before exiting 78."""

    def __init__(self, variable: str, value: object, problem: str, *, secret: bool = False) -> None:
        self.variable = variable
        self.problem = problem
        shown = "<redacted>" if secret and value not in (None, "") else repr(value)
        super().__init__(f"invalid configuration: {variable}={shown}: {problem}")


def setting(
    env: str,
    default: Any = MISSING,
    doc: str = "",
    *,
    check: Check | None = None,
    secret: bool = False,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a settings field read from the environment variable ``env``."""
    metadata = {_ENV: env, _DOC: doc, _CHECK: check, _SECRET: secret}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --- checks --------------------------------------------------------------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def probability(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be within [0, 1]"


def _bound(value: float) -> str:
    """A bound as an operator would type it: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be within [{_bound(low)}, {_bound(high)}]"

    return check


port = between(0, 65535)


#: Durations in seconds and counts are bounded so that every accepted value is one Redis and the OS accept too.
MAX_SECONDS = 86_400.0
MAX_REDIS_SECONDS = 2**31 - 1
MAX_COUNT = 2**53


def positive_up_to(high: float) -> Check:
    def check(value: float) -> str | None:
        return None if 0 < value <= high else f"must be greater than 0 and at most {_bound(high)}"

    return check


def no_white_space(value: str) -> str | None:
    """A Redis key, stream, group or consumer name, or a host name: white space in one is a mistake, most often an
    inline ``# comment`` that systemd kept in the value (``STREAM=name # note``)."""
    if not value or not value.isprintable() or any(c.isspace() for c in value):
        return "must be non-empty with no white space"
    return None


#: The schemes redis-py connects with.
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
#: The path of a ``redis://`` URL: none, ``/`` or ``/<db number>``. redis-py silently ignores any other path.
_URL_DB_PATH = re.compile(r"(/[0-9]*)?")


def redis_url(value: str | None) -> str | None:
    """A URL redis-py accepts, options included: building a connection (which sends nothing) checks them all.

    Beyond what redis-py checks: no white space and no ``#`` (a URL holds neither unencoded; redis-py would drop a
    ``# note`` as a fragment, and read ``/0 # note`` as database 0), and a path that is a database number (redis-py
    reads ``/x`` as database 0)."""
    if value is None:
        return None
    if any(c.isspace() for c in value) or "#" in value:
        return "must not hold white space or '#' (an inline comment?); percent-encode them in a password"
    if not value.startswith(REDIS_URL_SCHEMES):  # else a host:port reads as a scheme and a path
        return "must start with " + ", ".join(REDIS_URL_SCHEMES) + " (e.g. redis://127.0.0.1:6379/0)"
    try:
        path = urlsplit(value).path
    except ValueError:  # e.g. an unencoded [ or ] in a password reads as a broken IPv6 host
        return "cannot be parsed as a URL; percent-encode / ? # @ : [ ] in a password"
    if not value.startswith("unix://") and _URL_DB_PATH.fullmatch(path) is None:
        return "the path must be a database number such as /0"
    try:
        options = parse_url(value)
        pool = ConnectionPool.from_url(value)
        pool.make_connection()
        pool.disconnect()
    except (ValueError, TypeError, RedisError) as exc:
        # the parser's message may quote a piece of a password with an unencoded / ? or #
        detail = Redactor(secret_values({"REDIS_URL": value}))(str(exc))
        return f"not a usable Redis URL ({type(exc).__name__}: {detail}; percent-encode / ? # @ : in a password)"
    if value.startswith("unix://"):
        return None if options.get("path") else "unix:// needs a socket path"
    return None if options.get("host") else "needs a host name"


#: One sentinel address: ``host:port``, or ``[IPv6 address]:port``.
_SENTINEL_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.%a-zA-Z]+)\]|(?P<host>[^\s:,\[\]#]+)):(?P<port>[0-9]{1,5})")


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` as (host, port) pairs; :class:`ValueError` saying what is wrong with it."""
    addresses: list[tuple[str, int]] = []
    for part in value.split(","):
        match = _SENTINEL_ADDRESS.fullmatch(part)
        if match is None:
            raise ValueError(f"{part!r} is not host:port or [IPv6]:port")
        host = match["v6"] or match["host"]
        if match["v6"] is not None:
            try:
                ipaddress.ip_address(host.partition("%")[0])
            except ValueError:
                raise ValueError(f"{part!r}: {host!r} is not an IPv6 address") from None
        number = int(match["port"])
        if not 1 <= number <= 65535:
            raise ValueError(f"{part!r}: the port must be within [1, 65535]")
        addresses.append((host, number))
    return tuple(addresses)


def sentinels(value: str | None) -> str | None:
    """A list of sentinels: comma-separated ``host:port`` (``[addr]:port`` for IPv6), no spaces."""
    if value is None:
        return None
    try:
        parse_sentinels(value)
    except ValueError as exc:
        # no detail for "", which only the env file's generator asks about (an empty value means unset)
        return "must be host:port[,host:port...] with no spaces" + (f" ({exc})" if value else "")
    return None


def ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address such as 127.0.0.1 or ::1"
    return None


# --- the settings base class ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Base of every daemon's settings: runs each field's check, then :meth:`cross_check`."""

    def __post_init__(self) -> None:
        for f in fields(self):
            error = _field_error(type(self), f, getattr(self, f.name))
            if error is not None:
                raise error
        self.cross_check()

    def cross_check(self) -> None:
        """Checks that involve several fields; raise :class:`ConfigError` naming one of them."""

    def as_environment(self) -> dict[str, object]:
        """Every variable and the value in force, secrets redacted: what a daemon logs at start-up."""
        shown: dict[str, object] = {}
        for f in env_fields(type(self)):
            value = getattr(self, f.name)
            shown[f.metadata[_ENV]] = "<redacted>" if f.metadata[_SECRET] and value else value
        return shown


def _field_error(cls: type, f: Field[Any], value: object) -> ConfigError | None:
    """What is wrong with ``value`` for field ``f`` (its check, then its ``Literal`` type), or None."""
    check = f.metadata.get(_CHECK)
    problem = check(value) if check is not None else None
    if problem is None:
        problem = _literal_problem(cls, f, value)
    if problem is None:
        return None
    return ConfigError(f.metadata.get(_ENV, f.name), value, problem, secret=f.metadata.get(_SECRET, False))


def _literal_problem(cls: type, f: Field[Any], value: object) -> str | None:
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
        return "must be one of " + ", ".join(str(v) for v in typing.get_args(hint))
    return None


def env_fields(cls: type[Settings]) -> list[Field[Any]]:
    """The fields of a settings class that are read from the environment."""
    return [f for f in fields(cls) if _ENV in f.metadata]


def _parse(raw: str, hint: Any, variable: str, secret: bool) -> Any:
    optional = False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if raw == "":
        if optional:
            return None
        raise ConfigError(variable, raw, "empty value", secret=secret)
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(variable, raw, "must be 1/true/yes/on or 0/false/no/off", secret=secret)
    if hint is int:
        number = parse_int(raw)
        if number is None:
            raise ConfigError(variable, raw, "is not an integer", secret=secret)
        return number
    if hint is float:
        value = parse_float(raw)
        if value is None:
            raise ConfigError(variable, raw, "is not a finite number", secret=secret)
        return value
    if raw != raw.strip() or "\n" in raw:
        raise ConfigError(variable, raw, "has surrounding white space", secret=secret)
    return raw


def load_settings(cls: type[S], env: Mapping[str, str]) -> S:
    """Build ``cls`` from the environment mapping ``env``; variables not set keep their documented default."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in env_fields(cls):
        variable = f.metadata[_ENV]
        if variable in env:
            values[f.name] = _parse(env[variable], hints[f.name], variable, f.metadata[_SECRET])
    return cls(**values)


def settings_errors(cls: type[Settings], env: Mapping[str, str]) -> list[ConfigError]:
    """Every bad value in ``env`` for ``cls``, in declaration order, not only the first: what ``p31ctl check-config``
    lists, so that a file is fixed in one pass (the daemons stop at the first, :func:`load_settings`). The checks
    that involve several fields run once every value is fine on its own."""
    hints = typing.get_type_hints(cls)
    errors: list[ConfigError] = []
    for f in env_fields(cls):
        variable = f.metadata[_ENV]
        if variable not in env:
            continue
        try:
            value = _parse(env[variable], hints[f.name], variable, f.metadata[_SECRET])
        except ConfigError as exc:
            errors.append(exc)
            continue
        error = _field_error(cls, f, value)
        if error is not None:
            errors.append(error)
    if not errors:
        try:
            load_settings(cls, env)
        except ConfigError as exc:
            errors.append(exc)
    return errors


#: The prefixes of the daemons' variables: a variable with one of them that a daemon does not read is most likely a
#: misspelt one it does (``P31_GOV_MOD``), which would otherwise be ignored without a word.
DAEMON_PREFIXES = ("P31_", "GOV_", "REDIS_", "PROPOSE_", "METRICS_", "LOOP_", "PERMIT_", "STREAM_")


@dataclass(frozen=True)
class UnreadVariable:
    """A variable with a daemon's prefix that ``cls`` does not read, and the closest name it does read (or None)."""

    name: str
    closest: str | None

    def message(self, reader: str) -> str:
        hint = f"; did you mean {self.closest}?" if self.closest else ""
        return f"{self.name} is set but {reader} does not read it{hint}"


def unread_variables(cls: type[Settings], env: Mapping[str, str]) -> list[UnreadVariable]:
    """The variables of ``env`` with :data:`DAEMON_PREFIXES` that ``cls`` does not read, sorted, each with the
    closest of ``cls``'s own variables by :func:`difflib.get_close_matches`."""
    known = [f.metadata[_ENV] for f in env_fields(cls)]
    unread = sorted(name for name in env if name.startswith(DAEMON_PREFIXES) and name not in known)
    return [UnreadVariable(name, next(iter(difflib.get_close_matches(name, known, n=1)), None)) for name in unread]


# --- the environment -----------------------------------------------------------------------------------------------

_INLINE_COMMENT = re.compile(r"\s#")


#: Parts of a variable's name that say its value may be a credential, for variables no settings class declares.
_SECRET_NAME_PARTS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")


def may_be_secret(variable: str) -> bool:
    """Whether a value must not be shown: a variable the settings declare secret (``REDIS_URL``, ``REDIS_PASSWORD``),
    or one whose name says it may hold a credential. Any other value is shown, so that a mistake in it can be seen."""
    declared = {f.metadata[_ENV] for f in env_fields(CommonSettings) if f.metadata[_SECRET]}
    return variable in declared or any(part in variable.upper() for part in _SECRET_NAME_PARTS)


def read_env_file(path: str | Path) -> dict[str, str]:
    """Variables of an env file, read as systemd's ``EnvironmentFile=`` would use them.

    systemd keeps an inline ``# comment`` as part of the value, while python-dotenv strips it; so that a file
    behaves the same in development as under systemd, an unquoted value with an inline comment is refused here
    (the first one found: :func:`env_file_errors` lists them all).
    """
    values, errors = env_file_errors(path)
    if errors:
        raise errors[0]
    return values


def env_file_errors(path: str | Path) -> tuple[dict[str, str], list[ConfigError]]:
    """The file's variables as :func:`read_env_file` reads them, and every line it refuses, in file order. A file
    that cannot be read or parsed is one error and no variables."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [ConfigError("--env-file", str(path), f"cannot be read: {exc}")]
    errors: list[ConfigError] = []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            return {}, [ConfigError("--env-file", str(path), f"line {line} cannot be parsed")]
        if binding.key is None or binding.value is None:
            continue
        raw_value = binding.original.string.split("=", 1)[1].strip() if "=" in binding.original.string else ""
        if raw_value[:1] not in ("'", '"') and _INLINE_COMMENT.search(raw_value):
            errors.append(
                ConfigError(  # the value is shown unless it may be a password
                    binding.key,
                    raw_value,
                    f"inline comment on line {line} of {path} (systemd keeps it in the value)",
                    secret=may_be_secret(binding.key),
                )
            )
    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {key: value for key, value in values.items() if value is not None}, errors


def environment(env_file: str | Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the settings are read from: the env file's variables, overridden by the process environment."""
    merged: dict[str, str] = read_env_file(env_file) if env_file is not None else {}
    merged.update(os.environ if environ is None else environ)
    return merged


# --- what both daemons read ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommonSettings(Settings):
    """Connection, HTTP and efficiency-reading settings shared by both daemons (SPEC §4)."""

    redis_url: str | None = setting(
        "REDIS_URL",
        None,
        "redis://, rediss:// (TLS, certificate options as URL query parameters) or unix:// URL; wins over REDIS_HOST",
        check=redis_url,
        secret=True,
    )
    redis_host: str = setting("REDIS_HOST", "localhost", "Redis host, when REDIS_URL is not set", check=no_white_space)
    redis_port: int = setting("REDIS_PORT", 6379, "Redis port, when REDIS_URL is not set", check=port)
    redis_db: int = setting(
        "REDIS_DB", 0, "Redis database number, when REDIS_URL is not set", check=between(0, MAX_REDIS_SECONDS)
    )
    redis_password: str | None = setting(
        "REDIS_PASSWORD", None, "Redis password, when REDIS_URL is not set; never logged", secret=True
    )
    redis_cluster: bool = setting("REDIS_CLUSTER", False, "1 to use a Redis Cluster client")
    redis_sentinels: str | None = setting(
        "REDIS_SENTINELS",
        None,
        "Redis Sentinel addresses, host:port[,host:port...] ([addr]:port for IPv6): connect to the master they name "
        "and follow its failovers; REDIS_HOST and REDIS_PORT are then ignored",
        check=sentinels,
    )
    redis_sentinel_master: str = setting(
        "REDIS_SENTINEL_MASTER", "mymaster", "name of the master the sentinels monitor", check=no_white_space
    )
    redis_sentinel_password: str | None = setting(
        "REDIS_SENTINEL_PASSWORD",
        None,
        "password of the sentinels themselves (REDIS_PASSWORD and REDIS_DB apply to the master); never logged",
        secret=True,
    )
    redis_backoff_max_sec: float = setting(
        "REDIS_BACKOFF_MAX_SEC",
        5.0,
        "cap of the jittered reconnect backoff, seconds",
        check=positive_up_to(MAX_SECONDS),
    )
    metrics_addr: str = setting(
        "METRICS_ADDR", "127.0.0.1", "IP address the /metrics and /healthz server listens on", check=ip_address
    )
    metrics_port: int = setting("METRICS_PORT", 0, "port of the /metrics and /healthz server", check=port)
    metrics_max_symbols: int = setting(
        "METRICS_MAX_SYMBOLS", 500, "most symbols exported in per-symbol metric series", check=positive_up_to(MAX_COUNT)
    )
    max_future_sec: float = setting(
        "P31_MAX_FUTURE_SEC",
        60.0,
        "an efficiency timestamp further ahead than this is invalid, seconds",
        check=non_negative,
    )
    min_conf: float = setting(
        "P31_MIN_CONF", 0.65, "an efficiency confidence below this is low_conf", check=probability
    )

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """The sentinels to ask for the master, or () when Redis is reached directly."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels is not None else ()

    def cross_check(self) -> None:
        """Sentinels name the one master to use, so a URL or a cluster beside them is a contradiction, not a
        preference. A Redis Cluster has only database 0 and no unix socket: redis-py would refuse either while the
        client is built, which the daemon would take for an unreachable cluster and retry for ever."""
        if self.redis_sentinels is not None:
            if self.redis_cluster:
                raise ConfigError(
                    "REDIS_SENTINELS", self.redis_sentinels, "cannot be used with REDIS_CLUSTER=1 (a cluster fails "
                    "over by itself): set one of them",
                )  # fmt: skip
            if self.redis_url is not None:
                raise ConfigError(
                    "REDIS_SENTINELS", self.redis_sentinels, "cannot be used with REDIS_URL (the sentinels name the "
                    "master): unset REDIS_URL, or REDIS_SENTINELS",
                )  # fmt: skip
        if not self.redis_cluster:
            return
        if self.redis_url is not None:
            if self.redis_url.startswith("unix://"):
                raise ConfigError("REDIS_URL", self.redis_url, "unix:// cannot reach a Redis Cluster", secret=True)
            if urlsplit(self.redis_url).path not in ("", "/", "/0"):
                raise ConfigError("REDIS_URL", self.redis_url, "a Redis Cluster has database 0 only", secret=True)
        elif self.redis_db != 0:
            raise ConfigError("REDIS_DB", self.redis_db, "a Redis Cluster has database 0 only")
