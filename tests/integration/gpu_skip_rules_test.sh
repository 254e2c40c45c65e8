#!/usr/bin/env bash
# The GPU test mains skip only when there is no CUDA device (issue #19,
# tests/support/gpu_presence.hpp), on any machine, GPU or not:
#   - a broken driver (the CUDA toolkit's stub libcuda.so.1 first on the
#     library path: every driver call answers CUDA_ERROR_STUB_LIBRARY, as
#     on a host whose driver install is broken) must FAIL (exit 1) naming
#     cudaErrorStubLibrary, not skip;
#   - every device hidden (CUDA_VISIBLE_DEVICES=) must skip (exit 77) saying
#     why (no device, or no driver at all on a CPU machine).
#
#   gpu_skip_rules_test.sh <toolkit stubs/libcuda.so> <GPU test binary>...
set -uo pipefail
STUB=${1:?usage: gpu_skip_rules_test.sh <stubs/libcuda.so> <test binary>...}
shift
WORK=$(mktemp -d /tmp/kvferry-gpu-skip-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ln -s "$STUB" "$WORK/libcuda.so.1" # the name the CUDA runtime loads
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

for t in "$@"; do
  name=$(basename "$t")
  LD_LIBRARY_PATH="$WORK${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout -k 5 60 "$t" >"$WORK/broken.log" 2>&1
  rc=$?
  echo "-- $name, broken driver: rc=$rc: $(head -c 300 "$WORK/broken.log")"
  [ "$rc" = 1 ] || fail "$name with a broken driver exited $rc, not 1"
  grep -q '^FAILED: .*cudaErrorStubLibrary' "$WORK/broken.log" \
    || fail "$name with a broken driver did not name cudaErrorStubLibrary"

  CUDA_VISIBLE_DEVICES= timeout -k 5 60 "$t" >"$WORK/hidden.log" 2>&1
  rc=$?
  echo "-- $name, no visible device: rc=$rc: $(head -c 300 "$WORK/hidden.log")"
  [ "$rc" = 77 ] || fail "$name with every device hidden exited $rc, not 77"
  grep -qE '^SKIPPED: .*(no CUDA device|no NVIDIA driver)' "$WORK/hidden.log" \
    || fail "$name's skip does not say why"
done
[ "$failures" -eq 0 ] && echo "PASS: GPU tests skip only without a device" && exit 0
exit 1
