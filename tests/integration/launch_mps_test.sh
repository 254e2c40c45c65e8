#!/usr/bin/env bash
# `kvferry launch` with two workers of this host on one GPU: it starts a
# private MPS daemon before them, gives them its variables, and stops it
# after them when launch stops; `--mps off` and workers on different GPUs
# start none. The daemon's control program and the children are stand-ins
# (a fake nvidia-cuda-mps-control first on PATH, KVFERRY_LAUNCH_EXE), as in
# test_mps_daemon and test_launch: no GPU or MPS needed. Every wait has a
# deadline.
#
#   launch_mps_test.sh <path to kvferry>
set -uo pipefail

KVFERRY=${1:?usage: launch_mps_test.sh <kvferry binary>}
source "$(dirname "$0")/lib.sh" kvferry-launch-mps-test

# The MPS control program: records each call; `-d` makes the pipe the real
# daemon would.
mkdir -p "$WORK/bin" "$WORK/tmp"
cat >"$WORK/bin/nvidia-cuda-mps-control" <<EOF
#!/bin/sh
{ echo "argv: \$* pipe: \$CUDA_MPS_PIPE_DIRECTORY stdin: \$(cat)"; } >>"$WORK/record"
[ "\$1" = -d ] && : >"\$CUDA_MPS_PIPE_DIRECTORY/control"
exit 0
EOF
chmod +x "$WORK/bin/nvidia-cuda-mps-control"
export PATH="$WORK/bin:$PATH" TMPDIR="$WORK/tmp"
unset CUDA_MPS_PIPE_DIRECTORY

