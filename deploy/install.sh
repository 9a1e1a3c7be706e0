#!/usr/bin/env bash
# Install, upgrade, roll back, remove or show the P3.1 daemons on the VPS. Run as root from a checkout (or an
# unpacked release):
#
#   deploy/install.sh [install|rollback|uninstall|status] [--dry-run]
#
#   install    (the default; also the upgrade) build a release of this checkout in /opt/quantum/p31/releases/<name>
#              (its own venv, made with the system python3), check /etc/quantum/p31/*.env with that release's
#              `p31ctl check-config --strict`, install the units, switch /opt/quantum/p31/current to it, then restart
#              one daemon at a time and wait for its /healthz. A daemon that does not become healthy puts the
#              previous release back. Installing the current release again changes nothing.
#   rollback   back to the previous release (or, past the first, to the deployment that was there before P3.1).
#   uninstall  stop, disable and remove both units and /opt/quantum/p31; /etc/quantum/p31 and Redis are kept.
#   status     the releases, which is current, each unit's state and /healthz.
#   --dry-run  print each action, change nothing.
#
# Every step prints one line; a failure says what to do next. DEPLOYMENT_VPS_P31_INTEGRATION.md is the operator's guide.
set -euo pipefail
umask 022

BASE=/opt/quantum/p31
RELEASES="$BASE/releases"
CURRENT="$BASE/current"
# The releases in the order they became current, one name a line: the last is current, the one before is what a
# rollback goes back to.
HISTORY="$BASE/history"
ETC=/etc/quantum/p31
# The deployment that ran under the same unit names before P3.1: its unit and env files, kept for `rollback`.
PREVIOUS="$ETC/previous-deployment"
UNIT_DIR=/etc/systemd/system
SERVICE_USER=quantum-p31
KEEP_RELEASES=3
HEALTH_TIMEOUT_SEC=60
# The system's python3 (INSTALL_PYTHON to choose another): a Python under /root or /home is hidden from the daemons
# by their units' ProtectHome=.
PYTHON="${INSTALL_PYTHON:-/usr/bin/python3}"
# daemon name, unit, shipped env file (relative to the release), default metrics port
DAEMONS=(
  "allocation-target quantum-allocation-target.service deploy/allocation-target.env 8065"
  "governor quantum-governor.service deployment/config/governor.env 8044"
)
# What a release holds besides its venv: the units, env files, docs and proof scripts of the same commit.
RELEASE_FILES=(deploy deployment docs scripts README.md DEPLOYMENT_VPS_P31_INTEGRATION.md)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$HERE")"
HELPER="$HERE/install_helper.py"

COMMAND=install
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    install | rollback | uninstall | status) COMMAND="$arg" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 64 ;;
  esac
done

step() { printf 'p31-install: %s\n' "$*"; }
# fail MESSAGE NEXT: the failure and what to do about it; exit 1.
fail() {
  printf 'p31-install: FAILED: %s\n' "$1" >&2
  printf 'p31-install: next: %s\n' "$2" >&2
  exit 1
}
# act COMMAND...: run it, or with --dry-run only say it would.
act() {
  if [ "$DRY_RUN" -eq 1 ]; then
    printf 'p31-install: would run: %s\n' "$*"
  else
    "$@"
  fi
}
helper() { "$PYTHON" "$HELPER" "$@"; }

current_release() { if [ -L "$CURRENT" ]; then basename "$(readlink "$CURRENT")"; fi; }
is_ours() { grep -q "^ExecStart=$CURRENT/" "$1" 2>/dev/null; }

require_root() {
  [ "$(id -u)" -eq 0 ] || fail "must run as root" "sudo $0 $COMMAND"
  command -v systemctl >/dev/null || fail "systemctl not found: this host does not run systemd" "use a systemd host"
}

# --- building a release -------------------------------------------------------------------------------------------

