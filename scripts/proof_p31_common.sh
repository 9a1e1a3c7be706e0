# shellcheck shell=bash
# What the two P3.1 proof scripts share; sourced, never run. It sets up the run (its id, its directory, its ledger and
# results file), spawns and stops a daemon, and on exit (trap EXIT) stops the daemon, cleans up whatever the run wrote
# and removes the run's directory, whatever happened before.
#
# The including script sets TITLE and SPAWN (0 or 1), defines CLEANUP_ARGS (an array, possibly empty) and calls
# `proof_traps`.

PROOF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$PROOF_DIR")"
PY="${PYTHON:-$REPO_DIR/.venv/bin/python}"
# The production default; tests and staging export their own.
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
# The helpers and a spawned daemon import the checkout's code, installed or not.
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

# Part of every symbol and plan_id of the run, so that two runs (or a run and a leftover) never share a key.
RUN_ID="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/p31-proof.XXXXXX")"
STATE="$RUN_DIR/state.json"
RESULTS="$RUN_DIR/results.txt"
DAEMON_LOG="$RUN_DIR/daemon.log"
: >"$RESULTS"
SPAWN_PORT=""
DAEMON_PID=""
DAEMON_URL=""
DAEMON_EXIT=""
DAEMON_KILLED=0
CLEANED=0
FINISHED=0
# SPEC §5: a daemon exits within 5 s of SIGTERM; it is killed after twice that.
STOP_WAIT_TENTHS=100

helper() {
  "$PY" "$PROOF_DIR/$1" "${@:2}"
}

# record LINE: a PASS/FAIL line of the shell's own, printed and counted like the helpers' lines.
record() {
  printf '%s\n' "$1" | tee -a "$RESULTS"
}

# prepare STEP [--consumer NAME]: the run's ledger (and, with --spawn, the spawned daemon's port: SPAWN_PORT).
prepare() {
  local args=(--step "$1" --run "$RUN_ID" --state "$STATE" "${@:2}")
  if [ "$SPAWN" -eq 1 ]; then
    SPAWN_PORT="$(helper proof_p31_run.py prepare "${args[@]}" --spawn)"
  else
    helper proof_p31_run.py prepare "${args[@]}"
  fi
}

# spawn_daemon MODULE [VAR=VALUE ...]: start `python -m MODULE` with the caller's environment plus the given variables
# and METRICS_PORT=SPAWN_PORT; wait for /healthz 200. Sets DAEMON_PID and DAEMON_URL.
spawn_daemon() {
  local module="$1" port="$SPAWN_PORT"
  shift
  env "$@" METRICS_ADDR=127.0.0.1 METRICS_PORT="$port" "$PY" -m "$module" >"$DAEMON_LOG" 2>&1 &
  DAEMON_PID=$!
  DAEMON_URL="http://127.0.0.1:$port"
  echo "spawned $module (pid $DAEMON_PID) with /metrics on $DAEMON_URL" >&2
  helper proof_p31_run.py wait-health --url "$DAEMON_URL" --pid "$DAEMON_PID" --timeout 30
}

# stop_daemon: SIGTERM, wait (SIGKILL after STOP_WAIT_TENTHS/10 s). Sets DAEMON_EXIT and DAEMON_KILLED.
stop_daemon() {
  local pid="$DAEMON_PID" status=0 _
  [ -n "$pid" ] || return 0
  DAEMON_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$STOP_WAIT_TENTHS"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    DAEMON_KILLED=1
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  DAEMON_EXIT="$status"
}

# record_daemon_stop CASE: the spawned daemon must have ended by itself, with status 0, on SIGTERM.
record_daemon_stop() {
  if [ "$DAEMON_EXIT" = "0" ] && [ "$DAEMON_KILLED" -eq 0 ]; then
    record "PASS $1 (exit status 0 on SIGTERM)"
  else
    record "FAIL $1: expected exit status 0 on SIGTERM got ${DAEMON_EXIT:-none} (killed: $DAEMON_KILLED)"
  fi
}

cleanup_run() {
  CLEANED=1
  helper proof_p31_run.py cleanup --state "$STATE" --results "$RESULTS" ${CLEANUP_ARGS[@]+"${CLEANUP_ARGS[@]}"}
}

on_exit() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  stop_daemon
  if [ "$CLEANED" -eq 0 ]; then
    cleanup_run
  fi
  if [ "$FINISHED" -eq 0 ]; then
    echo "FAIL $TITLE: stopped before its summary (exit status $status)"
    [ "$status" -ne 0 ] || status=1
  fi
  if [ "$status" -ne 0 ] && [ -s "$DAEMON_LOG" ]; then
    echo "--- last lines of the spawned daemon's log ---" >&2
    tail -n 20 "$DAEMON_LOG" >&2
  fi
  rm -rf "$RUN_DIR"
  exit "$status"
}

proof_traps() {
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# finish: print the summary; the script's exit status is its verdict (0: every case passed, and there were some).
finish() {
  local passed failed names
  FINISHED=1
  passed="$(grep -c '^PASS ' "$RESULTS" || true)"
  failed="$(grep -c '^FAIL ' "$RESULTS" || true)"
  names="$(sed -n 's/^FAIL \([^:]*\):.*/\1/p' "$RESULTS" | paste -sd, - | sed 's/,/, /g')"
  echo "SUMMARY $TITLE: $passed passed, $failed failed${names:+ ($names)}"
  if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then
    echo "RESULT PASS"
    return 0
  fi
  echo "RESULT FAIL"
  return 1
}
