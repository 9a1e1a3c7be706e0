#!/usr/bin/env bash
# P3.1 Step 2 proof: the governor's downsize hint, end to end against a real Redis and a real daemon.
#
# The original deployment's checklist, made exact and self-checking. Per case it injects a test symbol's efficiency
# hash and publishes one execution plan, lets the governor decide, and checks with its default settings:
#   downsize              score 0.2, confidence 0.9 -> permit, eff_action DOWNSIZE, eff_factor = downsize_factor
#                         "0.4444", extra_cooldown_sec "96"
#   no-downsize           score 0.8 -> permit, NONE, "1.0000", "0"
#   missing-efficiency    no efficiency hash -> NONE, 1.0000, 0, eff_reason missing_eff
#   low-confidence        confidence 0.5 -> NONE, neutral, low_conf
#   reduce-close, reduce-only-flag   CLOSE_LONG, or reduceOnly=true, on a 0.2 symbol -> NONE, reduce_only
#   invalid-no-plan-id, invalid-plan-id-whitespace   -> a dead letter on {STREAM_PLANS}.dlq with reason
#                         invalid_plan, and an event dead_letter
#   not-execute           decision SKIP -> event skip, reason not_execute, no permit
#   permit-schema, permit-ttl (every SPEC §3 key with its type; TTL <= PERMIT_TTL_SEC), metrics-eff-apply
#   (p32_eff_apply_total{action="DOWNSIZE",reason="ok"} grown by exactly the downsized permits), metrics-eff-factor
#   (p32_eff_factor{symbol} 0.4444), governor-healthz, and cleanup (nothing of the run left behind).
# Every case has a symbol of its own: an opening plan starts its symbol's cooldown.
# It prints "PASS <case>" or "FAIL <case>: expected ... got ..." per case, then a summary, and exits 0 only when every
# case passed.
#
# CAUTION: against the running governor of a live system, the permits of this proof are real permits that reach the
# apply layer. Its symbols, P31PROOF2<CASE>USDT-<run>, are test-only: no exchange lists them (no exchange symbol holds
# a "-"), so the exchange layer rejects any order for them. Do not change them into real symbols.
#
# Usage: scripts/proof_p31_step2_governor_downsize.sh [--spawn] [--governor-url URL] [--env-file FILE] [--timeout SEC]
#   --spawn           start its own governor (python -m microservices.governor [--env-file FILE], GOV_CONSUMER
#                     p31proof-<run>, on a free METRICS_PORT, with this shell's environment) and stop it at exit. It
#                     reads plans from a stream and in a group of the run's own, STREAM_PLANS
#                     quantum:stream:apply.plan.proof-<run> and GOV_GROUP proof-<run>, on which the proof publishes
#                     its plans: it never joins the service's group, so a real plan published meanwhile is not its
#                     to decide. That stream and its .dlq are deleted at exit.
#   --governor-url    without --spawn: the running service's HTTP endpoint (default http://127.0.0.1:8044)
#   --env-file        read the service's variables from FILE too, as the daemons' --env-file does: parsed, never run
#                     as shell (a $ or ` in a password stays as it is); a variable of the environment wins. Every
#                     helper and the spawned governor get it.
#   --timeout         longest wait for the plans' outcomes (default 15 s)
# Settings, read as the service reads them (environment, then --env-file, then the service's defaults): REDIS_URL, or
# REDIS_HOST, REDIS_PORT, REDIS_DB and REDIS_PASSWORD (default localhost:6379, database 0, no password); without
# --spawn, STREAM_PLANS (the plans go to the running service's stream) and GOV_GROUP; PERMIT_TTL_SEC. PYTHON: the
# interpreter (default <repo>/.venv/bin/python).
# On the VPS, with the service's own settings (root:quantum-p31 0640: as root or that group):
#   /opt/quantum/p31/current/scripts/proof_p31_step2_governor_downsize.sh --env-file /etc/quantum/p31/governor.env
#
# What it touches: only keys of its own symbols and plan_ids (efficiency hashes, permits, blocks, outcome markers,
# gates) and its own entries on the events stream and, without --spawn, on the plans and dead-letter streams; with
# --spawn, its private plans stream and that stream's dead letters. At exit (trap EXIT, also after a failure or
# Ctrl-C) it deletes them all, with --spawn the private streams whole, and checks that nothing is left.
set -euo pipefail

# shellcheck source=scripts/proof_p31_common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/proof_p31_common.sh"
parse_options GOVERNOR_URL --governor-url "http://127.0.0.1:8044" "$@"
TIMEOUT="${TIMEOUT:-15}"

TITLE="P3.1 step 2 (governor downsize hint)"
CLEANUP_ARGS=()
start_run

if [ "$SPAWN" -eq 1 ]; then MODE="spawned governor"; else MODE="governor at $GOVERNOR_URL"; fi
echo "$TITLE: run $RUN_ID, $MODE"
if [ "$SPAWN" -eq 1 ]; then
  CONSUMER="p31proof-$RUN_ID"
  # Exported, so the helpers and the spawned governor name the same streams; the environment wins over the env file.
  export STREAM_PLANS="quantum:stream:apply.plan.proof-$RUN_ID" GOV_GROUP="proof-$RUN_ID"
  prepare 2 --consumer "$CONSUMER" --private-plans
  spawn_daemon microservices.governor GOV_CONSUMER="$CONSUMER"
  GOVERNOR_URL="$DAEMON_URL"
else
  prepare 2
fi

helper proof_p31_step2_inject_plan.py --state "$STATE" --governor-url "$GOVERNOR_URL"
run_checks proof_p31_step2_check.py step2-check --governor-url "$GOVERNOR_URL" --timeout "$TIMEOUT"
end_run governor-sigterm