check_python() {
  local real
  [ -x "$PYTHON" ] || fail "no system python3 at $PYTHON" "apt-get install python3 python3-venv"
  real="$(readlink -f "$PYTHON")"
  case "$real" in
    /root/* | /home/*) fail "python3 under /root or /home: $PYTHON is $real, which the units' ProtectHome= hides" \
      "set INSTALL_PYTHON to a system python3, e.g. /usr/bin/python3" ;;
  esac
  "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    fail "not Python 3.11+ with venv: $PYTHON" "apt-get install python3 python3-venv"
  step "python: $real ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
}

# build_wheel: the wheel of $SRC in $WORK/dist (a throwaway venv builds it); sets WHEEL, VERSION and RELEASE.
build_wheel() {
  local log
  step "building the wheel of $SRC"
  "$PYTHON" -m venv "$WORK/build"
  if ! "$WORK/build/bin/pip" wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$SRC" >"$WORK/build.log" 2>&1; then
    log="$(tail -n 5 "$WORK/build.log" | tr '\n' ' ')"
    fail "building the wheel failed: $log" \
      "fix the checkout (git status) or the network to the package index, then run install again"
  fi
  WHEEL="$(ls "$WORK"/dist/*.whl)"
  VERSION="$(helper wheel-version "$WHEEL")"
  RELEASE="$(helper release-name "$WHEEL")"
  step "release $RELEASE (version $VERSION)"
}

# make_release: $RELEASES/$RELEASE with its venv and files; an incomplete one (an install that died) is made again.
make_release() {
  local dir="$RELEASES/$RELEASE" log
  if [ -f "$dir/.complete" ]; then
    step "release $RELEASE is already built in $dir"
    return
  fi
  step "making $dir (venv with $PYTHON, then the wheel and its dependencies)"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$PYTHON" -m venv "$dir/.venv"
  if ! "$dir/.venv/bin/pip" install --quiet "$WHEEL" >"$WORK/install.log" 2>&1; then
    rm -rf "$dir"
    log="$(tail -n 5 "$WORK/install.log" | tr '\n' ' ')"
    fail "pip install of the release failed: $log" "check the network to the package index, then run install again"
  fi
  local files=()
  for f in "${RELEASE_FILES[@]}"; do [ -e "$SRC/$f" ] && files+=("$f"); done
  tar -C "$SRC" --exclude=__pycache__ -cf - "${files[@]}" | tar -C "$dir" -xf -
  printf '%s\n' "$VERSION" >"$dir/.version"
  touch "$dir/.complete"
}

# --- env files ----------------------------------------------------------------------------------------------------

ensure_user() {
  if getent passwd "$SERVICE_USER" >/dev/null; then
    step "user $SERVICE_USER exists"
  else
    step "creating the system user and group $SERVICE_USER"
    act useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
}

# env_files RELEASE_DIR: create missing env files from the release's shipped ones; beside an existing one that differs,
# write the shipped file as *.env.new and list the variables that differ. Never overwrites an operator's file.
env_files() {
  local rel="$1" entry name unit shipped port target
  [ -d "$ETC" ] || act install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    target="$ETC/$name.env"
    if [ ! -e "$target" ]; then
      step "creating $target from the shipped $shipped (edit REDIS_* for this VPS)"
      act install -m 0640 -o root -g "$SERVICE_USER" "$rel/$shipped" "$target"
    elif ! cmp -s "$target" "$rel/$shipped"; then
      step "keeping $target; the shipped file is written beside it as $target.new; variables that differ:"
      act install -m 0640 -o root -g "$SERVICE_USER" "$rel/$shipped" "$target.new"
      helper env-diff "$target" "$rel/$shipped" | sed 's/^/p31-install:   /'
    elif [ -e "$target.new" ]; then
      act rm -f "$target.new"
    else
      step "$target is the shipped file"
    fi
  done
}

# check_env RELEASE_DIR: each env file as that release's daemons will read it.
check_env() {
  local rel="$1" entry name unit shipped port target out
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    target="$ETC/$name.env"
    [ -e "$target" ] || target="$rel/$shipped" # --dry-run: not created yet
    if out="$("$rel/.venv/bin/p31ctl" check-config --strict --daemon "$name" "$target" 2>&1)"; then
      step "checked $target: $out"
    else
      printf '%s\n' "$out" | sed 's/^/p31-install:   /' >&2
      return 1
    fi
  done
}

# --- units --------------------------------------------------------------------------------------------------------

# find_previous_deployment: units of our names that do not run $CURRENT are the deployment before P3.1: keep a copy of
# their unit and env files (and whether they were enabled and active) in $PREVIOUS, then stop them.
find_previous_deployment() {
  local entry name unit shipped port file found=0 env enabled active
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    file="$UNIT_DIR/$unit"
    [ -e "$file" ] && ! is_ours "$file" && found=1
  done
  [ "$found" -eq 1 ] || return 0
  if [ -e "$PREVIOUS/manifest" ]; then
    step "a previous deployment is already kept in $PREVIOUS; not copying again"
  else
    step "found the deployment before P3.1 under the same unit names; keeping a copy in $PREVIOUS"
    act mkdir -p "$PREVIOUS/files"
    for entry in "${DAEMONS[@]}"; do
      read -r name unit shipped port <<<"$entry"
      file="$UNIT_DIR/$unit"
      [ -e "$file" ] || continue
      enabled="$(systemctl is-enabled "$unit" 2>/dev/null || true)"
      active="$(systemctl is-active "$unit" 2>/dev/null || true)"
      step "$unit was ${enabled:-disabled} and ${active:-inactive}"
      keep_file "$file"
      [ "$DRY_RUN" -eq 1 ] || printf 'unit %s %s %s\n' "$unit" "${enabled:-disabled}" "${active:-inactive}" >>"$PREVIOUS/manifest"
      while read -r env; do
        if [ -e "$env" ]; then keep_file "$env"; fi
      done < <(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$file")
    done
  fi
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    [ -e "$UNIT_DIR/$unit" ] || continue
    step "stopping the previous deployment's $unit"
    act systemctl stop "$unit"
  done
}

# keep_file PATH: a copy of PATH (content, mode, owner, times) under $PREVIOUS/files, and its line in the manifest.
keep_file() {
  step "keeping a copy of $1"
  act mkdir -p "$PREVIOUS/files$(dirname "$1")"
  act cp -a "$1" "$PREVIOUS/files$1"
  [ "$DRY_RUN" -eq 1 ] || printf 'file %s\n' "$1" >>"$PREVIOUS/manifest"
}

install_units() {
  local rel="$1" entry name unit shipped port
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    step "installing $UNIT_DIR/$unit"
    act install -m 0644 "$rel/deploy/systemd/$unit" "$UNIT_DIR/$unit" || return 1
  done
  step "systemctl daemon-reload"
  act systemctl daemon-reload
}

units_match() {
  local rel="$1" entry name unit shipped port
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    cmp -s "$rel/deploy/systemd/$unit" "$UNIT_DIR/$unit" || return 1
    [ "$(systemctl is-active "$unit" 2>/dev/null || true)" = active ] || return 1
  done
}

# restart_checked VERSION: enable and restart one daemon at a time, each waited for until healthy (running VERSION).
# On failure prints why and returns 1.
restart_checked() {
  local version="$1" entry name unit shipped port before url
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    url="$(helper healthz-url "$ETC/$name.env" "$port")"
    step "restarting $unit and waiting for $url (at most ${HEALTH_TIMEOUT_SEC}s)"
    if [ "$DRY_RUN" -eq 1 ]; then
      act systemctl enable --quiet "$unit"
      act systemctl restart --no-block "$unit"
      continue
    fi
    before="$(systemctl show --property=InvocationID --value "$unit")"
    systemctl enable --quiet "$unit"
    systemctl restart --no-block "$unit"
    helper wait-healthy "$unit" --url "$url" --version "$version" --before "$before" --timeout "$HEALTH_TIMEOUT_SEC" |
      sed 's/^/p31-install: /' || return 1
  done
}

# switch_to RELEASE: point $CURRENT at it atomically (a new symlink renamed over the old one).
switch_to() {
  step "switching $CURRENT to releases/$1"
  act ln -sfn "releases/$1" "$BASE/.current.new" && act mv -T "$BASE/.current.new" "$CURRENT"
}

history_push() {
  [ "$DRY_RUN" -eq 1 ] && return
  local kept
  kept="$(grep -vxF "$1" "$HISTORY" 2>/dev/null || true)"
  { [ -z "$kept" ] || printf '%s\n' "$kept"; printf '%s\n' "$1"; } >"$HISTORY.new"
  mv -T "$HISTORY.new" "$HISTORY"
}

history_pop() {
  [ "$DRY_RUN" -eq 1 ] && return
  sed -i '$d' "$HISTORY"
}

previous_release() {
  if [ -f "$HISTORY" ]; then tail -n 2 "$HISTORY" | head -n -1; fi
}

# activate RELEASE: its units, current switched to it, both daemons restarted and checked. Returns 1 if a step failed
# or a daemon is unhealthy. (Called as an `if` condition, where `set -e` does not apply: each step is checked here.)
activate() {
  local rel="$RELEASES/$1" version="<version>"
  [ "$DRY_RUN" -eq 1 ] && [ ! -d "$rel" ] && rel="$SRC"
  [ -f "$rel/.version" ] && version="$(cat "$rel/.version")"
  install_units "$rel" || return 1
  switch_to "$1" || return 1
  restart_checked "$version"
}

# prune: keep the last $KEEP_RELEASES releases that were current (the current one among them); remove the others,
# also a release that was built but never became current.
prune() {
  local keep name dir
  [ -f "$HISTORY" ] || return 0
  keep="$(tail -n "$KEEP_RELEASES" "$HISTORY")"
  for dir in "$RELEASES"/*/; do
    [ -d "$dir" ] || continue
    name="$(basename "$dir")"
    if ! grep -qxF "$name" <<<"$keep"; then
      step "removing the old release $name (keeping the last $KEEP_RELEASES)"
      act rm -rf "$dir"
    fi
  done
  [ "$DRY_RUN" -eq 1 ] || { printf '%s\n' "$keep" >"$HISTORY.new" && mv -T "$HISTORY.new" "$HISTORY"; }
}

