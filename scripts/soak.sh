#!/usr/bin/env bash
# Soak: traffic under `kvferry launch` while random workers and the directory
# are killed (SIGKILL) and stopped (SIGSTOP ... SIGCONT). Not part of CI.
#
#   scripts/soak.sh [--minutes N] [--kvferry PATH] [--seed S] [--keep]
#
# A local topology (2 prefill + 2 decode workers on loopback, leases of 3 s)
# runs under launch; `kvferry demo --directory` runs in a loop, each run
# bounded by `timeout`; a fault every 4-8 s. At the end, faults stop, one
# last fault is made and the script measures how long traffic takes to
# verify again. It reports:
#   - requests verified / failed, each failure's reason counted (the
#     kvferry error code the demo names, e.g. kvferry.peer_down);
#   - demo runs that could not start, by reason, and any hang (a run the
#     timeout had to kill);
#   - the decode workers' KV block pools once traffic stopped
#     (`kvferry status --pools`): blocks neither free nor lent have leaked;
#   - the recovery time after the last fault (must be <= 5 s): until every
#     worker is registered again (kvferry status), and until a demo run
#     verified again.
# Exit 0 when nothing hung, no block leaked, every failure was named and
# recovery took <= 5 s; 1 otherwise. Logs stay in the work folder with --keep.
set -uo pipefail

minutes=10
kvferry=""
seed=$RANDOM
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --kvferry) kvferry=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
kvferry=${kvferry:-$root/build/bin/kvferry}
[ -x "$kvferry" ] || { echo "soak.sh: no kvferry at $kvferry (build first)" >&2; exit 2; }
export KVFERRY_PLUGIN_PATH=${KVFERRY_PLUGIN_PATH:-$(dirname "$kvferry")/../lib}
RANDOM=$seed

work=$(mktemp -d /tmp/kvferry-soak.XXXXXX)
port=$((20000 + RANDOM % 20000))
address=127.0.0.1:$port
topology=$work/topology.yaml
launch_pid=""
traffic_pid=""
stopped=""  # a pid we SIGSTOPped and not yet resumed

