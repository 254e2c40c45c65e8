#!/usr/bin/env bash
# Runs kvferry's GPU tests and benchmarks on the device machine (an H100 lent
# through the `device` tool), which lacks CAF and has other library versions:
# everything is built HERE and shipped in .bundle/.
#
#   scripts/device-run.sh bundle   (here)  build build-device (Release, CUDA on)
#                                          and assemble .bundle/
#   bash scripts/device-run.sh device (there) run every bundled test, then the
#                                          GPU benchmarks; logs to $OUT
#
# The device call is then:  run(command="bash scripts/device-run.sh device",
#                               carry=[".bundle"])
#
# .bundle/ = bin/kvferry, lib/ (libnccl-net-kvsock.so and every shared library
# the binaries need per ldd, except the C/C++ runtime: the device image is a
# newer Ubuntu whose glibc/libstdc++ are newer than Debian 12's, so ours would
# only shadow theirs), tests/ (GPU-labelled tests plus the unit tests of the
# GPU data path), this script, and MANIFEST (git commit, build time).
#
# Environment knobs:
#   bundle: SRC_DIR (default: repo root), BUILD_DIR (default: $SRC_DIR/build-device),
#           EXTRA_TESTS (more test target names to ship)
#   device: OUT (default ./.device-out), BENCH_IPC_ARGS (default: none),
#           BENCH_NET_ARGS / DEMO_ARGS (override the GPU options detected from --help;
#           DEMO_ARGS runs one demo with exactly those arguments),
#           SKIP_BENCH=1 (tests only), SKIP_TESTS=1 (benchmarks only)
#
# Benchmarks run under peak_rss (below): their logs end with the peak RSS of
# the largest process of the run (the demo's workers included), for
# docs/benchmarks.md.
set -uo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
bundle_dir=$repo_root/.bundle

# Libraries the device image provides itself (C/C++ runtime, CUDA driver).
is_system_lib() {
  case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|\
    libdl.so*|librt.so*|libcuda.so*|libnvidia*) return 0 ;;
    *) return 1 ;;
  esac
}

