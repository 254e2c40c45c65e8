#!/usr/bin/env bash
# The README's own flow, unchanged: `kvferry launch configs/1p1d-local.yaml`,
# then `kvferry demo --directory 127.0.0.1:7470 --requests 100`, which must
# verify 100 of 100 requests (issue #13: it failed around request 37 with
# "block pool exhausted" before the consumer held requests back). Both
# workers' pools (4096 blocks) are smaller than two of the largest requests
# plus the decode worker's loan, so back-pressure is what this exercises.
#
# As root it runs in a private network namespace (unshare --net), so the
# topology's fixed port 7470 cannot clash with another test or deployment;
# otherwise it uses the machine's loopback and skips (77) when 7470 is taken.
# Every wait has a deadline; the launch is always stopped.
#
#   readme_flow_test.sh <path to kvferry> <configs/1p1d-local.yaml> [requests]
set -uo pipefail

KVFERRY=${1:?usage: readme_flow_test.sh <kvferry> <topology> [requests]}
TOPOLOGY=${2:?usage: readme_flow_test.sh <kvferry> <topology> [requests]}
REQUESTS=${3:-100}
SKIP=77

if [ -z "${KVF_README_NS:-}" ] && [ "$(id -u)" -eq 0 ] &&
   unshare --net true 2>/dev/null; then
  exec unshare --net env KVF_README_NS=1 bash "$0" "$@"
fi
if [ -n "${KVF_README_NS:-}" ]; then
  ip link set lo up || { echo "FAIL: cannot bring up loopback in the namespace"; exit 1; }
elif (exec 3<>/dev/tcp/127.0.0.1/7470) 2>/dev/null; then
  echo "SKIP: port 7470 is taken on this machine (not root: no private namespace)"
  exit $SKIP
fi

WORK=$(mktemp -d /tmp/kvferry-readme-flow.XXXXXX)
launch_pid=""
cleanup() {
  if [ -n "$launch_pid" ]; then
    kill -TERM "$launch_pid" 2>/dev/null
    timeout 20 tail --pid="$launch_pid" -f /dev/null
    kill -KILL "$launch_pid" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
die() {
  echo "FAIL: $*"
  for f in "$WORK"/launch.err "$WORK"/kvferry-logs/*.log; do
    [ -f "$f" ] && { echo "---- $f"; tail -n 30 "$f"; }
  done
  exit 1
}

cd "$WORK" || exit 1 # the topology's log_dir is relative
"$KVFERRY" launch "$TOPOLOGY" >launch.out 2>launch.err &
launch_pid=$!

deadline=$((SECONDS + 60))
until "$KVFERRY" status "$TOPOLOGY" --timeout-ms 2000 >status.out 2>&1; do
  [ $SECONDS -ge $deadline ] && { cat status.out; die "the workers did not both register within 60 s"; }
  kill -0 "$launch_pid" 2>/dev/null || die "kvferry launch exited early"
  sleep 0.5
done

timeout 400 "$KVFERRY" demo --directory 127.0.0.1:7470 --requests "$REQUESTS" \
  --quiet >demo.out 2>&1
rc=$?
cat demo.out
[ $rc -eq 0 ] || die "kvferry demo --directory failed (status $rc)"
grep -q "OK, every byte of $REQUESTS requests verified" demo.out ||
  die "the demo did not verify $REQUESTS of $REQUESTS requests"
# Nothing leaked: after the run, every block of the decode pool is free or
# lent, and no request is left open.
grep -Eq "pool ([0-9]+) free \+ ([0-9]+) lent of ([0-9]+) blocks, 0 requests open" demo.out ||
  die "the decode worker's pool is not whole after the run"
read -r free lent total < <(sed -nE 's/.*pool ([0-9]+) free \+ ([0-9]+) lent of ([0-9]+) blocks.*/\1 \2 \3/p' demo.out)
[ $((free + lent)) -eq "$total" ] || die "pool: $free free + $lent lent != $total blocks"
echo "ok - README flow: $REQUESTS/$REQUESTS requests verified"
