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
# Usage: scripts/proof_p31_step2_governor_downsize.sh [--spawn] [--governor-url URL] [--timeout SEC]
#   --spawn           start its own governor (python -m microservices.governor, GOV_CONSUMER p31proof-<run>, on a free
#                     METRICS_PORT, with this shell's environment) and stop it at exit. Refused when the plans
#                     stream holds plans the spawned governor would decide (undelivered or pending in its group, or
#                     any plan when the group does not exist yet).
#   --governor-url    without --spawn: the running service's HTTP endpoint (default http://127.0.0.1:8044)
#   --timeout         longest wait for the plans' outcomes (default 15 s)
# Environment: REDIS_URL (default redis://127.0.0.1:6379/0, production's), PYTHON (default <repo>/.venv/bin/python);
# STREAM_PLANS, GOV_GROUP and PERMIT_TTL_SEC if the service uses other values than the defaults.
# On the VPS, to take them from the service's own settings (root:quantum-p31 0640: as root or that group):
#   ( set -a; . /etc/quantum/p31/governor.env; set +a
#     /opt/quantum/p31/scripts/proof_p31_step2_governor_downsize.sh )
#
# What it touches: only keys of its own symbols and plan_ids (efficiency hashes, permits, blocks, outcome markers,
# gates) and its own entries on the plans, events and dead-letter streams; at exit (trap EXIT, also after a failure or
# Ctrl-C) it deletes them all, with --spawn also the spawned governor's consumer (and the group or stream it created),
# and checks that nothing is left.
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
  prepare 2 --consumer "$CONSUMER"
  spawn_daemon microservices.governor GOV_CONSUMER="$CONSUMER"
  GOVERNOR_URL="$DAEMON_URL"
else
  prepare 2
fi

helper proof_p31_step2_inject_plan.py --state "$STATE" --governor-url "$GOVERNOR_URL"
run_checks proof_p31_step2_check.py step2-check --governor-url "$GOVERNOR_URL" --timeout "$TIMEOUT"
end_run governor-sigterm
