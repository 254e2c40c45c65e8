#!/bin/bash
# Directory round trip through the middleman (kvferry directory --probe):
# scheduler policy (server = client) x middleman io-workers.
# Usage: KVFERRY=<build>/bin/kvferry tests/integration/directory_rtt_bench.sh [taskset-cpus]
# A benchmark, not a ctest test (results in docs/benchmarks.md).
B=$(realpath "${KVFERRY:-build/bin/kvferry}")
cd "$(mktemp -d)"
# Mutual TLS as deployed: both sides find ./kvferry-pki (docs/security.md).
$B pki init kvferry-pki directory client >/dev/null
nproc; uptime
run_matrix() {  # <taskset cpus or empty>
  local ts=$1 pre=""
  [ -n "$ts" ] && pre="taskset -c $ts"
  for cfg in "stealing -1" "sharing -1" "stealing 0" "sharing 0"; do
    set -- $cfg
    $pre $B directory --port 0 --bind 127.0.0.1 --scheduler $1 --io-workers $2 --log-level warn > dir.out 2>&1 &
    pid=$!
    sleep 1
    P=$(sed -n 's/.*:\([0-9]*\)$/\1/p' dir.out)
    for round in 1 2; do
      echo -n "cpus=${ts:-all} scheduler=$1 io-workers=$2: "
      /usr/bin/time -f "client_peak_rss=%MkB" $pre $B directory --probe 127.0.0.1:$P --count 5000 --scheduler $1 --io-workers $2 --log-level warn 2>&1 | tr '\n' ' '
      echo
    done
    kill $pid; wait $pid
  done
}
run_matrix "${1:-}"
