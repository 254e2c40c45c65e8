#!/usr/bin/env bash
# scripts/device-run.sh `device` mode on a fake bundle (issue #19): the
# device call must exit non-zero when any test, benchmark or demo row fails,
# and a test that exits 77 reads "skipped: <its own SKIPPED reason>", not
# "no GPU". No GPU needed: the bundle's tests and kvferry are shell stand-ins.
#
#   device_run_test.sh <repo root>
set -uo pipefail
ROOT=${1:?usage: device_run_test.sh <repo root>}
WORK=$(mktemp -d /tmp/kvferry-device-run-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# shellcheck source=../../scripts/device-run.sh
source "$ROOT/scripts/device-run.sh"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# A bundle: bin/kvferry answers `bench ipc` with FAKE_BENCH_RC and has no
# GPU options (no bench net / demo rows); tests/ holds the given stand-ins.
make_bundle() {  # <dir> <test name>=<script body>...
  local dir=$1; shift
  mkdir -p "$dir/bin" "$dir/lib" "$dir/tests"
  printf '#!/usr/bin/env bash\n[ "$1 $2" = "bench ipc" ] && exit "${FAKE_BENCH_RC:-0}"\nexit 0\n' \
    >"$dir/bin/kvferry"
  local t
  for t in "$@"; do
    printf '#!/usr/bin/env bash\n%s\n' "${t#*=}" >"$dir/tests/${t%%=*}"
  done
  chmod +x "$dir"/bin/* "$dir"/tests/*
}

# device() in a subshell (it may exit); its summary is left in $WORK/<case>.
run_device() {  # <case> <bundle dir> [env assignments...]
  local name=$1 dir=$2; shift 2
  (bundle_dir=$dir; export OUT=$WORK/$name "$@"; device) >"$WORK/$name.log" 2>&1
}

pass='echo "[doctest] Status: SUCCESS!"; exit 0'
two_gpus='echo "SKIPPED: this test needs 2 CUDA GPUs, this machine has 1"; exit 77'
broken='echo "FAILED: this test needs a CUDA GPU; CUDA is present but broken" >&2; exit 1'
make_bundle "$WORK/good" test_a="$pass" test_b="$two_gpus"
make_bundle "$WORK/bad" test_a="$pass" test_c="$broken"

run_device all-pass "$WORK/good" || fail "every row passed or skipped, yet device exited $?"
grep -qE '^test_b +skipped +this test needs 2 CUDA GPUs, this machine has 1$' "$WORK/all-pass/summary.txt" \
  || fail "test_b's row does not carry its own SKIPPED reason: $(grep test_b "$WORK/all-pass/summary.txt")"

run_device bench-fails "$WORK/good" FAKE_BENCH_RC=1 \
  && fail "bench ipc ended rc=1, yet device exited 0"
grep -qE '^bench ipc +rc=1 ' "$WORK/bench-fails/summary.txt" || fail "no 'bench ipc rc=1' row"

run_device test-fails "$WORK/bad" && fail "test_c failed (rc 1), yet device exited 0"
grep -qE '^test_c +FAIL +rc=1 ' "$WORK/test-fails/summary.txt" || fail "no 'test_c FAIL rc=1' row"

for f in "$WORK"/*/summary.txt; do echo "== $f"; cat "$f"; done
[ "$failures" -eq 0 ] && echo "PASS: device-run.sh device mode" && exit 0
exit 1
