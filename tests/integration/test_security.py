"""Security of both daemons as real processes (issue 5 item 5): Redis with a password, with least-privilege ACL users,
over TLS (and mutual TLS); the password never in a log line, metric, health body or error; the HTTP surface.

Each Redis here is a private ``redis-server`` made by the test (certificates made with ``openssl`` in ``tmp_path``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast
from urllib.parse import urlencode

import pytest
import redis

from microservices.core.secrets import secret_values
from microservices.devtools.redis_server import RedisServer, TlsFiles
from tests.daemons import Daemon, daemon_env, run_once
from tests.redis_util import hset_text, text_hash

PROPOSER = "microservices.allocation_target"
GOVERNOR = "microservices.governor"
MODULES = (PROPOSER, GOVERNOR)
#: Distinctive, so that finding it anywhere is a leak and nothing else.
PASSWORD = "S3cr3t-p4ss-Zq9"
ADMIN_PASSWORD = "admin-only-pw-7Kx"
LIVE = "quantum:allocation:target:"
PROPOSED = "quantum:allocation:target:proposed:"
EFF = "quantum:capital:efficiency:"
PLANS = "quantum:stream:apply.plan"
PERMIT = "quantum:permit:"
#: Fast loops and a short backoff cap, so that outages and recoveries show within a second or two.
FAST = {"LOOP_INTERVAL_SEC": "0.2", "REDIS_BACKOFF_MAX_SEC": "0.5", "GOV_CONSUMER": "gov-sec"}
ERROR_METRIC = {PROPOSER: "p29_shadow_redis_errors_total", GOVERNOR: "quantum_govern_redis_errors_total"}

#: The least each daemon needs, as an operator would create it (``ACL SETUSER <user> <rules>``), found from the
#: commands each sends (``INFO commandstats`` over runs through every path) and proven below with an empty ACL LOG.
#: Keys the daemon only reads are ``%R~`` (read-only), so Redis itself enforces that the proposer never writes a
#: live target. With ``REDIS_DB`` other than 0, add ``+select``; Redis 7.2+ also receives redis-py's
#: ``CLIENT SETINFO`` (refused harmlessly without ``+client|setinfo``, which Redis 7.0 does not know).
PROPOSER_ACL = (
    "on >pw resetkeys resetchannels -@all "
    "%R~quantum:allocation:target:* %R~quantum:capital:efficiency:* "
    "~quantum:allocation:target:proposed:* ~quantum:stream:allocation.target.proposed "
    "~quantum:allocation_target:leader "
    "+ping +client|setname +scan +hget +hmget +exists +eval +hset +expire +xadd +time +get +set +pexpire +pttl +del"
)
GOVERNOR_ACL = (
    "on >pw resetkeys resetchannels -@all "
    "%R~quantum:kill %R~quantum:capital:efficiency:* "
    "~quantum:permit:* ~quantum:governor:* "
    "~quantum:stream:apply.plan ~quantum:stream:apply.plan.dlq ~quantum:stream:governor.events "
    "+ping +client|setname +get +mget +exists +hmget +type +set +watch +unwatch +multi +exec "
    "+xreadgroup +xpending +xautoclaim +xack +xadd +xgroup|create +xinfo|stream +xinfo|groups +wait"
)
ACL_USERS = {PROPOSER: ("p31-proposer", PROPOSER_ACL), GOVERNOR: ("p31-governor", GOVERNOR_ACL)}


# --- helpers ---------------------------------------------------------------------------------------------------------


def assert_no_secret(*texts: str, secret: str = PASSWORD) -> None:
    for text in texts:
        assert secret not in text, f"the password leaked: ...{text[max(0, text.find(secret) - 200) :][:400]}..."


def seed_symbol(admin: redis.Redis, symbol: str) -> None:
    """A live target and a fresh, confident efficiency score of 0.9: the proposer proposes 140.00 for it."""
    admin.hset(LIVE + symbol, "target_usd", "100")
    hset_text(admin, EFF + symbol, {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time())})


def publish_plan(admin: redis.Redis, plan_id: str, symbol: str) -> None:
    admin.xadd(PLANS, {"plan_id": plan_id, "symbol": symbol, "action": "OPEN_LONG", "decision": "EXECUTE"})


def wait_until(predicate: Callable[[], object], what: str, daemons: tuple[Daemon, ...], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for d in daemons:
            assert d.running, f"{d.module} exited {d.process.returncode}: {d.log()[-2000:]}"
        time.sleep(0.05)
    logs = "\n".join(d.log()[-1500:] for d in daemons)
    raise AssertionError(f"not reached within {timeout}s: {what}\n{logs}")


def assert_real_work(admin: redis.Redis, proposer: Daemon, governor: Daemon, tag: str) -> None:
    """A symbol proposed by the proposer and a plan permitted by the governor, both seen in Redis."""
    symbol = f"SEC{tag}"
    seed_symbol(admin, symbol)
    publish_plan(admin, f"plan-{tag}", symbol)
    both = (proposer, governor)
    wait_until(lambda: admin.exists(PROPOSED + symbol), f"a proposal for {symbol}", both)
    assert text_hash(admin, PROPOSED + symbol)["proposed_target"] == "140.00"
    wait_until(lambda: admin.exists(PERMIT + f"plan-{tag}"), f"a permit for plan-{tag}", both)
    for d in both:
        wait_until(healthy(d), f"{d.module} healthy", both)


@contextmanager
def both_daemons(tmp_path: Path, env: Mapping[str, Mapping[str, str]], *args: str) -> Iterator[tuple[Daemon, Daemon]]:
    """Both daemons as processes, ``env[module]`` each, with ``args``; on leaving, stopped, and every log line and
    the last ``/metrics`` and ``/healthz`` bodies searched for the password."""
    started: list[Daemon] = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        for module in MODULES:
            started.append(Daemon(module, env[module], tmp_path / f"{module}.log", *args))
        yield started[0], started[1]
        for d in started:
            assert d.running, d.log()
            assert_no_secret(d.get("/metrics")[1], d.get("/healthz")[1])
            code, _ = d.terminate()
            assert code == 0, d.log()
    finally:
        for d in started:
            d.close()
            assert_no_secret(d.log())


def env_for(redis_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    return {module: daemon_env(redis_url, {**FAST, **(extra or {})}) for module in MODULES}


def admin_of(server: RedisServer, password: str | None = None, **options: object) -> redis.Redis:
    return server.client(password=password, **options)


def error_count(d: Daemon) -> float:
    return d.metric(ERROR_METRIC[d.module]) or 0.0


def errors_at_least(d: Daemon, count: float) -> Callable[[], bool]:
    return lambda: error_count(d) >= count


def healthy(d: Daemon) -> Callable[[], bool]:
    return lambda: d.get("/healthz")[0] == 200


# --- password (requirepass) ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "log_format"), [("url", "json"), ("host_port_password", "text")], ids=["REDIS_URL", "REDIS_PASSWORD"]
)
def test_password_protected_redis_works_by_url_and_by_redis_password(tmp_path: Path, how: str, log_format: str) -> None:
    with RedisServer(extra_args=["--requirepass", PASSWORD]) as server:
        admin = admin_of(server, PASSWORD)
        if how == "url":
            env = env_for(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        else:
            extra = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port), "REDIS_PASSWORD": PASSWORD}
            env = env_for(None, extra)
        with both_daemons(tmp_path, env, "--log-level", "DEBUG", "--log-format", log_format) as (proposer, governor):
            assert_real_work(admin, proposer, governor, how)
            for d in (proposer, governor):
                assert error_count(d) == 0.0
                assert "<redacted>" in d.log()  # the settings line shows the secret variable, not its value
        if log_format == "json":
            for d in (proposer, governor):
                for line in d.log().splitlines():
                    json.loads(line)


@pytest.mark.slow
def test_wrong_password_keeps_the_daemons_up_unhealthy_counting_errors_until_redis_accepts_it(tmp_path: Path) -> None:
    """SPEC §5: refusing the password: never crash, never exit; recover once the server takes the password."""
    with RedisServer(extra_args=["--requirepass", "not-the-daemons-password"]) as server:
        admin = admin_of(server, "not-the-daemons-password")
        env = env_for(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        with both_daemons(tmp_path, env, "--log-level", "DEBUG") as (proposer, governor):
            both = (proposer, governor)
            for d in both:
                wait_until(errors_at_least(d, 2), f"{d.module} counting refused logins", both)
                status, body = d.get("/healthz")
                assert status == 503 and json.loads(body)["status"] == "unhealthy", body
                assert "AuthenticationError" in d.log()
            time.sleep(1.0)  # several backoff rounds later: still up, still refusing
            assert all(d.running and d.get("/healthz")[0] == 503 for d in both)

            admin.config_set("requirepass", PASSWORD)
            admin = admin_of(server, PASSWORD)
            assert_real_work(admin, proposer, governor, "recovered")
            for d in both:
                assert "succeed again" in d.log()


# --- ACL users -------------------------------------------------------------------------------------------------------


@contextmanager
def acl_server() -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A Redis whose default user needs the admin password, with the two daemon users of PROPOSER_ACL/GOVERNOR_ACL."""
    with RedisServer() as server:
        admin = server.client()
        command = cast(Callable[..., object], admin.execute_command)  # untyped upstream
        for user, rules in ACL_USERS.values():
            command("ACL", "SETUSER", user, *rules.split())
        command("ACL", "SETUSER", "default", "resetpass", ">" + ADMIN_PASSWORD)
        admin.close()
        admin = admin_of(server, ADMIN_PASSWORD)
        admin.acl_log_reset()
        yield server, admin