bundle() {
  set -e
  local src=${SRC_DIR:-$repo_root}
  local build=${BUILD_DIR:-$src/build-device}
  echo "== configure $build (Release, CUDA on) from $src"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVFERRY_CUDA=ON \
    >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
  # The GPU-labelled tests, plus the CPU tests of the GPU data path.
  local tests
  tests=$(cd "$build" && ctest -N -L gpu | sed -n 's/^ *Test *#[0-9]*: *//p')
  tests="$tests test_copy_plan test_unpack_mapping test_gpu_memory_host ${EXTRA_TESTS:-}"
  local targets=(kvferry nccl-net-kvsock)
  for t in $tests; do targets+=("$t"); done
  echo "== build ${targets[*]}"
  cmake --build "$build" -j2 --target "${targets[@]}"

  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/bin" "$bundle_dir/lib" "$bundle_dir/tests"
  cp "$build/bin/kvferry" "$bundle_dir/bin/"
  cp "$build/lib/libnccl-net-kvsock.so" "$bundle_dir/lib/"
  for t in $tests; do
    if [ -x "$build/tests/$t" ]; then cp "$build/tests/$t" "$bundle_dir/tests/"; fi
  done
  # Every non-system library any shipped ELF needs.
  local lib path
  for elf in "$bundle_dir"/bin/* "$bundle_dir"/lib/*.so "$bundle_dir"/tests/*; do
    ldd "$elf" 2>/dev/null | while read -r lib _ path _; do
      is_system_lib "$lib" && continue
      if [ -n "${path:-}" ] && [ -f "$path" ]; then cp -L "$path" "$bundle_dir/lib/$lib"; fi
    done || true
  done
  cp "$repo_root/scripts/device-run.sh" "$bundle_dir/"
  {
    echo "commit: $(git -C "$src" rev-parse --short HEAD 2>/dev/null ||
                    echo "not a checkout; $repo_root is at $(git -C "$repo_root" rev-parse --short HEAD)")"
    echo "built: $(date -u +%FT%TZ) on $(hostname)"
    echo "source: $src"
  } >"$bundle_dir/MANIFEST"
  echo "== .bundle: $(du -sh "$bundle_dir" | cut -f1)"
  ls -1 "$bundle_dir"/bin "$bundle_dir"/lib "$bundle_dir"/tests
}

device() {
  local b=$bundle_dir
  [ -x "$b/bin/kvferry" ] || { echo "device-run: $b/bin/kvferry missing: carry .bundle"; exit 2; }
  local out=${OUT:-$repo_root/.device-out}
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export KVFERRY_PLUGIN_PATH="$b/lib"
  local summary=$out/summary.txt
  : >"$summary"
  row() { printf '%-34s %-8s %s\n' "$1" "$2" "$3" | tee -a "$summary" >/dev/null; }
  # Runs a command and then prints the peak RSS of its largest process
  # (getrusage RUSAGE_CHILDREN: children fold in the descendants they reap).
  peak_rss() {
    if command -v python3 >/dev/null; then
      python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
print("peak RSS of the largest process: %.0f MiB" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0), flush=True)
sys.exit(rc)' "$@"
    else
      "$@"
    fi
  }

  {
    echo "== $(cat "$b/MANIFEST" | tr '\n' ' ')"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  } 2>&1 | tee "$out/device.log"

  echo "== tests" | tee "$out/tests.log"
  local t rc start
  for t in "$b"/tests/*; do
    [ "${SKIP_TESTS:-0}" = 1 ] && break
    start=$(date +%s%N)
    timeout 180 "$t" >>"$out/tests.log" 2>&1
    rc=$?
    local secs; secs=$(( ($(date +%s%N) - start) / 1000000 ))m
    case $rc in
      0) row "$(basename "$t")" pass "${secs}s" ;;
      77) row "$(basename "$t")" skipped "no GPU" ;;
      124) row "$(basename "$t")" TIMEOUT "180s" ;;
      *) row "$(basename "$t")" FAIL "rc=$rc (see tests.log)" ;;
    esac
    echo "-- $(basename "$t") rc=$rc" >>"$out/tests.log"
  done

  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    echo "== bench ipc"
    # shellcheck disable=SC2086
    peak_rss timeout 560 "$b/bin/kvferry" bench ipc --json "$out/bench_ipc.json" ${BENCH_IPC_ARGS:-} \
      2>&1 | tee "$out/bench_ipc.log"
    rc=${PIPESTATUS[0]}
    row "bench ipc" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "bench_ipc.log, bench_ipc.json"

    # bench net / demo: use their CUDA-memory options where the build has them.
    local net_args=${BENCH_NET_ARGS:-}
    if [ -z "$net_args" ] && "$b/bin/kvferry" bench net --help 2>&1 | grep -q -- "--memory"; then
      net_args="--memory both"
    fi
    if [ -n "$net_args" ]; then
      # shellcheck disable=SC2086
      peak_rss timeout 240 "$b/bin/kvferry" bench net $net_args 2>&1 | tee "$out/bench_net.log"
      rc=${PIPESTATUS[0]}
      row "bench net $net_args" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "bench_net.log"
    else
      row "bench net (CUDA memory)" n/a "this build's bench net has no CUDA memory option"
    fi
    # demo: both workers on GPU 0 over CUDA IPC, then over kvsock with GPU
    # memory, where this build's demo has --gpu / --transport.
    local demo_help demo_runs=()
    demo_help=$("$b/bin/kvferry" demo --help 2>&1)
    if [ -n "${DEMO_ARGS:-}" ]; then
      demo_runs=("$DEMO_ARGS")
    elif grep -q -- "--gpu" <<<"$demo_help"; then
      demo_runs=("--gpu 0")
      grep -q -- "--transport" <<<"$demo_help" && demo_runs+=("--gpu 0 --transport net")
    fi
    local k=0 demo_args
    for demo_args in "${demo_runs[@]}"; do
      k=$((k + 1))
      # shellcheck disable=SC2086
      peak_rss timeout 240 "$b/bin/kvferry" demo $demo_args 2>&1 | tee "$out/demo-$k.log"
      rc=${PIPESTATUS[0]}
      row "demo $demo_args" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "demo-$k.log"
    done
    [ ${#demo_runs[@]} -gt 0 ] || row "demo (GPU)" n/a "this build's demo has no GPU option"
  fi

  echo
  echo "== summary ($(nvidia-smi -L 2>/dev/null | head -1))"
  cat "$summary"
  ! grep -qE " (FAIL|TIMEOUT) " "$summary"
}

case "${1:-}" in
  bundle) bundle ;;
  device) device ;;
  *) echo "usage: $0 bundle|device" >&2; exit 2 ;;
esac