# The stand-in for `kvferry directory|worker`: says which MPS pipe it got.
cat >"$WORK/fake-kvferry" <<EOF
#!/usr/bin/env bash
cmd=\$1
name=directory
while [ \$# -gt 0 ]; do [ "\$1" = --name ] && name=\$2; shift; done
echo \$\$ > "$WORK/\$name.pid"
echo "\$name mps pipe: \${CUDA_MPS_PIPE_DIRECTORY:-unset}"
[ "\$cmd" = directory ] && echo "kvferry directory listening on 127.0.0.1:$PORT"
trap 'echo "\$name got TERM"; [ -e "$WORK/slow-stop" ] && sleep 3; echo "\$name stopped" >>"$WORK/record"; exit 0' TERM
echo "\$name ready"
for _ in \$(seq 600); do sleep 0.1; done
EOF
use_fake_kvferry
export TEST_SECRET=hunter2

topology() {  # <file> <gpu of p0> <gpu of d0>
  cat >"$1" <<EOF
name: launch-mps-test
directory: {port: $PORT}
workers:
  - {name: p0, role: prefill, gpu: $2}
  - {name: d0, role: decode, gpu: $3}
control: {secret_env: TEST_SECRET}
launch: {log_dir: $WORK/logs, stop_grace_ms: 500}
EOF
}

# Starts launch with the given arguments and waits for both workers; its
# stderr in $WORK/err.
start_launch() {
  rm -rf "$WORK/logs" "$WORK/record"
  "$KVFERRY" launch "$@" >"$WORK/out" 2>"$WORK/err" &
  launch_pid=$!
  wait_for 20 contains "$WORK/err" "started d0" || fail "launch $* started d0"
  for name in p0 d0; do
    wait_for 20 contains "$WORK/logs/$name.log" "$name ready" || fail "$name ready"
  done
}

# Waits for launch to end (after the signals the caller sent); its exit
# status in $rc.
await_launch() {
  timeout 20 tail --pid="$launch_pid" -f /dev/null
  wait "$launch_pid"
  rc=$?
  launch_pid=""
}

# start_launch, then stop it with SIGTERM (await_launch).
run_launch() {
  start_launch "$@"
  kill -TERM "$launch_pid"
  await_launch
}

# ---- 1. two workers on GPU 0: a private daemon, started first, stopped last ----
topology "$WORK/shared.yaml" 0 0
timeout 20 "$KVFERRY" launch "$WORK/shared.yaml" --dry-run >"$WORK/out" 2>"$WORK/err"
expect "sharing a GPU is valid, with a warning" contains "$WORK/err" \
  "workers 'p0' and 'd0' share GPU 0 of host 'local': kvferry launch runs them under a private MPS daemon"
run_launch "$WORK/shared.yaml"
expect "launch exits 0 (got $rc)" test "$rc" -eq 0
expect "launch says it started a daemon for GPU 0" contains "$WORK/err" \
  "started a private MPS daemon for GPU 0 (pipe directory $WORK/tmp/kvferry-mps-"
pipe=$(sed -n "s/^p0 mps pipe: //p" "$WORK/logs/p0.log" | head -1)
expect "p0 got the daemon's pipe directory ($pipe)" test "${pipe#"$WORK"/tmp/kvferry-mps-}" != "$pipe"
expect "d0 got the same one" contains "$WORK/logs/d0.log" "d0 mps pipe: $pipe"
expect "the directory is no MPS client" contains "$WORK/logs/directory.log" "directory mps pipe: unset"
expect "the daemon was started with -d in that directory" contains "$WORK/record" "argv: -d pipe: $pipe stdin:"
expect "and told to quit, in the same directory" contains "$WORK/record" "argv:  pipe: $pipe stdin: quit"
expect "started before the workers and stopped after them" awk \
  '/argv: -d/ { d = NR } /^p0 stopped/ { p = NR } /^d0 stopped/ { c = NR } /stdin: quit/ { q = NR }
   END { exit !(d && p && c && q && d < p && d < c && p < q && c < q) }' "$WORK/record"
expect "its directories are removed" test ! -e "$pipe"
expect "nothing left in TMPDIR" bash -c "[ -z \"\$(ls -A '$WORK/tmp')\" ]"

# ---- 2. --mps off: no daemon, and launch says the kernels will time-slice --------
run_launch "$WORK/shared.yaml" --mps off
expect "--mps off exits 0 (got $rc)" test "$rc" -eq 0
expect "--mps off starts no daemon" bash -c "! grep -q argv '$WORK/record'"
expect "--mps off says the kernels will time-slice" contains "$WORK/err" "time-slice"
expect "the workers get no MPS variables" contains "$WORK/logs/p0.log" "p0 mps pipe: unset"

# ---- 3. workers on different GPUs: nothing to share, no daemon -------------------
topology "$WORK/apart.yaml" 0 1
run_launch "$WORK/apart.yaml"
expect "different GPUs exit 0 (got $rc)" test "$rc" -eq 0
expect "different GPUs start no daemon" bash -c "! grep -q argv '$WORK/record'"
expect "and say nothing of MPS" bash -c "! grep -q MPS '$WORK/err'"

# ---- 4. a bad --mps value starts nothing ------------------------------------------
rm -rf "$WORK/logs"
timeout 20 "$KVFERRY" launch "$WORK/shared.yaml" --mps sometimes >"$WORK/out" 2>"$WORK/err"
expect "--mps sometimes exits 1" test $? -eq 1
expect "and names the value" contains "$WORK/err" "--mps 'sometimes': expected auto, on or off"
expect "and starts no worker" test ! -e "$WORK/logs/p0.log"

# ---- 5. a second stop signal: launch dies at once, but still quits the daemon --
start_launch "$WORK/shared.yaml"
pipe=$(sed -n "s/^p0 mps pipe: //p" "$WORK/logs/p0.log" | head -1)
touch "$WORK/slow-stop" # the workers take 3 s to stop: launch is still waiting
kill -TERM "$launch_pid"
sleep 0.2 # two signals sent at once may arrive as one
kill -TERM "$launch_pid"
await_launch
expect "launch dies of the second SIGTERM (got $rc)" test "$rc" -eq 143
expect "the daemon is still told to quit, in its directory" \
  wait_for 10 contains "$WORK/record" "argv:  pipe: $pipe stdin: quit"
expect "and its directories go too, as after a clean stop" \
  wait_for 10 bash -c "[ -z \"\$(ls -A '$WORK/tmp')\" ]"
rm -rf "$WORK/tmp/"* "$WORK/slow-stop"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
