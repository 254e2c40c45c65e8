#!/usr/bin/env bash
# `kvferry launch` and `kvferry status` as a user drives them: validation
# errors, --dry-run, supervision (a crashing worker is reported with its exit
# status and log tail, restarted with backoff, then fails for good), a clean
# stop on SIGTERM, SIGKILL after the grace period, host identification, and
# status against an unreachable and a live directory.
#
# The children are a stand-in script (KVFERRY_LAUNCH_EXE) so that the test
# controls how each one behaves; the directory is the real one where status
# needs it. Every wait has a deadline.
#
#   launch_test.sh <path to kvferry>
set -uo pipefail

KVFERRY=${1:?usage: launch_test.sh <kvferry binary>}
# launch creates the deployment's certificates in ./kvferry-pki (the default
# tls.dir) of $WORK; the real directory and status below find them there too.
source "$(dirname "$0")/lib.sh" kvferry-launch-test

# ---- the stand-in for `kvferry directory|worker` -----------------------------------
cat >"$WORK/fake-kvferry" <<EOF
#!/usr/bin/env bash
cmd=\$1
name=directory
args="\$*"
while [ \$# -gt 0 ]; do [ "\$1" = --name ] && name=\$2; shift; done
echo \$\$ > "$WORK/\$name.pid"
echo "\$name args: \$args"
echo "\$name env: secret=\${KVFERRY_SECRET:-unset} nccl_x=\${NCCL_X:-unset} metrics=\${KVFERRY_METRICS_PORT:-unset}"
if [ "\$cmd" = directory ] && [ -n "\${REAL_DIRECTORY:-}" ]; then
  exec "\$REAL_DIRECTORY" directory --bind 127.0.0.1 --port $PORT
fi
[ "\$cmd" = directory ] && echo "kvferry directory listening on 127.0.0.1:$PORT"
case \$name in
  crashy) echo "crashy: about to fail"; exit 3 ;;
  # Ignored, not trapped: its sleeps inherit that, so the group's TERM
  # cannot end one of them mid-fork and take the script down with it.
  stubborn) trap '' TERM ;;
  *) trap 'echo "\$name got TERM"; exit 0' TERM ;;
esac
echo "\$name ready"   # the trap is in place: TERM from now on is handled
for _ in \$(seq 600); do sleep 0.1; done
EOF
use_fake_kvferry

topology() {  # <file> <extra worker lines...>: a one-host file
  local file=$1; shift
  {
    echo "name: launch-test"
    echo "directory: {port: $PORT}"
    echo "workers:"
    echo "  - {name: p0, role: prefill, plugin_env: {NCCL_X: '1'}, metrics_port: $((PORT + 1))}"
    echo "  - {name: d0, role: decode}"
    for line in "$@"; do echo "  - $line"; done
    echo "control: {secret_env: TEST_SECRET}"
    echo "launch: {log_dir: $WORK/logs, max_restarts: 2, restart_backoff_ms: 50, stop_grace_ms: 500}"
  } >"$file"
}
export TEST_SECRET=hunter2

# ---- 1. an invalid file starts nothing ----------------------------------------------
printf 'workers:\n  - {name: p0, role: prefill, pluign: kvsock}\n  - {name: d0, role: decode}\n' \
  >"$WORK/bad.yaml"
timeout 20 "$KVFERRY" launch "$WORK/bad.yaml" >"$WORK/out" 2>"$WORK/err"
expect "invalid file exits 3" test $? -eq 3
expect "invalid file names the key, place and suggestion" \
  contains "$WORK/err" "unknown key 'pluign' at $WORK/bad.yaml:2:31; did you mean 'plugin'?"
expect "invalid file starts nothing" test ! -e "$WORK/logs"

# ---- 2. --dry-run prints the plan, with the secret by reference only ---------------
topology "$WORK/ok.yaml"
timeout 20 "$KVFERRY" launch "$WORK/ok.yaml" --dry-run >"$WORK/out" 2>"$WORK/err"
expect "dry run exits 0" test $? -eq 0
expect "dry run shows the worker command" contains "$WORK/out" "worker --name p0 --role prefill --directory 127.0.0.1:$PORT"
expect "dry run shows plugin_env" contains "$WORK/out" "NCCL_X=1"
expect "dry run names the secret's source" contains "$WORK/out" 'KVFERRY_SECRET=<from $TEST_SECRET>'
expect "dry run never prints the secret" bash -c "! grep -q hunter2 '$WORK/out' '$WORK/err'"
expect "dry run starts nothing" test ! -e "$WORK/logs"