# restore_previous_deployment: the deployment before P3.1 back exactly as it was: its unit and env files, enabled and
# started as they were; our units' current link removed (the releases stay until uninstall).
restore_previous_deployment() {
  local entry name unit shipped port kind path state active
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    step "stopping and disabling $unit"
    act systemctl disable --now --quiet "$unit" || true
    act rm -f "$UNIT_DIR/$unit"
    act rm -f "$ETC/$name.env.new"
  done
  while read -r kind path state active; do
    [ "$kind" = file ] || continue
    step "restoring $path"
    act cp -a "$PREVIOUS/files$path" "$path"
  done <"$PREVIOUS/manifest"
  step "systemctl daemon-reload"
  act systemctl daemon-reload
  while read -r kind path state active; do
    [ "$kind" = unit ] || continue
    if [ "$state" = enabled ]; then
      step "enabling $path"
      act systemctl enable --quiet "$path"
    fi
    if [ "$active" = active ]; then
      step "starting $path"
      act systemctl start "$path"
    fi
  done <"$PREVIOUS/manifest"
  step "removing $CURRENT"
  act rm -f "$CURRENT" "$HISTORY"
  act rm -rf "$PREVIOUS"
}

# --- commands -----------------------------------------------------------------------------------------------------

cmd_install() {
  local current previous
  require_root
  check_python
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  current="$(current_release)"
  if [ "$DRY_RUN" -eq 1 ]; then
    # Building is what tells the release's name; a dry run builds nothing and shows the steps with the shipped files.
    RELEASE="<version>-<commit>"
    step "would build the wheel of $SRC and make $RELEASES/$RELEASE (its venv with $PYTHON)"
    ensure_user
    env_files "$SRC"
    step "would check each env file with the new release's p31ctl check-config --strict"
    find_previous_deployment
    activate "$RELEASE"
    step "would keep the last $KEEP_RELEASES releases"
    return 0
  fi
  build_wheel
  if [ "$current" = "$RELEASE" ] && units_match "$RELEASES/$RELEASE"; then
    step "release $RELEASE is already current and both units run it: nothing to do"
    return 0
  fi
  ensure_user
  mkdir -p "$RELEASES"
  make_release
  env_files "$RELEASES/$RELEASE"
  check_env "$RELEASES/$RELEASE" ||
    fail "an env file in $ETC is refused by release $RELEASE (above); nothing was switched, ${current:-nothing} runs as before" \
      "fix the variable named above (see $ETC/*.env.new for the shipped defaults), then run install again"
  find_previous_deployment
  if activate "$RELEASE"; then
    history_push "$RELEASE"
    prune
    step "done: release $RELEASE is current and both daemons are healthy"
    return 0
  fi
  # The new release did not become healthy: put back what ran before.
  if [ -n "$current" ] && [ "$current" != "$RELEASE" ] && [ -f "$RELEASES/$current/.complete" ]; then
    step "release $RELEASE is not healthy: putting back release $current"
    if activate "$current"; then
      fail "release $RELEASE did not become healthy (above); release $current is current and healthy again" \
        "read the journal lines above (journalctl -u <unit>), fix the cause, then run install again"
    fi
    fail "release $RELEASE did not become healthy, and neither did release $current after switching back" \
      "journalctl -u quantum-governor -u quantum-allocation-target; deploy/install.sh status"
  fi
  if [ -e "$PREVIOUS/manifest" ]; then
    step "release $RELEASE is not healthy: putting back the previous deployment"
    restore_previous_deployment
    fail "release $RELEASE did not become healthy (above); the previous deployment runs again" \
      "read the journal lines above, fix the cause, then run install again"
  fi
  fail "release $RELEASE did not become healthy (above); it is current but not running healthily" \
    "read the journal lines above (journalctl -u <unit>), fix the cause, then run install again"
}

