#!/usr/bin/env bash
# The embedding example as an outside project (issue #15): install this
# build into a scratch prefix, configure and build apps/embedding-example
# against it with find_package(kvferry) (only the example is compiled;
# ccache makes a rerun cheap), then run its two servers as two processes on
# host memory over a slice of a trace: every request verified, the report
# printed, both exit 0. Then a prefill server killed mid-run: the decode
# server ends with an error naming it and a non-zero exit.
#   embedding_example_test.sh SOURCE_DIR BINARY_DIR
set -u
src=${1:?usage: embedding_example_test.sh SOURCE_DIR BINARY_DIR}
bin=${2:?usage: embedding_example_test.sh SOURCE_DIR BINARY_DIR}
source "$src/tests/integration/lib.sh" kvferry-example

step() {  # <what> <command...>: runs it, logging; the test stops on failure
  local what=$1; shift
  if "$@" >"$WORK/step.log" 2>&1; then pass "$what"; else
    fail "$what"; tail -40 "$WORK/step.log"; exit 1
  fi
}
step "install into a scratch prefix" cmake --install "$bin" --prefix "$WORK/prefix"
# The plugin probe's helper program is installed, and the installed kvferry
# runs that one (found relative to itself), not the build tree's.
probe=$(cd "$WORK/prefix" && pwd -P)/libexec/kvferry/kvferry-plugin-probe
expect "the probe helper is installed" test -x "$probe"
env -u KVFERRY_PLUGIN_PATH -u KVFERRY_PLUGIN_PROBE "$WORK/prefix/bin/kvferry" info >"$WORK/info.log" 2>&1
expect "the installed kvferry uses the installed probe helper" \
  contains "$WORK/info.log" "Probe helper: $probe"
expect "... and probes the installed kvsock plugin with it" \
  contains "$WORK/info.log" "(table 'kvsock'"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
step "configure the example against it" cmake -S "$src/apps/embedding-example" -B "$WORK/build" \
  -G Ninja -DCMAKE_PREFIX_PATH="$WORK/prefix" "${launcher[@]}"
step "build the example" cmake --build "$WORK/build" -j2
exe=$WORK/build/kvferry-embedding-example
# No KVFERRY_PLUGIN_PATH: the example finds the installed kvsock plugin.
unset KVFERRY_PLUGIN_PATH KVFERRY_NET_PLUGIN

# The first 50 requests of the Mooncake sample (14.5 s of trace time) at
# 1/20 of their time; a small model (4 layers, 4 KiB block halves) so that
# fill and verify stay cheap on a loaded 2-core machine.
trace=$src/../shared/traces/mooncake_synthetic_trace.jsonl
if [ ! -f "$trace" ]; then
  echo "note: $trace is absent (clone shared/ beside the repository); using a generated trace"
  trace=$WORK/trace.jsonl
  for i in $(seq 0 49); do
    echo "{\"timestamp\": $((i * 290)), \"input_length\": $((500 + i * 97)), \"output_length\": 8, \"hash_ids\": []}"
  done >"$trace"
fi
geometry=(--layers 4 --blocks 1024 --block-tokens 16 --token-bytes 256 --gpu none)

# start_prefill <log>: a prefill server on a free port, its port in $WORK/port.
start_prefill() {
  rm -f "$WORK/port"
  "$exe" prefill --port 0 --port-file "$WORK/port" --accept-timeout-ms 60000 \
    --prefill-tokens-per-s 1000000 "${geometry[@]}" \
    >"$1" 2>&1 &
  prefill_pid=$!
  echo "$prefill_pid" >"$WORK/prefill.pid"
  wait_for 30 bash -c "test -s '$WORK/port' || ! kill -0 $prefill_pid 2>/dev/null"
  test -s "$WORK/port" || { fail "prefill server listening (see below)"; cat "$1"; exit 1; }
}

start_prefill "$WORK/prefill.log"
timeout -k 5 150 "$exe" decode --peer "127.0.0.1:$(cat "$WORK/port")" --trace "$trace" \
  --requests 50 --time-scale 0.05 --max-prompt-blocks 128 "${geometry[@]}" >"$WORK/decode.log" 2>&1
rc=$?
cat "$WORK/decode.log"
expect "decode server exits 0 (rc=$rc)" test "$rc" = 0
expect "every byte of all 50 requests verified" contains "$WORK/decode.log" "50 verified (every byte), 0 failed"
for what in "requests/s" "TTFT ms" "  wait " "  prefill " "  transfer " "transfer GB/s" "peak RSS"; do
  expect "the report has '$what'" contains "$WORK/decode.log" "$what"
done
wait_for 20 bash -c "! kill -0 $prefill_pid 2>/dev/null"
wait "$prefill_pid"
rc=$?
cat "$WORK/prefill.log"
expect "prefill server exits 0 after the decode's bye (rc=$rc)" test "$rc" = 0
expect "prefill server prefilled all 50" contains "$WORK/prefill.log" "50 requests prefilled"

# A prefill server that dies mid-run: the decode server must end, naming
# it, with exit 1, well within its deadlines (3 x --timeout-ms 4000 + slack).
start_prefill "$WORK/prefill-killed.log"
timeout -k 5 60 "$exe" decode --peer "127.0.0.1:$(cat "$WORK/port")" --trace "$trace" \
  --requests 400 --time-scale 0.2 --max-prompt-blocks 128 --timeout-ms 4000 "${geometry[@]}" \
  >"$WORK/decode-killed.log" 2>&1 &
decode_pid=$!
echo "$decode_pid" >"$WORK/decode.pid"
wait_for 30 contains "$WORK/decode-killed.log" "decode server '" ||
  fail "the second decode server started"
kill -KILL "$prefill_pid"
start=$SECONDS
wait "$decode_pid"
rc=$?
cat "$WORK/decode-killed.log"
expect "decode server exits 1 when the prefill server dies (rc=$rc)" test "$rc" = 1
expect "... naming the prefill server" grep -q "error: .*prefill-$prefill_pid" "$WORK/decode-killed.log"
echo "decode server ended $((SECONDS - start)) s after the kill"
exit $((failures > 0))
