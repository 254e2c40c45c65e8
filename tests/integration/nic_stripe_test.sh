#!/usr/bin/env bash
# Several NICs: kvsock over two veth pairs between two network namespaces,
# each pair rate-limited by tc (tbf, RATE each way). The same transfer (one
# channel of 2 comms, BYTES in one message) runs over one device, then striped
# over two (comm k on device k mod 2); two devices must deliver at least 1.8x
# the rate of one. Alternated ONE/TWO/ONE/TWO; the best of each is compared,
# so one descheduled run on a loaded machine does not decide.
#
# Needs root, `ip netns`, veth and tc's tbf (CI runs as root); otherwise it
# skips (exit 77) saying why. Removes its namespaces (trap); every wait has a
# deadline.
#
#   nic_stripe_test.sh <nic_stripe_peer binary> [bytes] [rate]
set -uo pipefail

PEER=${1:?usage: nic_stripe_test.sh <nic_stripe_peer> [bytes] [rate]}
BYTES=${2:-33554432}
RATE=${3:-200mbit}
SKIP=77
skip() { echo "SKIP: $*"; exit $SKIP; }

[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces (CI runs as root)"
command -v ip >/dev/null || skip "needs iproute2 (ip)"
command -v tc >/dev/null || skip "needs tc (iproute2)"

tag=$$
NS_A=kvf-nic-a-$tag
NS_B=kvf-nic-b-$tag
WORK=$(mktemp -d /tmp/kvferry-nic-test.XXXXXX)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for ns in "$NS_A" "$NS_B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_A" 2>"$WORK/err" || skip "cannot create a network namespace: $(cat "$WORK/err")"
ip netns add "$NS_B" 2>"$WORK/err" \
  || { echo "FAIL: created $NS_A but not a second namespace: $(cat "$WORK/err")"; exit 1; }
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up || exit 1; done

# Pair p (1, 2): nicpA<tag> in ns A at 10.232.p.1, nicpB<tag> in ns B at
# 10.232.p.2, each end shaped to RATE (data A->B, ACKs B->A).
for p in 1 2; do
  a=n${p}a$tag b=n${p}b$tag   # interface names are at most 15 characters
  ip link add "$a" type veth peer name "$b" 2>"$WORK/err" \
    || skip "cannot create a veth pair: $(cat "$WORK/err")"
  ip link set "$a" netns "$NS_A" && ip link set "$b" netns "$NS_B" || exit 1
  ip -n "$NS_A" addr add "10.232.$p.1/24" dev "$a" || exit 1
  ip -n "$NS_B" addr add "10.232.$p.2/24" dev "$b" || exit 1
  ip -n "$NS_A" link set "$a" up && ip -n "$NS_B" link set "$b" up || exit 1
  for end in "$NS_A $a" "$NS_B $b"; do
    set -- $end
    # burst above the largest (GSO) packet; latency bounds the queue.
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 256kb latency 50ms \
      2>"$WORK/err" || skip "tc cannot shape $2 with tbf: $(cat "$WORK/err")"
  done
done

# Each side's kvsock devices: device 0 on pair 1, device 1 on pair 2.
export KVSOCK_IFADDR_A=10.232.1.1,10.232.2.1
export KVSOCK_IFADDR_B=10.232.1.2,10.232.2.2

# One transfer over DEVICES; prints the receiver's MB/s.
run() {
  local devices=$1 n=$2
  local handles=$WORK/handles-$n
  ip netns exec "$NS_B" env KVSOCK_IFADDR=$KVSOCK_IFADDR_B \
    timeout 90 "$PEER" recv "$devices" 2 "$BYTES" "$handles" >"$WORK/recv-$n.out" 2>"$WORK/recv-$n.err" &
  local recv=$!
  pids+=($recv)
  ip netns exec "$NS_A" env KVSOCK_IFADDR=$KVSOCK_IFADDR_A \
    timeout 90 "$PEER" send "$devices" 2 "$BYTES" "$handles" >"$WORK/send-$n.out" 2>"$WORK/send-$n.err"
  local send_rc=$?
  wait "$recv"
  local recv_rc=$?
  if [ $send_rc -ne 0 ] || [ $recv_rc -ne 0 ]; then
    echo "FAIL: transfer over device(s) $devices (send $send_rc, recv $recv_rc)" >&2
    cat "$WORK"/send-$n.* "$WORK"/recv-$n.* >&2
    return 1
  fi
  cat "$WORK/recv-$n.out" >&2
  sed -n 's/.*: \([0-9.]*\) MB\/s/\1/p' "$WORK/recv-$n.out"
}

best_one=0 best_two=0
for round in 1 2; do
  one=$(run 0 one-$round) || exit 1
  two=$(run 0,1 two-$round) || exit 1
  echo "round $round: one device $one MB/s, two devices $two MB/s"
  best_one=$(awk -v a="$best_one" -v b="$one" 'BEGIN { print (b > a) ? b : a }')
  best_two=$(awk -v a="$best_two" -v b="$two" 'BEGIN { print (b > a) ? b : a }')
done
ratio=$(awk -v one="$best_one" -v two="$best_two" 'BEGIN { printf "%.2f", two / one }')
echo "best: one device $best_one MB/s, two devices $best_two MB/s: ${ratio}x (each link $RATE)"
awk -v r="$ratio" 'BEGIN { exit !(r >= 1.8) }' \
  || { echo "FAIL: two devices deliver ${ratio}x one device, want >= 1.8x"; exit 1; }
echo "PASS: two devices deliver ${ratio}x one device"