# ---- 3. a worker that keeps crashing: reported, restarted, then fails for good -----
topology "$WORK/crash.yaml" "{name: crashy, role: decode}"
timeout 30 "$KVFERRY" launch "$WORK/crash.yaml" >"$WORK/out" 2>"$WORK/err"
rc=$?
expect "a worker failing for good exits 4 (got $rc)" test $rc -eq 4
expect "the exit status is reported" contains "$WORK/err" "crashy exited with status 3"
expect "the log tail is shown" contains "$WORK/err" "| crashy: about to fail"
expect "it is restarted with backoff" contains "$WORK/err" "restarting crashy in 100 ms (restart 2 of 2)"
expect "then fails for good" contains "$WORK/err" "crashy failed for good"
expect "three attempts in its log" test "$(grep -c 'starting crashy' "$WORK/logs/crashy.log")" -eq 3
expect "the others were stopped" bash -c "! kill -0 $(cat "$WORK/p0.pid") 2>/dev/null"
rm -rf "$WORK/logs"

# ---- 4. a healthy deployment stops cleanly on SIGTERM ------------------------------
topology "$WORK/ok.yaml"
"$KVFERRY" launch "$WORK/ok.yaml" >"$WORK/out" 2>"$WORK/err" &
launch_pid=$!
expect "all three processes start" wait_for 20 contains "$WORK/err" "started d0"
for name in directory p0 d0; do
  expect "$name is ready" wait_for 20 contains "$WORK/logs/$name.log" "$name ready"
done
expect "the worker got its environment" wait_for 10 contains "$WORK/logs/p0.log" \
  "p0 env: secret=hunter2 nccl_x=1 metrics=$((PORT + 1))"
expect "the secret is not on any command line" bash -c "! grep -q hunter2 /proc/$(cat "$WORK/p0.pid")/cmdline"
kill -TERM "$launch_pid"
timeout 20 tail --pid="$launch_pid" -f /dev/null
wait "$launch_pid"
rc=$?
launch_pid=""
expect "SIGTERM stops everything with status 0 (got $rc)" test $rc -eq 0
expect "workers got TERM" contains "$WORK/logs/d0.log" "d0 got TERM"
expect "the directory got TERM" contains "$WORK/logs/directory.log" "directory got TERM"
expect "no child is left" bash -c "! kill -0 $(cat "$WORK/p0.pid") 2>/dev/null && ! kill -0 $(cat "$WORK/directory.pid") 2>/dev/null"
rm -rf "$WORK/logs"

# ---- 4b. if launch itself is killed, its children do not run on unsupervised --------
"$KVFERRY" launch "$WORK/ok.yaml" >"$WORK/out" 2>"$WORK/err" &
launch_pid=$!
wait_for 20 contains "$WORK/err" "started d0"
wait_for 20 contains "$WORK/logs/d0.log" "d0 ready"
kill -KILL "$launch_pid"
wait "$launch_pid" 2>/dev/null
launch_pid=""
expect "children of a killed launch get TERM" wait_for 10 contains "$WORK/logs/d0.log" "d0 got TERM"
expect "and exit" wait_for 10 bash -c "! kill -0 $(cat "$WORK/p0.pid") 2>/dev/null && ! kill -0 $(cat "$WORK/directory.pid") 2>/dev/null"
rm -rf "$WORK/logs"

# ---- 5. a worker that ignores TERM is killed after the grace period ----------------
topology "$WORK/stubborn.yaml" "{name: stubborn, role: decode}"
"$KVFERRY" launch "$WORK/stubborn.yaml" >"$WORK/out" 2>"$WORK/err" &
launch_pid=$!
wait_for 20 contains "$WORK/err" "started stubborn"
expect "the stubborn worker is ready" wait_for 20 contains "$WORK/logs/stubborn.log" "stubborn ready"
kill -INT "$launch_pid"
timeout 20 tail --pid="$launch_pid" -f /dev/null
wait "$launch_pid"
rc=$?
launch_pid=""
expect "SIGINT with a stubborn worker still exits 0 (got $rc)" test $rc -eq 0
expect "the stubborn worker is killed after the grace period" \
  contains "$WORK/err" "stubborn (pid $(cat "$WORK/stubborn.pid")) did not stop within 500 ms; sending SIGKILL" \
  || { echo "---- launch stderr of this case"; cat "$WORK/err"; }