def acl_denials(admin: redis.Redis) -> list[object]:
    """Every ACL LOG entry but redis-py's optional ``CLIENT SETINFO``, whose refusal it ignores (Redis 7.2+)."""
    entries = cast(list[dict[str, object]], admin.acl_log())
    return [e for e in entries if "setinfo" not in str(e.get("object", "")).lower()]


@pytest.mark.slow
def test_least_privilege_acl_users_run_both_daemons_through_every_path(tmp_path: Path) -> None:
    with acl_server() as (server, admin):
        env = {
            module: daemon_env(f"redis://{user}:pw@127.0.0.1:{server.port}/0", {**FAST, "GOV_CLAIM_IDLE_MS": "1"})
            for module, (user, _) in ACL_USERS.items()
        }
        # every governor path: a claimed plan of another consumer, a skip, a dead letter, a block (cooldown)
        publish_plan(admin, "claimed", "ACLC")
        admin.xgroup_create(PLANS, "governor", id="0")
        admin.xreadgroup("governor", "someone-else", {PLANS: ">"})
        admin.xadd(PLANS, {"plan_id": "held", "symbol": "ACLH", "decision": "HOLD"})
        admin.xadd(PLANS, {"symbol": "ACLX"})
        admin.hset(EFF + "ACLB", mapping={"efficiency_score": "0.3", "confidence": "0.9", "ts": str(time.time())})
        admin.hset(LIVE + "ACLN", "target_usd", "oops")  # an invalid target: skipped, logged
        with both_daemons(tmp_path, env) as (proposer, governor):
            assert_real_work(admin, proposer, governor, "acl")
            publish_plan(admin, "first", "ACLB")
            publish_plan(admin, "second", "ACLB")  # the symbol's cooldown blocks it
            both = (proposer, governor)
            wait_until(lambda: admin.exists(PERMIT + "claimed", PERMIT + "first"), "claimed and first permitted", both)
            wait_until(lambda: admin.exists("quantum:governor:block:second"), "second blocked", both)
            wait_until(lambda: admin.xlen(PLANS + ".dlq") == 1, "a dead letter", both)
            loops = proposer.metric("p29_shadow_loops_total") or 0
            wait_until(lambda: (proposer.metric("p29_shadow_loops_total") or 0) >= loops + 2, "two more loops", both)
            for d in both:
                assert error_count(d) == 0.0, d.log()
            assert acl_denials(admin) == []
        result = run_once(GOVERNOR, env[GOVERNOR]["REDIS_URL"], {"GOV_CONSUMER": "gov-sec"})  # --once reads XINFO
        assert result.returncode == 0, result.stderr
        assert acl_denials(admin) == []
        # GOV_MIN_REPLICAS (SPEC §9): a probe write and WAIT on a master with a replica, then the held permit
        replica_args = ["--replicaof", "127.0.0.1", str(server.port), "--masterauth", ADMIN_PASSWORD]
        with RedisServer(extra_args=replica_args) as replica, replica.client() as on_replica:
            wait_until(lambda: on_replica.info("replication")["master_link_status"] == "up", "replica in sync", ())
            publish_plan(admin, "confirmed", "ACLR")
            replicated = {"GOV_CONSUMER": "gov-sec", "GOV_MIN_REPLICAS": "1", "GOV_REPLICA_WAIT_MS": "1000"}
            result = run_once(GOVERNOR, env[GOVERNOR]["REDIS_URL"], replicated)
            assert result.returncode == 0, result.stderr
            assert admin.exists(PERMIT + "confirmed") == 1
            assert int(admin.info("commandstats")["cmdstat_wait"]["calls"]) >= 1
        assert acl_denials(admin) == []

        proposer_user = redis.Redis(host="127.0.0.1", port=server.port, username="p31-proposer", password="pw")
        with pytest.raises(redis.exceptions.NoPermissionError):
            proposer_user.hset(LIVE + "SECacl", "target_usd", "1")  # the live target is read-only to it
        governor_user = redis.Redis(host="127.0.0.1", port=server.port, username="p31-governor", password="pw")
        with pytest.raises(redis.exceptions.NoPermissionError):
            governor_user.hgetall(LIVE + "SECacl")
        with pytest.raises(redis.exceptions.NoPermissionError):
            governor_user.flushall()


