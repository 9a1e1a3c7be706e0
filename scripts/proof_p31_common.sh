# shellcheck shell=bash
# What the two P3.1 proof scripts share; sourced, never run. It parses their common options, sets up the run (its id,
# its directory, its ledger and results file), spawns and stops a daemon, and on exit (trap EXIT) stops the daemon,
# cleans up whatever the run wrote and removes the run's directory, whatever happened before.
#
# The including script sources it first and calls `parse_options` with its own arguments; then it sets TITLE, defines
# CLEANUP_ARGS (an array, possibly empty) and calls `start_run`. Nothing is created before `start_run`, so that
# `--help` or a usage error leaves nothing behind.

PROOF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$PROOF_DIR")"
PY="${PYTHON:-$REPO_DIR/.venv/bin/python}"
# No connection default of the shell's own: every helper and a spawned daemon read REDIS_URL, or REDIS_HOST, REDIS_PORT,
# REDIS_DB and REDIS_PASSWORD, from the environment and the --env-file, and the settings' defaults apply as for the
# daemons (a REDIS_URL set here would win over the env file's REDIS_HOST and REDIS_PASSWORD).
# The helpers and a spawned daemon import the checkout's code, installed or not.
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

ENV_FILE=""
SPAWN_PORT=""
DAEMON_PID=""
DAEMON_URL=""
DAEMON_EXIT=""
DAEMON_KILLED=0
CLEANED=0
FINISHED=0
# SPEC §5: a daemon exits within 5 s of SIGTERM; it is killed after twice that.
STOP_WAIT_TENTHS=100

# helper SCRIPT ARG...: a Python helper, given the proof's --env-file (before its own arguments: proof_p31_run.py takes
# it ahead of its command).
helper() {
  "$PY" "$PROOF_DIR/$1" ${ENV_FILE:+--env-file "$ENV_FILE"} "${@:2}"
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

# spawn_daemon MODULE [VAR=VALUE ...]: start `python -m MODULE [--env-file FILE]` with the caller's environment plus the
# given variables and METRICS_PORT=SPAWN_PORT (which win over the env file's); wait for /healthz 200. Sets DAEMON_PID
# and DAEMON_URL.
spawn_daemon() {
  local module="$1" port="$SPAWN_PORT"
  shift
  env "$@" METRICS_ADDR=127.0.0.1 METRICS_PORT="$port" \
    "$PY" -m "$module" ${ENV_FILE:+--env-file "$ENV_FILE"} >"$DAEMON_LOG" 2>&1 &
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

# run_checks SCRIPT CASE ARG...: the step's check helper with the run's ledger and results file; exit status 0 or 1 is
# its verdict (its PASS/FAIL lines are in the results), any other is a FAIL CASE of its own.
run_checks() {
  local script="$1" case="$2" status=0
  shift 2
  helper "$script" --state "$STATE" --results "$RESULTS" "$@" || status=$?
  if [ "$status" -gt 1 ]; then
    record "FAIL $case: expected the check to finish (exit status 0 or 1) got exit status $status"
  fi
}

# end_run SIGTERM_CASE: stop the spawned daemon (recorded as SIGTERM_CASE), clean up, and print the summary; its exit
# status is the proof's verdict.
end_run() {
  if [ "$SPAWN" -eq 1 ]; then
    stop_daemon
    record_daemon_stop "$1"
  fi
  cleanup_run || true
  finish
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

# parse_options URL_VAR URL_OPTION DEFAULT_URL ARG...: the options of both proofs, `[--spawn] [URL_OPTION URL]
# [--env-file FILE] [--timeout SEC] [-h|--help]`. Sets SPAWN (0 or 1), the variable named URL_VAR (DEFAULT_URL unless
# given), ENV_FILE (empty unless given) and TIMEOUT (empty unless given: each proof has its own default). --help prints
# the proof's header comment and exits 0; an unknown argument, or an env file that cannot be read, exits 2.
parse_options() {
  local url_var="$1" url_option="$2"
  printf -v "$url_var" '%s' "$3"
  shift 3
  SPAWN=0
  TIMEOUT=""
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --spawn) SPAWN=1 ;;
      "$url_option") printf -v "$url_var" '%s' "${2:?$url_option needs a URL}"; shift ;;
      --env-file) ENV_FILE="${2:?--env-file needs a file}"; shift ;;
      --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
      -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[-1]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
      *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
  done
  if [ -n "$ENV_FILE" ] && ! { [ -f "$ENV_FILE" ] && [ -r "$ENV_FILE" ]; }; then
    echo "--env-file $ENV_FILE: not a readable file" >&2
    exit 2
  fi
}

# start_run: the run's id, directory, ledger and results file, and the traps that clean up after it.
start_run() {
  # Part of every symbol and plan_id of the run, so that two runs (or a run and a leftover) never share a key.
  RUN_ID="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
  RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/p31-proof.XXXXXX")"
  STATE="$RUN_DIR/state.json"
  RESULTS="$RUN_DIR/results.txt"
  DAEMON_LOG="$RUN_DIR/daemon.log"
  : >"$RESULTS"
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