rm -rf "$WORK/logs"

# ---- 5b. a second signal stops at once: the stubborn worker is killed with it -----
topology "$WORK/stubborn.yaml" "{name: stubborn, role: decode}"
sed -i 's/stop_grace_ms: 500/stop_grace_ms: 60000/' "$WORK/stubborn.yaml"
"$KVFERRY" launch "$WORK/stubborn.yaml" >"$WORK/out" 2>"$WORK/err" &
launch_pid=$!
wait_for 20 contains "$WORK/err" "started stubborn"
expect "the stubborn worker is ready again" wait_for 20 contains "$WORK/logs/stubborn.log" "stubborn ready"
kill -INT "$launch_pid"
expect "the first signal starts a graceful stop" wait_for 10 contains "$WORK/err" "SIGINT received, stopping"
second=$(date +%s%N)
kill -INT "$launch_pid"
timeout 20 tail --pid="$launch_pid" -s 0.02 -f /dev/null
took_ms=$((($(date +%s%N) - second) / 1000000))
wait "$launch_pid"
rc=$?
launch_pid=""
expect "the second signal ends launch within 1 s, not after the 60 s grace (took $took_ms ms)" \
  test $took_ms -lt 1000
expect "by that signal (got $rc)" test $rc -eq $((128 + 2))
expect "and kills the stubborn worker with it" \
  wait_for 5 bash -c "! kill -0 $(cat "$WORK/stubborn.pid") 2>/dev/null"
rm -rf "$WORK/logs"

# ---- 6. which host am I -------------------------------------------------------------
cat >"$WORK/remote.yaml" <<EOF
hosts: [{name: far-a, address: 10.255.255.1}, {name: far-b, address: 10.255.255.2}]
control: {bind: host}
workers:
  - {name: p0, role: prefill, host: far-a}
  - {name: d0, role: decode, host: far-b}
EOF
timeout 20 "$KVFERRY" launch "$WORK/remote.yaml" >"$WORK/out" 2>"$WORK/err"
expect "a machine that is none of the hosts exits 6" test $? -eq 6
expect "and says to pass --host" contains "$WORK/err" "pass --host NAME"
timeout 20 "$KVFERRY" launch "$WORK/remote.yaml" --host far-b --dry-run >"$WORK/out" 2>"$WORK/err"
expect "--host picks that host's processes" contains "$WORK/out" "worker --name d0"
expect "--host far-b runs no directory" bash -c "! grep -q ' directory --bind' '$WORK/out'"

# ---- 7. status: unreachable directory, then a live one -----------------------------
topology "$WORK/ok.yaml"
timeout 30 "$KVFERRY" status "$WORK/ok.yaml" --timeout-ms 500 >"$WORK/out" 2>"$WORK/err"
rc=$?
expect "status against no directory fails (got $rc)" test $rc -eq 1
expect "status names the directory it could not reach" contains "$WORK/err" "127.0.0.1:$PORT"

export REAL_DIRECTORY="$KVFERRY"
"$KVFERRY" launch "$WORK/ok.yaml" >"$WORK/launch-out" 2>"$WORK/launch-err" &
launch_pid=$!
if wait_for 30 contains "$WORK/launch-err" "started d0"; then
  timeout 30 "$KVFERRY" status "$WORK/ok.yaml" --timeout-ms 5000 >"$WORK/out" 2>"$WORK/err"
  rc=$?
  expect "status with unregistered workers exits 4 (got $rc)" test $rc -eq 4
  expect "status prints the table" contains "$WORK/out" "NAME"
  expect "status shows the missing worker" bash -c "grep -E '^p0 +DOWN +prefill' '$WORK/out' >/dev/null"
else
  fail "the real directory did not start under launch: $(cat "$WORK/launch-err")"
fi
kill -TERM "$launch_pid"
timeout 20 tail --pid="$launch_pid" -f /dev/null
wait "$launch_pid"
launch_pid=""

if [ $failures -ne 0 ]; then
  echo "---- last launch stderr"; cat "$WORK/err"
  echo "$failures check(s) failed"
  exit 1
fi
echo "all launch checks passed"