# --- TLS -------------------------------------------------------------------------------------------------------------


#: EC keys: made in milliseconds, where RSA takes seconds on a busy machine.
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", *KEY, "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "2", "-subj", f"/CN=p31 test {name}", cwd=directory)  # fmt: skip
    return cert, key


def make_cert(directory: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca``, with subjectAltName ``san`` (e.g. ``IP:127.0.0.1``)."""
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".crt", ".key", ".csr", ".ext"))
    ext.write_text(f"subjectAltName={san}\n")
    openssl("req", *KEY, "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=directory)  # fmt: skip
    return cert, key


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "tls"
    directory.mkdir()
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    server = make_cert(directory, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = make_cert(directory, "client", ca, "DNS:p31-daemon")
    return {
        "ca": ca[0], "other_ca": other_ca[0], "server_cert": server[0], "server_key": server[1],
        "client_cert": client[0], "client_key": client[1],
    }  # fmt: skip


def tls_url(port: int, password: str | None = None, **options: str) -> str:
    auth = f":{password}@" if password else ""
    return f"rediss://{auth}127.0.0.1:{port}/0?{urlencode({'ssl_cert_reqs': 'required', **options})}"


@pytest.mark.slow
def test_tls_end_to_end_and_a_certificate_from_another_ca_is_refused_without_a_crash(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    tls = TlsFiles(certs["server_cert"], certs["server_key"], certs["ca"], auth_clients="no")
    with RedisServer(extra_args=["--requirepass", PASSWORD], tls=tls) as server:
        admin = admin_of(server, PASSWORD)
        good = env_for(tls_url(server.port, PASSWORD, ssl_ca_certs=str(certs["ca"])))
        with both_daemons(tmp_path / "good", good, "--log-format", "json") as (proposer, governor):
            assert_real_work(admin, proposer, governor, "tls")

        wrong = env_for(tls_url(server.port, PASSWORD, ssl_ca_certs=str(certs["other_ca"])))
        with both_daemons(tmp_path / "wrong", wrong) as (proposer, governor):
            both = (proposer, governor)
            for d in both:
                wait_until(errors_at_least(d, 2), f"{d.module} counting TLS failures", both)
                assert d.get("/healthz")[0] == 503
                assert "certificate verify failed" in d.log().lower(), d.log()[-2000:]
            time.sleep(0.5)
            assert all(d.running for d in both)


@pytest.mark.slow
def test_mutual_tls_works_with_a_client_certificate_and_without_one_is_refused(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    tls = TlsFiles(
        certs["server_cert"], certs["server_key"], certs["ca"], auth_clients="yes",
        client_cert=certs["client_cert"], client_key=certs["client_key"],
    )  # fmt: skip
    with RedisServer(tls=tls) as server:
        admin = server.client()
        client_options = {
            "ssl_ca_certs": str(certs["ca"]),
            "ssl_certfile": str(certs["client_cert"]),
            "ssl_keyfile": str(certs["client_key"]),
        }
        with both_daemons(tmp_path / "mtls", env_for(tls_url(server.port, **client_options))) as (proposer, governor):
            assert_real_work(admin, proposer, governor, "mtls")
        no_cert = env_for(tls_url(server.port, ssl_ca_certs=str(certs["ca"])))
        with both_daemons(tmp_path / "nocert", no_cert) as (proposer, governor):
            for d in (proposer, governor):
                wait_until(errors_at_least(d, 2), f"{d.module} refused", (proposer, governor))
                assert d.get("/healthz")[0] == 503


# --- the password never appears --------------------------------------------------------------------------------------

#: Start-up failures whose message or log could carry the password: (variables, expected exit status).
BAD_CONFIG_WITH_PASSWORD = {
    "password in REDIS_URL, other value bad": (
        {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0", "P31_MIN_CONF": "x"}, 78
    ),
    "password in REDIS_PASSWORD, other value bad": ({"REDIS_PASSWORD": PASSWORD, "METRICS_PORT": "99999"}, 78),
    "REDIS_PASSWORD with white space": ({"REDIS_PASSWORD": PASSWORD + " "}, 78),
    # unencoded / # ? in a password: the URL parser takes the password for the port and quotes it in its error
    "unencoded / in the URL's password": ({"REDIS_URL": f"redis://:{PASSWORD}/x@127.0.0.1:6399/0"}, 78),
    "unencoded ? in the URL's password": ({"REDIS_URL": f"redis://:{PASSWORD}?x@127.0.0.1:6399/0"}, 78),
    "URL scheme redis-py refuses": ({"REDIS_URL": f"http://:{PASSWORD}@127.0.0.1:6399/0"}, 78),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("case", list(BAD_CONFIG_WITH_PASSWORD))
def test_a_config_error_never_shows_the_password(module: str, case: str) -> None:
    env, status = BAD_CONFIG_WITH_PASSWORD[case]
    for log_format in ("text", "json"):
        result = run_once(module, None, env, "--log-level", "DEBUG", "--log-format", log_format)
        assert result.returncode == status, result.stderr
        assert "REDIS" in result.stderr or "METRICS_PORT" in result.stderr or "P31_MIN_CONF" in result.stderr
        assert_no_secret(result.stdout, result.stderr)


def test_secret_values_cover_each_form_a_password_can_take_in_a_log_line() -> None:
    assert secret_values({"REDIS_PASSWORD": PASSWORD}) == {PASSWORD}
    assert PASSWORD in secret_values({"REDIS_URL": f"redis://user:{PASSWORD}@127.0.0.1:6379/0"})
    encoded = secret_values({"REDIS_URL": "redis://:p%2Fss%40word@127.0.0.1:6379/0"})
    assert {"p%2Fss%40word", "p/ss@word"} <= encoded  # raw, and as redis-py decodes it
    # an unencoded ? makes the parser take the part before it for the port, and quote it
    assert PASSWORD in secret_values({"REDIS_URL": f"redis://:{PASSWORD}?x@127.0.0.1:6379/0"})
    # an @ in the query: the real password is still found, and host and port are not blanked
    found = secret_values({"REDIS_URL": "rediss://u:pw12@host:6379/0?ssl_ca_certs=/a@b/ca.pem"})
    assert "pw12" in found and not {"host", "6379", "127.0.0.1"} & found
    assert secret_values({"REDIS_URL": "redis://127.0.0.1:6379/0"}) == frozenset()


@pytest.mark.slow
def test_an_unreachable_redis_never_shows_the_password_in_logs_metrics_or_health(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, never listening: connections are refused
    try:
        for log_format in ("text", "json"):
            env = env_for(f"redis://someone:{PASSWORD}@127.0.0.1:{port}/0")
            with both_daemons(tmp_path / log_format, env, "--log-level", "DEBUG", "--log-format", log_format) as both:
                for d in both:
                    wait_until(errors_at_least(d, 2), f"{d.module} failing", both)
                    assert "Connection refused" in d.log()
    finally:
        closed.close()


# --- HTTP surface ----------------------------------------------------------------------------------------------------


def raw_request(port: int, request: bytes, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; the status, headers (lower-case names) and body of the one response."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length or request.startswith(b"HEAD"):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def request(method: str, target: str, *extra_headers: str) -> bytes:
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: x", "Connection: close", *extra_headers, "", ""]).encode()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_http_answers_only_get_and_head_of_metrics_and_healthz_and_reveals_nothing(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path, module: str
) -> None:
    seed_symbol(r, "HTTP")
    env = daemon_env(redis_server.url, FAST)
    d = Daemon(module, env, tmp_path / "daemon.log", "--log-format", "json")
    try:
        wait_until(lambda: d.get("/healthz")[0] == 200, "healthy", (d,))
        assert listening_addresses(d.port) == {"127.0.0.1"}  # the default METRICS_ADDR: loopback only
        responses: list[tuple[int, dict[str, str], bytes]] = []

        def probe(req: bytes) -> tuple[int, dict[str, str], bytes]:
            responses.append(raw_request(d.port, req))
            return responses[-1]

        for path in ("/metrics", "/healthz", "/metrics?foo=bar&x[]=1"):
            status, headers, body = probe(request("GET", path))
            assert status == 200 and int(headers["content-length"]) == len(body) > 0, path
            status, headers, body = probe(request("HEAD", path))
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0, path

        for path in ("/", "/metrics/", "/metricsx", "/healthz.json", "/../metrics", "/metrics/../healthz",
                     "/%2e%2e/metrics", "/%2fmetrics", "http://127.0.0.1/metrics", "*", "/etc/passwd"):  # fmt: skip
            assert probe(request("GET", path))[0] == 404, path
        assert probe(request("HEAD", "/nope"))[0] == 404

        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            status, headers, _ = probe(request(method, "/metrics", "Content-Length: 5") + b"hello")
            assert status == 405 and headers["allow"] == "GET, HEAD", method
        assert probe(request("FROB", "/metrics"))[0] == 501

        assert probe(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 414
        assert probe(request("GET", "/metrics", "X-Big: " + "b" * 70_000))[0] == 431
        assert probe(request("GET", "/metrics", *[f"X-{i}: {i}" for i in range(150)]))[0] == 431
        assert probe(b"GET / metrics HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 400

        for _ in range(5):  # clients that reset the connection mid-request and mid-response
            sock = socket.create_connection(("127.0.0.1", d.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /metr")
            sock.close()
            sock = socket.create_connection(("127.0.0.1", d.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(request("GET", "/metrics"))
            sock.close()

        for status, headers, body in responses:
            assert headers.get("server") == "p31", headers
            shown = (json.dumps(headers) + body.decode("utf-8", "replace")).lower()
            for revealing in ("python", "basehttp", "traceback", "<html", "microservices"):
                assert revealing not in shown, (status, headers, body[:300])
        time.sleep(0.3)
        assert d.running and d.get("/healthz")[0] == 200
        for line in d.log().splitlines():  # nothing bypassed logging: every line is still one JSON object
            json.loads(line)
        assert "Traceback" not in d.log()
    finally:
        d.close()


@pytest.mark.slow
def test_metrics_on_ipv6_loopback(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    """``METRICS_ADDR=::1`` serves on the IPv6 loopback, when the machine has one; without one, the daemon stops
    with one line and exit 70 rather than serve elsewhere."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        has_ipv6_loopback = True
    except OSError:
        has_ipv6_loopback = False
    env = daemon_env(redis_server.url, {**FAST, "METRICS_ADDR": "::1"})
    if not has_ipv6_loopback:
        result = run_once(PROPOSER, redis_server.url, {"METRICS_ADDR": "::1"})
        assert result.returncode == 70 and "cannot serve metrics on ::1" in result.stderr
        return
    d = Daemon(PROPOSER, env, tmp_path / "daemon.log")
    try:
        assert listening_addresses(d.port) == {"::1"}
        wait_until(lambda: raw_request(d.port, request("GET", "/healthz"), host="::1")[0] == 200, "healthy", (d,))
        assert raw_request(d.port, request("GET", "/metrics"), host="::1")[0] == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
    finally:
        d.close()


#: Run inside a network namespace of its own (``unshare --net``) that has a non-loopback address: the daemon, with
#: the default METRICS_ADDR, is reached over loopback and refused over that address, while a control listener on
#: 0.0.0.0 is reached over it (so the refusal is the daemon's binding, not the namespace's network).
NETNS_PROBE = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from pathlib import Path
    from microservices.devtools.daemon_process import DaemonProcess

    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("ip", "link", "set", "lo", "up")
    run("ip", "link", "add", "p31a", "type", "veth", "peer", "name", "p31b")
    run("ip", "addr", "add", "198.18.0.1/24", "dev", "p31a")
    run("ip", "link", "set", "p31a", "up")
    run("ip", "link", "set", "p31b", "up")
    shown = run("ip", "-o", "-4", "addr", "show", "scope", "global").stdout.decode().split()
    address = shown[shown.index("inet") + 1].split("/")[0]  # the namespace's non-loopback address

    def reach(host, port):
        try:
            socket.create_connection((host, port), timeout=3).close()
            return "connected"
        except OSError as exc:
            return type(exc).__name__

    control = socket.socket()
    control.bind(("0.0.0.0", 0))
    control.listen()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": sys.argv[1], "METRICS_PORT": "0", "REDIS_URL": "redis://127.0.0.1:1/0"}
    d = DaemonProcess("microservices.allocation_target", env, Path(sys.argv[2]))
    try:
        print(json.dumps({
            "address": address,
            "loopback": reach("127.0.0.1", d.port),
            "other": reach(address, d.port),
            "control": reach(address, control.getsockname()[1]),
        }))
    finally:
        d.close()
    """
)


@pytest.mark.slow
def test_default_metrics_address_is_not_reachable_over_a_non_loopback_address(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", NETNS_PROBE, root, str(tmp_path / "daemon.log")],
        check=False, capture_output=True, text=True, timeout=60, cwd=root, env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert not seen["address"].startswith("127.")
    assert seen == {"address": seen["address"], "loopback": "connected", "other": "ConnectionRefusedError",
                    "control": "connected"}  # fmt: skip
