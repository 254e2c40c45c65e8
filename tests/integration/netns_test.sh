#!/usr/bin/env bash
# Two "hosts" on one machine: two network namespaces joined by a veth pair.
# Host ns-a runs `kvferry launch` with the directory and a prefill worker,
# host ns-b runs `kvferry launch` with a decode worker, both from the same
# topology file; `kvferry status` waits until both workers are registered,
# then `kvferry demo --directory` drives requests whose KV cache crosses the
# veth and is verified byte for byte. Both launches must then stop cleanly.
#
# Needs root and `ip netns` (CI runs as root); otherwise it skips (exit 77)
# saying why. It always removes its namespaces (trap), and every wait has a
# deadline.
#
#   netns_test.sh <path to kvferry> [requests]
set -uo pipefail

KVFERRY=${1:?usage: netns_test.sh <kvferry binary> [requests]}
REQUESTS=${2:-100}
SKIP=77
skip() { echo "SKIP: $*"; exit $SKIP; }

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces (CI runs as root)"
command -v ip >/dev/null || skip "needs iproute2 (ip)"

tag=$$
NS_A=kvf-a-$tag
NS_B=kvf-b-$tag
VETH_A=kvfa$tag   # interface names are at most 15 characters
VETH_B=kvfb$tag
ADDR_A=10.213.0.1
ADDR_B=10.213.0.2
WORK=$(mktemp -d /tmp/kvferry-netns-test.XXXXXX)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  # Anything still running inside our namespaces (children of the launches).
  for ns in "$NS_A" "$NS_B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  ip link del "$VETH_A" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! ip netns add "$NS_A" 2>"$WORK/err"; then
  skip "cannot create a network namespace: $(cat "$WORK/err")"
fi
ip netns add "$NS_B" || skip "cannot create a second network namespace"
ip link add "$VETH_A" type veth peer name "$VETH_B" || skip "cannot create a veth pair"
ip link set "$VETH_A" netns "$NS_A" && ip link set "$VETH_B" netns "$NS_B" || exit 1
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A" && ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B" || exit 1
for ns in "$NS_A" "$NS_B"; do
  ip -n "$ns" link set lo up || exit 1
done
ip -n "$NS_A" link set "$VETH_A" up && ip -n "$NS_B" link set "$VETH_B" up || exit 1
ip netns exec "$NS_A" ping -c 1 -W 2 "$ADDR_B" >/dev/null 2>&1 \
  || echo "note: ping across the veth failed (no ping?); going on"

# A small model keeps the test fast; the path is the same as for a big one.
cat >"$WORK/topology.yaml" <<EOF
name: netns-test
hosts:
  - {name: ns-a, address: $ADDR_A}
  - {name: ns-b, address: $ADDR_B}
directory: {host: ns-a, port: 7470}
workers:
  - {name: prefill-0, role: prefill, host: ns-a, pool_blocks: 512, restart: never}
  - {name: decode-0, role: decode, host: ns-b, pool_blocks: 512, restart: never}
model: {layers: 4, kv_heads: 2, head_dim: 64, dtype: fp16, block_tokens: 16}
transfer: {mode: push, chunk_bytes: 1048576, comms_per_peer: 2, timeout_ms: 10000}
control: {bind: host, secret_env: KVFERRY_SECRET}
launch: {log_dir: $WORK/logs, stop_grace_ms: 3000}
EOF
export KVFERRY_SECRET="netns-test-$tag-$RANDOM"

ip netns exec "$NS_A" "$KVFERRY" launch "$WORK/topology.yaml" --host ns-a \
  >"$WORK/launch-a.out" 2>"$WORK/launch-a.err" &
pids+=($!)
# No --host here: launch must recognise ns-b by its address.
ip netns exec "$NS_B" "$KVFERRY" launch "$WORK/topology.yaml" \
  >"$WORK/launch-b.out" 2>"$WORK/launch-b.err" &
pids+=($!)

show_logs() {
  for f in "$WORK"/launch-*.err "$WORK"/logs/*.log; do
    [ -f "$f" ] && { echo "---- $f"; tail -n 30 "$f"; }
  done
}
die() { echo "FAIL: $*"; show_logs; exit 1; }

# Both workers registered, asked from the decode side: the control plane
# crosses the veth too.
deadline=$((SECONDS + 60))
until ip netns exec "$NS_B" "$KVFERRY" status "$WORK/topology.yaml" --timeout-ms 2000 \
        >"$WORK/status.out" 2>"$WORK/status.err"; do
  [ $SECONDS -ge $deadline ] && { cat "$WORK/status.out" "$WORK/status.err"; die "workers did not both register within 60 s"; }
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a launch exited early"; done
  sleep 0.5
done
cat "$WORK/status.out"

ip netns exec "$NS_A" timeout 120 "$KVFERRY" demo --directory "$ADDR_A:7470" \
  --requests "$REQUESTS" --layers 4 --kv-heads 2 --head-dim 64 --dtype fp16 --block-tokens 16 \
  --deadline-s 100 --quiet >"$WORK/demo.out" 2>&1
rc=$?
cat "$WORK/demo.out"
[ $rc -eq 0 ] || die "kvferry demo across the namespaces failed (status $rc)"

grep -q "on host 'ns-b'" "$WORK/launch-b.err" || die "launch in ns-b did not identify its host"

# Both launches stop cleanly on SIGTERM.
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do
  timeout 30 tail --pid="$pid" -f /dev/null
  wait "$pid"
  rc=$?
  [ $rc -eq 0 ] || die "a launch did not stop cleanly (status $rc)"
done
pids=()
echo "PASS: $REQUESTS verified requests from ns-a to ns-b; both launches stopped cleanly"