cmd_rollback() {
  local current previous
  require_root
  current="$(current_release)"
  previous="$(previous_release)"
  if [ -n "$previous" ] && [ -f "$RELEASES/$previous/.complete" ]; then
    step "rolling back from release ${current:-none} to release $previous"
    activate "$previous" ||
      fail "release $previous did not become healthy after the rollback (above)" \
        "read the journal lines above; deploy/install.sh install from a good checkout puts a release back"
    history_pop
    step "done: release $previous is current and both daemons are healthy"
  elif [ -e "$PREVIOUS/manifest" ]; then
    step "rolling back from release ${current:-none} to the deployment before P3.1 (kept in $PREVIOUS)"
    restore_previous_deployment
    step "done: the previous deployment's units and env files are back as they were"
  else
    fail "there is no release before ${current:-the current one} to roll back to" \
      "deploy/install.sh status lists the releases; install a checkout of the wanted commit instead"
  fi
}

cmd_uninstall() {
  local entry name unit shipped port
  require_root
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    if [ -e "$UNIT_DIR/$unit" ]; then
      step "stopping and disabling $unit"
      act systemctl disable --now --quiet "$unit"
      step "removing $UNIT_DIR/$unit"
      act rm -f "$UNIT_DIR/$unit"
    else
      step "$unit is not installed"
    fi
  done
  step "systemctl daemon-reload"
  act systemctl daemon-reload
  step "removing $BASE"
  act rm -rf "$BASE"
  step "kept $ETC (the env files); Redis is untouched"
  if [ -e "$PREVIOUS/manifest" ]; then
    step "the deployment before P3.1 is kept in $PREVIOUS (its unit and env files, to copy back by hand)"
  fi
}

