# Shared set-up of the shell tests that drive `kvferry launch` (sourced:
# `source "$(dirname "$0")/lib.sh" <scratch name>`): a scratch directory
# $WORK that is also the working directory, a random $PORT, a cleanup on
# exit of whatever the test started (launch in $launch_pid, stand-ins by
# their $WORK/*.pid files), and the checks. Every wait has a deadline.

WORK=$(mktemp -d "/tmp/${1:?usage: source lib.sh <scratch name>}.XXXXXX")
cd "$WORK" || exit 1
# Below the kernel's ephemeral range (32768 and up by default): a port there
# can be taken by any outgoing connection of a test running beside this one
# (CI runs them in parallel), as 38054 once was under the directory.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT=$((20000 + RANDOM % (ephemeral_low - 20000 - 2)))
launch_pid=""
cleanup() {
  [ -n "$launch_pid" ] && kill -KILL "$launch_pid" 2>/dev/null
  # Stand-ins left behind by a failed test run: only ours, by their marker.
  for pidfile in "$WORK"/*.pid; do
    [ -f "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

failures=0
pass() { echo "ok   - $1"; }
fail() { echo "FAIL - $1"; failures=$((failures + 1)); }
expect() {  # <description> <command...>: passes when the command succeeds
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; return 1; fi
}
contains() { grep -qF -- "$2" "$1"; }
wait_for() {  # <seconds> <command...>: polls until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.1
  done
}

# Launch runs $WORK/fake-kvferry (the test's stand-in, written just before)
# instead of kvferry, and finds a (dummy) kvsock plugin in $WORK/plugins.
use_fake_kvferry() {
  chmod +x "$WORK/fake-kvferry"
  export KVFERRY_LAUNCH_EXE="$WORK/fake-kvferry"
  mkdir -p "$WORK/plugins"
  touch "$WORK/plugins/libnccl-net-kvsock.so"
  export KVFERRY_PLUGIN_PATH="$WORK/plugins"
}