cleanup() {
  [ -n "$stopped" ] && kill -CONT "$stopped" 2>/dev/null
  [ -n "$traffic_pid" ] && kill "$traffic_pid" 2>/dev/null
  if [ -n "$launch_pid" ]; then
    kill -TERM "$launch_pid" 2>/dev/null
    timeout 20 tail --pid="$launch_pid" -f /dev/null 2>/dev/null
    kill -KILL "$launch_pid" 2>/dev/null
  fi
  if [ $keep -eq 1 ]; then echo "soak: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$topology" <<EOF
name: soak
directory: {port: $port}
model: {layers: 4}
workers:
  - {name: prefill-0, role: prefill, pool_blocks: 2048}
  - {name: prefill-1, role: prefill, pool_blocks: 2048}
  - {name: decode-0, role: decode, pool_blocks: 2048}
  - {name: decode-1, role: decode, pool_blocks: 2048}
launch: {log_dir: $work/logs, max_restarts: 10, restart_backoff_ms: 200}
EOF

say() { echo "soak $(date -u +%H:%M:%S): $*"; }
now_ms() { date +%s%3N; }
all_up() { timeout 20 "$kvferry" status "$topology" --timeout-ms 1000 >/dev/null 2>&1; }
wait_all_up() {  # <seconds>
  local deadline=$((SECONDS + $1))
  until all_up; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.2; done
}
# The pid launch last started NAME with.
pid_of() { grep -o "started $1 (pid [0-9]*)" "$work/launch.err" | tail -1 | grep -o '[0-9]*)$' | tr -d ')'; }

# One demo run, bounded; appends "rc verified failed start_ms end_ms" to
# runs.txt and each failure's reason to reasons.txt.
demo_run() {  # <requests> <tag>
  local out=$work/demo-$2.out start end rc
  start=$(now_ms)
  timeout -k 5 60 "$kvferry" demo --directory "$address" --requests "$1" \
    --inflight 4 --max-tokens 512 --timeout-ms 5000 --quiet >"$out" 2>&1
  rc=$?
  end=$(now_ms)
  local verified=0 failed=0
  if [ $rc -eq 0 ] && grep -q "requests verified" "$out"; then
    verified=$(grep -o 'every byte of [0-9]* requests verified' "$out" | grep -o '[0-9]*')
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    if grep -q "FAILED:\|OK, every byte" "$out"; then
      echo "hang at exit (demo printed its result, then killed by timeout after 60 s)" >>"$work/reasons.txt"
    else
      echo "hang (demo killed by timeout after 60 s)" >>"$work/reasons.txt"
    fi
  else
    local line
    line=$(grep -o 'FAILED: [0-9]* of [0-9]* requests failed' "$out" | head -1)
    if [ -n "$line" ]; then
      failed=$(echo "$line" | awk '{print $2}')
      verified=$(( $(echo "$line" | awk '{print $4}') - failed ))
      # The demo lists its first errors: count each by its error code; the
      # failures it does not list are counted as such.
      local listed n
      listed=$(sed -n '/first errors:/,$p' "$out" | sed 1d | grep '^  ' | head -n "$failed" |
        awk '{ if (match($0, /(kvferry|caf|system)\.[a-z_]+|request_timeout/))
                 print substr($0, RSTART, RLENGTH)
               else print "unnamed: " substr($0, 1, 80) }')
      [ -n "$listed" ] && echo "$listed" >>"$work/reasons.txt"
      n=$(printf '%s\n' "$listed" | grep -c .)
      # Named by the demo too, but it lists only its first few errors.
      for _ in $(seq $((failed - n))); do echo "(beyond the demo's first listed errors)" >>"$work/reasons.txt"; done
    else
      # The run did not get to requests: name why from its last line.
      echo "run could not start: $(grep -v '^\s*$' "$out" | tail -1 | cut -c1-120)" >>"$work/starts.txt"
    fi
  fi
  echo "$rc $verified $failed $start $end" >>"$work/runs.txt"
  [ $rc -eq 0 ]
}

traffic() {
  local k=0
  while [ ! -e "$work/stop-traffic" ]; do
    demo_run 50 "t$k"
    k=$((k + 1))
  done
}

# One random fault; prints what it did; sets fault_end_ms when it is over.
fault() {
  local names=(directory prefill-0 prefill-1 decode-0 decode-1)
  local name=${names[$((RANDOM % ${#names[@]}))]}
  local pid; pid=$(pid_of "$name")
  [ -z "$pid" ] && { say "no pid for $name"; return; }
  if [ $((RANDOM % 2)) -eq 0 ]; then
    kill -KILL "$pid" 2>/dev/null
    say "SIGKILL $name (pid $pid)"
    echo "kill $name" >>"$work/faults.txt"
  else
    local ms=$((1000 + RANDOM % 11000))  # 1-12 s: past the 3 s lease often
    kill -STOP "$pid" 2>/dev/null
    stopped=$pid
    say "SIGSTOP $name (pid $pid) for $ms ms"
    sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    kill -CONT "$pid" 2>/dev/null
    stopped=""
    echo "stop $name" >>"$work/faults.txt"
  fi
  fault_end_ms=$(now_ms)
}

# ---- start ----------------------------------------------------------------
say "kvferry $kvferry, seed $seed, $minutes minute(s), work folder $work"
# The machine may be shared: its load belongs next to the figures.
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
KVFERRY_LEASE_MS=3000 "$kvferry" launch "$topology" >"$work/launch.out" 2>"$work/launch.err" &
launch_pid=$!
if ! wait_all_up 60; then
  say "the deployment did not come up"; cat "$work/launch.err"; exit 1
fi
say "deployment up at $address"
touch "$work/runs.txt" "$work/reasons.txt" "$work/starts.txt" "$work/faults.txt"

traffic &
traffic_pid=$!
end=$((SECONDS + minutes * 60 - 30))  # the last 30 s: recovery check
while [ $SECONDS -lt $end ]; do
  sleep "$((4 + RANDOM % 4)).$((RANDOM % 10))"
  kill -0 "$launch_pid" 2>/dev/null || { say "launch exited"; break; }
  fault
done

# ---- the last fault and the recovery ---------------------------------------
touch "$work/stop-traffic"
wait "$traffic_pid"
traffic_pid=""
fault
# Membership first: every worker registered again (asked of the directory).
members_back=""
while [ $(( $(now_ms) - fault_end_ms )) -lt 60000 ]; do
  if all_up; then members_back=$(( $(now_ms) - fault_end_ms )); break; fi
  sleep 0.1
done
recovered=""
k=0
while [ $(( $(now_ms) - fault_end_ms )) -lt 60000 ]; do
  if demo_run 10 "r$k"; then recovered=$(( $(now_ms) - fault_end_ms )); break; fi
  k=$((k + 1))
done

# ---- leaks: every decode pool back to free + lent once traffic stopped ------
wait_all_up 30
timeout 30 "$kvferry" status "$topology" --pools --timeout-ms 3000 >"$work/pools.txt" 2>&1
leaked=$(awk '/^pool / {sum += $(NF-2)} END {print sum + 0}' "$work/pools.txt")
pool_lines=$(grep -c '^pool .* blocks' "$work/pools.txt")

# ---- report ------------------------------------------------------------------
runs=$(wc -l <"$work/runs.txt")
verified=$(awk '{s += $2} END {print s + 0}' "$work/runs.txt")
failed=$(awk '{s += $3} END {print s + 0}' "$work/runs.txt")
hangs=$(grep -c '^hang' "$work/reasons.txt")
unnamed=$(grep -c '^unnamed' "$work/reasons.txt")
echo
echo "==== soak report (seed $seed, $minutes min, kvferry $("$kvferry" --version 2>/dev/null | head -1))"
echo "load average (1, 5, 15 min): at the start $load_start, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "faults: $(wc -l <"$work/faults.txt") ($(sort "$work/faults.txt" | awk '{print $1}' | uniq -c | xargs))"
echo "         by target: $(awk '{print $2}' "$work/faults.txt" | sort | uniq -c | xargs)"
echo "launch restarts: $(grep -c '^kvferry launch: restarting' "$work/launch.err")," \
  "given up: $(grep -c 'failed for good' "$work/launch.err")"
echo "demo runs: $runs; requests verified: $verified; failed: $failed"
if [ -s "$work/reasons.txt" ]; then
  echo "failures by reason:"; sort "$work/reasons.txt" | uniq -c | sort -rn | sed 's/^/  /'
fi
if [ -s "$work/starts.txt" ]; then
  echo "runs that could not start: $(wc -l <"$work/starts.txt")"
  sed -E 's/[0-9]+ ms/N ms/g; s/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+/ADDR/g' "$work/starts.txt" |
    sort | uniq -c | sort -rn | sed 's/^/  /'
fi
echo "hangs: $hangs"
echo "pools after traffic (kvferry status --pools):"; sed 's/^/  /' "$work/pools.txt" | grep pool
echo "blocks leaked (neither free nor lent): $leaked"
# Peak RSS (VmHWM) of the deployment's processes alive now (one restarted
# by launch counts from its restart).
rss=""
for name in directory prefill-0 prefill-1 decode-0 decode-1; do
  pid=$(pid_of "$name")
  kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  [ -n "$kb" ] && rss="$rss $name $((kb / 1024)) MiB,"
done
echo "peak RSS of the processes alive at the end (VmHWM):${rss%,}"
echo "after the last fault ($(tail -1 "$work/faults.txt")): every worker up again (kvferry status) after ${members_back:-none within 60 s} ms"
echo "recovery after the last fault (a demo verified): ${recovered:-none within 60 s} ms"
ok=1
[ "$hangs" -eq 0 ] || ok=0
[ "$leaked" -eq 0 ] && [ "$pool_lines" -ge 2 ] || ok=0
[ -n "$recovered" ] && [ "$recovered" -le 5000 ] || ok=0
[ "$unnamed" -eq 0 ] || ok=0
if [ $ok -eq 1 ]; then echo "SOAK PASSED"; exit 0; fi
echo "SOAK FAILED"; exit 1
