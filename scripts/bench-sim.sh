#!/usr/bin/env bash
# Simulator throughput (issue #17: >= 100,000 simulated requests per second
# of wall time; the 3,993-request sample well under a second; 1,000,000
# requests within 20 s with flat memory). Not a test: a benchmark, recorded
# in docs/benchmarks.md by hand.
#
#   scripts/bench-sim.sh [build/bin/kvferry] [requests ...]
#
# For each count N (default 100000 1000000) it writes a synthetic Mooncake
# trace of N requests (awk, fixed seed: one every 30 ms, prompts 128-4,223
# tokens, 1-4 hash ids from a pool of 2,000 so prefixes repeat), then runs
#   kvferry sim --trace T --topology configs/sim-4p4d.yaml --out DIR
# under /usr/bin/time and prints wall seconds, requests per second and peak
# RSS; then the same for the sample trace in ../shared/traces if present;
# then the scale case: a 1,000-worker topology written here (125 hosts of 8
# GPUs, 4 x 200 Gbit/s each; 512 prefill GPUs on the first 64 hosts, 488
# decode GPUs on the rest; least-loaded; layer-wise) under 100,000 requests
# at one per 0.25 ms (about 400 transfers in flight). Last, the model and
# the actors engine side by side at 8 and 100 workers, and with
# ACTORS_FLAT=N the actors engine's memory at N requests (below).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
kvferry=${1:-$repo/build/bin/kvferry}
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(100000 1000000)
topology=$repo/configs/sim-4p4d.yaml
work=$(mktemp -d /tmp/bench-sim-XXXXXX)
trap 'rm -rf "$work"' EXIT

measure() { # trace label requests [topology [engine]]
  local start end wall rss
  start=$(date +%s.%N)
  # PATH without gnuplot: the plots are skipped, so that the figures are
  # the simulator's alone (time counts a process's children too).
  /usr/bin/time -f '%M %U %S' -o "$work/rss" \
    env PATH=/nonexistent "$kvferry" sim --engine "${5:-model}" --trace "$1" --topology "${4:-$topology}" --out "$work/out" >/dev/null
  end=$(date +%s.%N)
  wall=$(echo "$end - $start" | bc -l)
  read -r rss user sys <"$work/rss"
  cpu=$(echo "$user + $sys" | bc -l)
  printf '%-28s %9d requests  wall %7.3f s  %9.0f requests/s  (CPU %6.2f s: %9.0f requests/CPU-s)  peak RSS %6.1f MiB\n' \
    "$2" "$3" "$wall" "$(echo "$3 / $wall" | bc -l)" "$cpu" "$(echo "$3 / ($cpu + 0.005)" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared with other work: wall time includes waiting for a core)"

synthetic() { # requests interval_ms
  awk -v n="$1" -v every="$2" 'BEGIN {
    srand(17);
    for (i = 0; i < n; i++) {
      input = 128 + int(rand() * 4096); output = 1 + int(rand() * 400);
      ids = ""; k = 1 + int(rand() * 4);
      for (j = 0; j < k; j++) ids = ids (j ? ", " : "") int(rand() * 2000);
      printf "{\"timestamp\": %.2f, \"input_length\": %d, \"output_length\": %d, \"hash_ids\": [%s]}\n", i * every, input, output, ids;
    } }' >"$work/trace.jsonl"
}

for n in "${counts[@]}"; do
  synthetic "$n" 30
  measure "$work/trace.jsonl" "synthetic (awk, seed 17)" "$n"
done
sample=$repo/../shared/traces/mooncake_synthetic_trace.jsonl
[ -f "$sample" ] && measure "$sample" "mooncake_synthetic_trace" 3993
sample=$repo/../shared/traces/AzureLLMInferenceTrace_code.csv
[ -f "$sample" ] && measure "$sample" "AzureLLMInferenceTrace_code" 8819

# A topology of WORKERS GPUs, PER_HOST to a host with NICS NICs of 200
# Gbit/s each, the first PREFILL of them prefill GPUs (least-loaded,
# layer-wise).
write_topology() { # file workers per_host prefill nics
  awk -v name="$(basename "$1" .yaml)" -v n="$2" -v per="$3" -v p="$4" -v nics="$5" 'BEGIN {
    printf "name: %s\nhosts:\n", name;
    for (h = 0; h < n / per; h++) printf "  - {name: h%d, address: 10.1.%d.%d}\n", h, int(h / 200), h % 200 + 1;
    print "directory: {host: h0}\nworkers:";
    for (w = 0; w < n; w++)
      printf "  - {name: %s-%d, role: %s, host: h%d, gpu: %d, pool_blocks: %d}\n",
        w < p ? "prefill" : "decode", w, w < p ? "prefill" : "decode", int(w / per), w % per,
        w < p ? 100000 : 700000;
    print "transfer: {layerwise: true}\ncontrol: {bind: host}";
    printf "sim: {nic_gbit_per_s: 200, nics_per_host: %d, routing: least-loaded}\n", nics;
  }' >"$1"
}
write_topology "$work/sim-1000.yaml" 1000 8 512 4
synthetic 100000 0.25
measure "$work/trace.jsonl" "1,000 workers, 1 per 0.25 ms" 100000 "$work/sim-1000.yaml"

# The two engines in the same run (docs/sim.md, "The actors engine"): the
# model engine and `--engine actors` (the real actors under CAF's test
# coordinator) on ACTORS_REQUESTS (default 10,000) synthetic requests, at 8
# workers (configs/sim-4p4d.yaml) and at 100 (written here: 25 hosts of 4
# GPUs, 2 x 200 Gbit/s each; 52 prefill GPUs on 13 hosts, 48 decode on 12;
# least-loaded, layer-wise; one request per 2 ms).
actors_requests=${ACTORS_REQUESTS:-10000}
write_topology "$work/sim-100.yaml" 100 4 52 2
for engine in model actors; do
  synthetic "$actors_requests" 30
  measure "$work/trace.jsonl" "8 workers, $engine engine" "$actors_requests" "$topology" "$engine"
  synthetic "$actors_requests" 2
  measure "$work/trace.jsonl" "100 workers, $engine engine" "$actors_requests" "$work/sim-100.yaml" "$engine"
done
# ACTORS_FLAT=N (e.g. 100000): the actors engine on N requests at 8
# workers too, to compare its peak RSS with the run above (the trace is
# streamed: memory should not grow with N; ~35 s of CPU per 100,000).
if [ -n "${ACTORS_FLAT:-}" ]; then
  synthetic "$ACTORS_FLAT" 30
  measure "$work/trace.jsonl" "8 workers, actors engine" "$ACTORS_FLAT" "$topology" actors
fi
exit 0
