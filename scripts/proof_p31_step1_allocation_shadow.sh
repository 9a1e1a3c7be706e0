#!/usr/bin/env bash
# P3.1 Step 1 proof: the allocation-target shadow proposer, end to end against a real Redis and a real daemon.
#
# The original deployment's checklist, made exact and self-checking. It injects one test symbol per case (an
# efficiency hash and a live allocation target), lets the proposer run, and checks with its default settings:
#   high-score            score 0.9, confidence 0.9 -> multiplier 1.4000, proposed = base x 1.4 to the cent, ok
#   low-score             score 0.3 -> 0.8000
#   missing-efficiency    no efficiency hash -> 1.0000, missing_eff
#   low-confidence        confidence 0.5 < P31_MIN_CONF 0.65 -> 1.0000, low_conf
#   stale-efficiency      ts 700 s ago > P31_STALE_SEC 600 -> 1.0000, stale_eff, eff_stale "1"
#   invalid-text-score, invalid-nan-score, invalid-out-of-range (score "abc", NaN, 1.5) -> 1.0000, invalid_eff
#   millisecond-ts        a fresh ts in milliseconds -> ok, 1.4000
#   future-ts             ts an hour ahead -> 1.0000, invalid_eff
#   shadow-ttl, live-target-unchanged (byte-exact), stream-entries (SPEC fields), stream-one-per-loop,
#   proposer-healthz, metrics-multiplier, metrics-proposed-total, and cleanup (nothing of the run left behind).
# It prints "PASS <case>" or "FAIL <case>: expected ... got ..." per case, then a summary, and exits 0 only when every
# case passed.
#
# Usage: scripts/proof_p31_step1_allocation_shadow.sh [--spawn] [--proposer-url URL] [--env-file FILE]
#          [--timeout SEC]
#   --spawn           start its own proposer (python -m microservices.allocation_target [--env-file FILE],
#                     LOOP_INTERVAL_SEC=1, on a free METRICS_PORT, with this shell's environment) and stop it at exit.
#                     Refused when the Redis holds live allocation targets: the spawned proposer would write shadow
#                     proposals for them.
#   --proposer-url    without --spawn: the running service's HTTP endpoint (default http://127.0.0.1:8065)
#   --env-file        read the service's variables from FILE too, as the daemons' --env-file does: parsed, never run
#                     as shell (a $ or ` in a password stays as it is); a variable of the environment wins. Every
#                     helper and the spawned proposer get it.
#   --timeout         longest wait for two proposer loops after the injection (default 25 s, with --spawn 15 s:
#                     the service loops every LOOP_INTERVAL_SEC, 10 s by default)
# Settings, read as the service reads them (environment, then --env-file, then the service's defaults): REDIS_URL, or
# REDIS_HOST, REDIS_PORT, REDIS_DB and REDIS_PASSWORD (default localhost:6379, database 0, no password);
# PROPOSE_STREAM_NAME and PROPOSE_KEY_TTL. PYTHON: the interpreter (default <repo>/.venv/bin/python).
# On the VPS, with the service's own settings (root:quantum-p31 0640: as root or that group):
#   /opt/quantum/p31/current/scripts/proof_p31_step1_allocation_shadow.sh --env-file /etc/quantum/p31/allocation-target.env
#
# CAUTION: against a live system, whatever else reads quantum:allocation:target:* sees the run's live targets while
# it lasts (seconds; up to a minute without --spawn). Its symbols, P31PROOF1<CASE>USDT-<run>, are test-only: no
# exchange lists them (no exchange symbol holds a "-"), so the exchange layer rejects any order for them.
#
# What it touches: only keys of its own symbols (efficiency hashes, live targets, shadow proposals) and its own
# entries on the proposals stream; at exit (trap EXIT, also after a failure or Ctrl-C) it deletes them all (without
# --spawn, after waiting for the service's loops to pass the deleted symbols by) and checks that nothing is left.
set -euo pipefail

# shellcheck source=scripts/proof_p31_common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/proof_p31_common.sh"
parse_options PROPOSER_URL --proposer-url "http://127.0.0.1:8065" "$@"
if [ -z "$TIMEOUT" ]; then
  if [ "$SPAWN" -eq 1 ]; then TIMEOUT=15; else TIMEOUT=25; fi
fi

TITLE="P3.1 step 1 (allocation-target shadow proposer)"
CLEANUP_ARGS=()
start_run

if [ "$SPAWN" -eq 1 ]; then MODE="spawned proposer"; else MODE="proposer at $PROPOSER_URL"; fi
echo "$TITLE: run $RUN_ID, $MODE"
prepare 1

if [ "$SPAWN" -eq 1 ]; then
  spawn_daemon microservices.allocation_target LOOP_INTERVAL_SEC=1
  PROPOSER_URL="$DAEMON_URL"
else
  # The service keeps looping: the cleanup waits for its loops to pass the run's deleted symbols by.
  CLEANUP_ARGS=(--proposer-url "$PROPOSER_URL" --quiesce-timeout "$TIMEOUT")
fi

helper proof_p31_step1_inject_efficiency.py --state "$STATE"
run_checks proof_p31_step1_check.py step1-check --proposer-url "$PROPOSER_URL" --timeout "$TIMEOUT"
end_run proposer-sigterm