cmd_status() {
  local current previous entry name unit shipped port url dir marker enabled active
  current="$(current_release)"
  step "releases in $RELEASES:"
  for dir in "$RELEASES"/*/; do
    [ -d "$dir" ] || continue
    name="$(basename "$dir")"
    marker=" "
    [ "$name" = "$current" ] && marker="*"
    printf 'p31-install:  %s %s\n' "$marker" "$name"
  done
  previous="$(previous_release)"
  step "current: ${current:-none}; a rollback goes back to: ${previous:-$([ -e "$PREVIOUS/manifest" ] && echo "the deployment before P3.1" || echo nothing)}"
  [ -e "$PREVIOUS/manifest" ] && step "the deployment before P3.1 is kept in $PREVIOUS"
  for entry in "${DAEMONS[@]}"; do
    read -r name unit shipped port <<<"$entry"
    url="$("$PYTHON" "$HELPER" healthz-url "$ETC/$name.env" "$port")"
    enabled="$(systemctl is-enabled "$unit" 2>/dev/null || true)"
    active="$(systemctl is-active "$unit" 2>/dev/null || true)"
    step "$unit: ${enabled:-not installed}, ${active:-unknown}; $url: $(
      "$PYTHON" -c 'import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=3); print(r.status, r.read().decode())
except urllib.error.HTTPError as e: print(e.code, e.read().decode())
except OSError as e: print("no answer:", e)' "$url"
    )"
  done
}

# One install at a time.
if [ "$COMMAND" != status ] && [ "$DRY_RUN" -eq 0 ]; then
  mkdir -p /run/lock
  exec 9>/run/lock/p31-install.lock
  command -v flock >/dev/null && { flock -n 9 || fail "another install.sh is running" "wait for it to finish"; }
fi
"cmd_$COMMAND"
