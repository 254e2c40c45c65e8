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
#   bash scripts/device-run.sh multi  (there) with >= 2 GPUs: the runs across
#                                          GPUs 0 and 1 only (issue #7), below
#
#   bash scripts/device-run.sh broken-driver (there) issue #19's mutation
#                                          check: GPU tests whose CUDA init
#                                          fails (not "no device") must FAIL,
#                                          below
#
#   bash scripts/device-run.sh kernel-choice (there) issue #18: the
#                                          copy-kernel choice's tests, then
#                                          bench ipc as chosen, tuned, and with
#                                          the plain kernel forced, below
#
#   bash scripts/device-run.sh example (there) issue #15: the embedding
#                                          example's two servers on GPU 0 over
#                                          a Mooncake slice, below
#
#   bash scripts/device-run.sh contention (there) issue #5: bench ipc at the
#                                          demo's block size, then the demo on
#                                          GPU 0 under each GPU scheduling
#                                          variant at 2 and 1 in flight, below
#
# The device call is then:  run(command="bash scripts/device-run.sh device",
#                               carry=[".bundle"])
# The device call carries at most 64 MiB (tree and bundle together); when the
# bundle outgrows that, carry the packed copy bundle also writes instead:
#   run(command="tar -xJf .bundle-packed/bundle.tar.xz && bash .bundle/device-run.sh device",
#       carry=[".bundle-packed"])
#
# .bundle/ = bin/kvferry and bin/kvferry-plugin-probe (the plugin probe's
# helper program), lib/ (libnccl-net-kvsock.so and every shared library
# the binaries need per ldd, except the C/C++ runtime: the device image is a
# newer Ubuntu whose glibc/libstdc++ are newer than Debian 12's, so ours would
# only shadow theirs), tests/ (GPU-labelled tests plus the unit tests of the
# GPU data path), python/ (the module kvferry, for test_endpoint_torch), this
# script, and MANIFEST (git commit, build time).
#
# Environment knobs:
#   bundle: SRC_DIR (default: repo root), BUILD_DIR (default: $SRC_DIR/build-device),
#           EXTRA_TESTS (more test target names to ship)
#   device: OUT (default ./.device-out), BENCH_IPC_ARGS (default: none),
#           BENCH_NET_ARGS / DEMO_ARGS (override the GPU options detected from --help;
#           DEMO_ARGS runs one demo with exactly those arguments),
#           SKIP_BENCH=1 (tests only), SKIP_TESTS=1 (benchmarks only)
#   multi:  OUT, MULTI_BUDGET_S (default 390: every step's timeout is cut to
#           what is left of it, so the call ends inside the device limit),
#           MULTI_NET_ARGS (default: --memory both --gpu 0 --peer-gpu 1)
#   contention: OUT, CONTENTION_BUDGET_S (default 330; CONTENTION_RESERVE_S
#           of it, default 65, is kept from the demos for what follows them),
#           CONTENTION_ROUNDS (default 2), BENCH_IPC_SIZES (default 64K; keep
#           64K in it), BENCH_IPC_ARGS (added to --no-unpack, e.g. --sweep),
#           CONTENTION_VARIANTS (default: the demo as is and with --mps=off,
#           see contention() below), SKIP_TESTS=0 to run the
#           bundled tests after them
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
  tests="$tests test_copy_plan test_unpack_mapping test_gpu_memory_host test_copy_choice test_ipc_table ${EXTRA_TESTS:-}"
  local targets=(kvferry kvferry-plugin-probe nccl-net-kvsock)
  for t in $tests; do targets+=("$t"); done
  targets+=(kvferry-embedding-example) # issue #15 (the example mode)
  echo "== build ${targets[*]}"
  cmake --build "$build" -j2 --target "${targets[@]}"

  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/bin" "$bundle_dir/lib" "$bundle_dir/tests"
  cp "$build/bin/kvferry" "$build/bin/kvferry-plugin-probe" "$bundle_dir/bin/"
  cp "$build/lib/libnccl-net-kvsock.so" "$bundle_dir/lib/"
  # The embedding example (issue #15) and the trace it replays.
  cp "$build/apps/embedding-example/kvferry-embedding-example" "$bundle_dir/bin/"
  mkdir -p "$bundle_dir/traces"
  cp "$src/../shared/traces/mooncake_synthetic_trace.jsonl" "$bundle_dir/traces/" 2>/dev/null ||
    echo "== no ../shared/traces beside $src: the example mode will have no trace"
  for t in $tests; do
    if [ -x "$build/tests/$t" ]; then cp "$build/tests/$t" "$bundle_dir/tests/"; fi
  done
  # The Python module and libkvferry.so, for test_endpoint_torch (issue #16:
  # the device's python3 with torch and cupy; the wrapper finds both
  # relative to itself).
  if [ -f "$build/lib/libkvferry.so" ] && [ -d "$build/python" ]; then
    cp "$build/lib/libkvferry.so" "$bundle_dir/lib/"
    cp -r "$build/python" "$bundle_dir/"
  fi
  # Every non-system library any shipped ELF needs.
  local lib path
  for elf in "$bundle_dir"/bin/* "$bundle_dir"/lib/*.so "$bundle_dir"/tests/*; do
    ldd "$elf" 2>/dev/null | while read -r lib _ path _; do
      is_system_lib "$lib" && continue
      if [ -n "${path:-}" ] && [ -f "$path" ]; then cp -L "$path" "$bundle_dir/lib/$lib"; fi
    done || true
  done
  cp "$repo_root/scripts/device-run.sh" "$bundle_dir/"
  # The toolkit's stub driver, for the broken-driver check (never on the
  # library path otherwise).
  local nvcc_dir; nvcc_dir=$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")
  if [ -f "$nvcc_dir/../lib64/stubs/libcuda.so" ]; then
    mkdir -p "$bundle_dir/stub"
    cp -L "$nvcc_dir/../lib64/stubs/libcuda.so" "$bundle_dir/stub/libcuda.so.1"
  fi
  {
    echo "commit: $(git -C "$src" rev-parse --short HEAD 2>/dev/null ||
                    echo "not a checkout; $repo_root is at $(git -C "$repo_root" rev-parse --short HEAD)")"
    echo "built: $(date -u +%FT%TZ) on $(hostname)"
    echo "source: $src"
  } >"$bundle_dir/MANIFEST"
  echo "== .bundle: $(du -sh "$bundle_dir" | cut -f1)"
  mkdir -p "$repo_root/.bundle-packed"
  tar -C "$(dirname "$bundle_dir")" -cJf "$repo_root/.bundle-packed/bundle.tar.xz" "$(basename "$bundle_dir")"
  echo "== .bundle-packed/bundle.tar.xz: $(du -sh "$repo_root/.bundle-packed/bundle.tar.xz" | cut -f1)"
  ls -1 "$bundle_dir"/bin "$bundle_dir"/lib "$bundle_dir"/tests
}

# The device side of every step: the bundle's binaries and libraries on the
# paths, and $out (OUT, default .device-out) for the logs.
use_bundle() {
  b=$bundle_dir
  [ -x "$b/bin/kvferry" ] || { echo "device-run: $b/bin/kvferry missing: carry .bundle"; exit 2; }
  out=${OUT:-$repo_root/.device-out}
  mkdir -p "$out"
  export LD_LIBRARY_PATH="$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export KVFERRY_PLUGIN_PATH="$b/lib"
  # bin/kvferry finds the probe helper beside itself; the tests, the example
  # and libkvferry.so would look in the build tree's path, absent there.
  export KVFERRY_PLUGIN_PROBE="$b/bin/kvferry-plugin-probe"
}

# One bundled test's outcome from its exit status: "pass" (", N case(s)
# skipped" when cases skipped themselves, tests/support/skip_case.hpp), "skipped:
# <reason>" (77, the reason from the SKIPPED line the test printed: no GPU,
# one GPU, no peer access, ...), "TIMEOUT <s>s" (124) or "FAIL rc=N".
test_outcome() {
  local rc=$1 log=$2 secs=$3 why n
  case $rc in
    0) n=$(grep -c '^SKIPPED: ' "$log")
       if [ "$n" -gt 0 ]; then echo "pass, $n case(s) skipped"; else echo pass; fi ;;
    77) why=$(sed -n 's/^SKIPPED: //p' "$log" | head -1)
        echo "skipped: ${why:-the test printed no reason}" ;;
    124) echo "TIMEOUT ${secs}s" ;;
    *) echo "FAIL rc=$rc" ;;
  esac
}

# test_row NAME RC LOG SECS NOTE: the summary row of one test (row is each
# mode's own formatter); a failure points at its log.
test_row() {
  local outcome; outcome=$(test_outcome "$2" "$3" "$4")
  case $outcome in
    pass*) row "$1" pass "$5${outcome#pass}" ;;
    skipped:*) row "$1" skipped "${outcome#skipped: }" ;;
    TIMEOUT*) row "$1" TIMEOUT "${4}s" ;;
    *) row "$1" FAIL "rc=$2 (see $(basename "$3"))" ;;
  esac
}

# Whether every row of a summary passed: a test FAIL or TIMEOUT, or a
# benchmark or demo step that ended with rc=N (its status column), fails
# the whole run, so the device call itself exits non-zero.
summary_passed() {
  ! grep -qE " (FAIL|TIMEOUT|rc=[0-9]+) " "$1"
}

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

device() {
  local b out
  use_bundle
  local summary=$out/summary.txt
  : >"$summary"
  row() { printf '%-34s %-8s %s\n' "$1" "$2" "$3" | tee -a "$summary" >/dev/null; }

  {
    echo "== $(cat "$b/MANIFEST" | tr '\n' ' ')"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  } 2>&1 | tee "$out/device.log"

  echo "== tests" | tee "$out/tests.log"
  local t rc start name
  for t in "$b"/tests/*; do
    [ "${SKIP_TESTS:-0}" = 1 ] && break
    name=$(basename "$t")
    start=$(date +%s%N)
    timeout 180 "$t" >"$out/$name.log" 2>&1
    rc=$?
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    test_row "$name" "$rc" "$out/$name.log" 180 "${ms} ms"
    { cat "$out/$name.log"; echo "-- $name rc=$rc"; } >>"$out/tests.log"
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
      # The same with kvsock declaring host memory only: the channel wrapper
      # stages GPU memory through its pinned slots (compare with the run above).
      if [ "$net_args" = "--memory both" ]; then
        KVSOCK_PTR_SUPPORT=host peak_rss timeout 240 "$b/bin/kvferry" bench net --memory both \
          2>&1 | tee "$out/bench_net_staged.log"
        rc=${PIPESTATUS[0]}
        row "bench net --memory both (staged)" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" \
          "bench_net_staged.log"
      fi
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
      peak_rss timeout 240 "$b/bin/kvferry" demo $demo_args $(breakdown_flag "$b") 2>&1 | tee "$out/demo-$k.log"
      rc=${PIPESTATUS[0]}
      row "demo $demo_args" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "demo-$k.log"
    done
    [ ${#demo_runs[@]} -gt 0 ] || row "demo (GPU)" n/a "this build's demo has no GPU option"
  fi

  # Issue #5's target side by side: the first demo (defaults, CUDA IPC)
  # against bench ipc's kernel at the demo's block size, same call.
  if [ "${SKIP_BENCH:-0}" != 1 ] && [ -f "$out/demo-1.log" ]; then
    local ipc; ipc=$(ipc_kernel_64k "$out/bench_ipc.log")
    {
      echo "issue #5: bench ipc kernel at 64 KiB $ipc GB/s (same call); target demo data >= 0.8x"
      target_line "demo ${demo_runs[0]}" "$out/demo-1.log" "$ipc"
    } >>"$summary"
  fi

  echo
  echo "== summary ($(nvidia-smi -L 2>/dev/null | head -1))"
  cat "$summary"
  summary_passed "$summary"
}

# "--breakdown" where the bundled demo has it (the full table, which
# demo_figures reads; older builds print it by default).
breakdown_flag() {
  "$1/bin/kvferry" demo --help 2>&1 | grep -q -- "--breakdown" && echo --breakdown
}

# The demo's table row (| memory | requests | failed | bytes | wall s | GB/s |
# data GB/s | GPU copy GB/s | launch to kernel us p50 / p99 | after kernel
# us p50 / p99 | p50 ms | ...) of a demo log, as "wall data gpu_copy
# queued after p50" (the p50 / p99 pairs without spaces): "-" where missing.
demo_figures() {
  awk -F'|' '/^\| (GPU|host)/ && NF >= 16 {
      for (i = 7; i <= 12; i++) { gsub(/ /, "", $i); if ($i == "") $i = "-" }
      printf "%s %s %s %s %s %s\n", $7, $8, $9, $10, $11, $12
      found = 1 }
    END { if (!found) print "- - - - - -" }' "$1"
}

# bench ipc's default-kernel GB/s at 64 KiB blocks (the demo's block size)
# from its log; "-" when the row is missing.
ipc_kernel_64k() {
  awk '$1 == 65536 && $2 ~ /^[0-9]+$/ { print $3; found = 1 } END { if (!found) print "-" }' "$1"
}

# "x.xx" = a / b, or "-" when either is not a number.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'
}

# One line of issue #5's target: a demo log against bench ipc at 64 KiB.
target_line() {
  local label=$1 log=$2 ipc=$3 wall data copy queued after p50 rss
  read -r wall data copy queued after p50 < <(demo_figures "$log")
  rss=$(sed -n 's/^peak RSS of the largest process: //p' "$log" | tail -1)
  printf '%-40s wall %7s  data %8s (%5sx)  GPU copy %8s (%5sx)  to kernel %9s us  after %9s us  p50 %6s ms  RSS %s\n' \
    "$label" "$wall" "$data" "$(ratio "$data" "$ipc")" "$copy" "$(ratio "$copy" "$ipc")" \
    "$queued" "$after" "$p50" "${rss:--}"
}

# Issue #5 on one GPU: is the demo's data rate >= 0.8x bench ipc's kernel at
# the demo's block size (64 KiB), and where does the rest go? bench ipc runs
# first; then `kvferry demo --gpu 0 --quiet` at --inflight 2 (the default)
# and 1 under each GPU scheduling variant (docs/gpu.md, "Contention in the
# demo"), interleaved, CONTENTION_ROUNDS times, so noise shows as spread;
# each under peak_rss; a side-by-side table at the end. All inside
# CONTENTION_BUDGET_S: a step that would not fit is skipped, saying so.
contention() {
  local b out
  use_bundle
  local summary=$out/summary.txt budget=${CONTENTION_BUDGET_S:-330}
  : >"$summary"
  {
    echo "== $(tr '\n' ' ' <"$b/MANIFEST")"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,compute_mode --format=csv
  } 2>&1 | tee "$out/device.log"
  left() { echo $((budget - SECONDS)); }

  local sizes=${BENCH_IPC_SIZES:-64K}
  echo "== bench ipc --sizes $sizes --no-unpack ${BENCH_IPC_ARGS:-}"
  # shellcheck disable=SC2086
  peak_rss timeout -k 5 150 "$b/bin/kvferry" bench ipc --sizes "$sizes" --no-unpack ${BENCH_IPC_ARGS:-} \
    --json "$out/bench_ipc.json" 2>&1 | tee "$out/bench_ipc.log"
  local ipc; ipc=$(ipc_kernel_64k "$out/bench_ipc.log")

  # name=settings, comma-separated: VAR=value goes to the environment,
  # --flag=value to the demo's command line; empty: the defaults, which the
  # first variant should be (what a user gets). Other variants measured
  # before: back-off=KVFERRY_IPC_SPIN=0 priority=KVFERRY_GPU_STREAM_PRIORITIES=1
  # fill-132=KVFERRY_FILL_GRID=132 (docs/gpu.md, "Contention in the demo").
  local variants=(${CONTENTION_VARIANTS:-default= no-mps=--mps=off})
  local round v name env flags inflight log rows=()
  for round in $(seq 1 "${CONTENTION_ROUNDS:-2}"); do
    for inflight in 2 1; do
      for v in "${variants[@]}"; do
        name=${v%%=*} env= flags=
        local item items
        IFS=, read -r -a items <<<"${v#*=}"
        for item in "${items[@]}"; do
          case $item in --*) flags+=" $item" ;; ?*) env+=" $item" ;; esac
        done
        log=$out/demo-$name-if$inflight-r$round.log
        if [ "$(left)" -lt "${CONTENTION_RESERVE_S:-65}" ]; then
          echo "== demo $name --inflight $inflight round $round: skipped, $(left) s of the budget left"
          continue
        fi
        echo "== demo --gpu 0 --quiet --inflight $inflight$flags [$name:${env:- defaults}] round $round"
        # shellcheck disable=SC2086
        ( [ -z "$env" ] || export $env
          peak_rss timeout -k 5 60 "$b/bin/kvferry" demo --gpu 0 --quiet $(breakdown_flag "$b") --inflight "$inflight" $flags ) \
          >"$log" 2>&1
        echo "   rc=$? $(grep -m1 '^| GPU' "$log")"
        rows+=("$(target_line "$name, inflight $inflight, round $round" "$log" "$ipc")")
      done
    done
  done

  # The bundled tests after the measurements, each cut to what is left.
  if [ "${SKIP_TESTS:-1}" = 0 ]; then
    echo "== tests" | tee "$out/tests.log"
    local t rc secs
    for t in "$b"/tests/*; do
      secs=$(( $(left) - 10 ))
      [ "$secs" -gt 180 ] && secs=180
      if [ "$secs" -lt 20 ]; then
        printf '%-44s %s\n' "test $(basename "$t")" "not run: budget spent" >>"$summary"
        continue
      fi
      timeout -k 5 "$secs" "$t" >"$out/$(basename "$t").log" 2>&1
      rc=$?
      { cat "$out/$(basename "$t").log"; echo "-- $(basename "$t") rc=$rc"; } >>"$out/tests.log"
      echo "-- $(basename "$t") rc=$rc"
      printf '%-44s %s\n' "test $(basename "$t")" "$(test_outcome "$rc" "$out/$(basename "$t").log" "$secs")" \
        >>"$summary"
    done
  fi

  {
    echo
    echo "== issue #5 on $(nvidia-smi -L 2>/dev/null | head -1)"
    echo "bench ipc default kernel at 64 KiB (same call): $ipc GB/s; ratios below are to it (target: data >= 0.8x)"
    printf '%s\n' "${rows[@]}"
  } | tee -a "$summary"
  echo
  cat "$summary"
}

# Two GPUs of one host (issue #7): nvidia-smi topo -m and the peer-access
# matrix, bench ipc from GPU 0 to GPU 1 (ceiling: cudaMemcpyPeerAsync of the
# same total, in the same run), the demo on GPU 0 alone (the same-GPU
# baseline) and across GPUs 0 and 1 over CUDA IPC and over kvsock, bench net
# with GPU 0 sending and GPU 1 receiving, the two-GPU tests, then bench ipc
# from GPU 1 to GPU 0 at 64 KiB (is the link symmetric?). Benchmarks
# run under peak_rss; everything under a total budget (MULTI_BUDGET_S).
multi() {
  local b out
  use_bundle
  local summary=$out/summary.txt budget=${MULTI_BUDGET_S:-390}
  : >"$summary"
  row() { printf '%-58s %-8s %s\n' "$1" "$2" "$3" | tee -a "$summary" >/dev/null; }
  # A step's timeout: its own limit, cut to what is left of the budget.
  limit() {
    local left=$((budget - SECONDS - 5))
    [ "$left" -lt "$1" ] && echo $((left > 1 ? left : 1)) || echo "$1"
  }
  # step NAME LOG SECONDS COMMAND...: runs it under peak_rss, logs, one row.
  step() {
    local name=$1 log=$2 secs; secs=$(limit "$3"); shift 3
    echo "== $name (limit ${secs}s)"
    peak_rss timeout -k 5 "$secs" "$@" 2>&1 | tee "$out/$log"
    local rc=${PIPESTATUS[0]}
    row "$name" "$([ "$rc" = 0 ] && echo ok || echo "rc=$rc")" "$log"
  }

  {
    echo "== $(tr '\n' ' ' <"$b/MANIFEST")"
    nvidia-smi -L
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    echo "== nvidia-smi topo -m"
    nvidia-smi topo -m
    echo "== nvidia-smi nvlink --status"
    nvidia-smi nvlink --status 2>&1 | head -40
    echo "== kvferry info"
    "$b/bin/kvferry" info
  } 2>&1 | tee "$out/device.log"
  local gpus; gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
  if [ "$gpus" -lt 2 ]; then
    echo "device-run multi: this machine has $gpus GPU(s); the multi step needs 2"
    return 1
  fi

  local k=$b/bin/kvferry across="--prefill-gpu 0 --decode-gpu 1"
  step "bench ipc --src-gpu 0 --dst-gpu 1" bench_ipc_0_1.log 150 \
    "$k" bench ipc --src-gpu 0 --dst-gpu 1 --sizes 4K,16K,64K,2M --json "$out/bench_ipc_0_1.json"
  step "demo --gpu 0 (same-GPU baseline)" demo_gpu0.log 60 "$k" demo --gpu 0 --quiet $(breakdown_flag "$b")
  # shellcheck disable=SC2086
  step "demo $across (CUDA IPC)" demo_0_1_ipc.log 60 "$k" demo $across --quiet $(breakdown_flag "$b")
  # shellcheck disable=SC2086
  step "demo $across --transport net" demo_0_1_net.log 60 "$k" demo $across --transport net --quiet $(breakdown_flag "$b")
  # shellcheck disable=SC2086
  step "bench net ${MULTI_NET_ARGS:---memory both --gpu 0 --peer-gpu 1}" bench_net_0_1.log 120 \
    "$k" bench net ${MULTI_NET_ARGS:---memory both --gpu 0 --peer-gpu 1} --json "$out/bench_net_0_1.json"
  local t rc secs
  for t in test_bench_ipc_two_gpus test_gpu_demo_two_gpus; do
    [ -x "$b/tests/$t" ] || { row "$t" n/a "not in the bundle"; continue; }
    secs=$(limit 180)
    timeout -k 5 "$secs" "$b/tests/$t" >"$out/$t.log" 2>&1
    test_row "$t" $? "$out/$t.log" "$secs" "$t.log"
  done

  # The other direction, 64 KiB only: whether the link is symmetric.
  step "bench ipc --src-gpu 1 --dst-gpu 0 --sizes 64K" bench_ipc_1_0.log 60 \
    "$k" bench ipc --src-gpu 1 --dst-gpu 0 --sizes 64K --no-unpack --json "$out/bench_ipc_1_0.json"

  echo
  echo "== summary ($gpus GPUs: $(nvidia-smi -L 2>/dev/null | head -1))"
  cat "$summary"
  summary_passed "$summary"
}

# Issue #19's mutation check, on a GPU host: a GPU test whose CUDA init
# fails with anything but "no device" must fail, not skip (its main:
# tests/support/gpu_presence.hpp). The bundled stub libcuda.so.1 (the
# toolkit's, which answers every call with CUDA_ERROR_STUB_LIBRARY) in front
# of the real driver makes cudaGetDeviceCount fail with cudaErrorStubLibrary,
# as on a host whose driver install is broken. Runs one single-GPU and one
# two-GPU test that way, then once normally; exit 0 only when both went red
# (rc 1, naming the CUDA error) and the normal run did not fail.
broken_driver() {
  local b out
  use_bundle
  [ -f "$b/stub/libcuda.so.1" ] || { echo "device-run: $b/stub/libcuda.so.1 missing (bundle built without the CUDA toolkit's stubs)"; return 2; }
  local t rc ok=0
  for t in test_gpu_smoke test_bench_ipc_two_gpus; do
    [ -x "$b/tests/$t" ] || { echo "$t: not in the bundle"; ok=1; continue; }
    LD_LIBRARY_PATH="$b/stub:$LD_LIBRARY_PATH" timeout -k 5 60 "$b/tests/$t" >"$out/broken-$t.log" 2>&1
    rc=$?
    if [ "$rc" = 1 ] && grep -q "cudaErrorStubLibrary" "$out/broken-$t.log"; then
      echo "$t with a broken driver: FAIL (rc 1) as it must: $(grep -m1 '^FAILED' "$out/broken-$t.log")"
    else
      echo "$t with a broken driver: rc=$rc, NOT red (see broken-$t.log)"; ok=1
    fi
  done
  timeout -k 5 60 "$b/tests/test_gpu_smoke" >"$out/normal-test_gpu_smoke.log" 2>&1
  rc=$?
  echo "test_gpu_smoke with the real driver: rc=$rc ($(test_outcome "$rc" "$out/normal-test_gpu_smoke.log" 60))"
  [ "$rc" = 1 ] && ok=1
  return $ok
}

# Issue #18 on one GPU: the per-GPU copy-kernel choice (docs/gpu.md, "Kernel
# choice"). Its tests, then bench ipc at 4 KiB .. 2 MiB three times with a
# fresh cache in $OUT/cache: tuned now (--copy-kernel tune), from the cache
# it wrote, and with the plain kernel forced. Each table has "default
# kernel" and "plain kernel" columns measured in the same run, "vs best"
# (the better of the two over the chosen kernel's time: >= 1.00x is the
# goal) and the kernel chosen per block size. KERNEL_CHOICE_TOTAL: bytes per
# size (default 512M, as the issue measured).
kernel_choice() {
  local b out
  use_bundle
  local summary=$out/summary.txt
  : >"$summary"
  {
    echo "== $(tr '\n' ' ' <"$b/MANIFEST")"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  } 2>&1 | tee "$out/device.log"
  export XDG_CACHE_HOME=$out/cache
  local t rc
  for t in test_copy_choice test_gpu_copy_choice test_gpu_copy; do
    timeout -k 5 170 "$b/tests/$t" >"$out/$t.log" 2>&1
    rc=$?
    echo "$t $(test_outcome "$rc" "$out/$t.log" 170)" | tee -a "$summary"
  done
  local run args
  # chosen: what a worker gets with an empty cache (the measured choice on a
  # known model, else a tune); tuned: the in-process autotune forced.
  for run in chosen tuned plain; do
    case $run in
      chosen) args="" ;;
      tuned) args="--copy-kernel tune" ;;
      plain) args="--copy-kernel plain" ;;
    esac
    echo "== bench ipc ($run) $args"
    # shellcheck disable=SC2086
    peak_rss timeout -k 5 170 "$b/bin/kvferry" bench ipc --sizes 4K,16K,64K,256K,2M \
      --total "${KERNEL_CHOICE_TOTAL:-512M}" --no-unpack $args \
      --json "$out/bench_ipc_$run.json" 2>&1 | tee "$out/bench_ipc_$run.log"
    echo "bench ipc ($run) rc=${PIPESTATUS[0]}" | tee -a "$summary"
  done
  cat "$XDG_CACHE_HOME/kvferry/copy-kernels.txt" 2>&1 | tee -a "$summary"
}

# Issue #15 on one GPU: the embedding example's prefill and decode servers,
# two processes with their KV caches on GPU 0 (CUDA IPC between them), over
# the first EXAMPLE_REQUESTS (default 200) requests of the bundled Mooncake
# trace; then the same on host memory (kvsock) for comparison. Each exits 0
# only when every byte of every request was verified. EXAMPLE_ARGS: more
# options for both servers (e.g. "--layers 32 --token-bytes 1024").
example() {
  local b out
  use_bundle
  local exe=$b/bin/kvferry-embedding-example rc=0 gpu
  for gpu in 0 none; do
    rm -f "$out/example-port"
    # shellcheck disable=SC2086
    timeout -k 5 200 "$exe" prefill --port 0 --port-file "$out/example-port" --gpu "$gpu" \
      ${EXAMPLE_ARGS:-} >"$out/example-prefill-$gpu.log" 2>&1 &
    local prefill=$! waited=0
    until [ -s "$out/example-port" ] || [ $waited -ge 300 ]; do sleep 0.1; waited=$((waited + 1)); done
    # shellcheck disable=SC2086
    peak_rss timeout -k 5 180 "$exe" decode --peer "127.0.0.1:$(cat "$out/example-port" 2>/dev/null)" \
      --trace "$b/traces/mooncake_synthetic_trace.jsonl" --requests "${EXAMPLE_REQUESTS:-200}" \
      --gpu "$gpu" ${EXAMPLE_ARGS:-} 2>&1 | tee "$out/example-decode-$gpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
    wait "$prefill" || rc=1
    cat "$out/example-prefill-$gpu.log"
  done
  return $rc
}

# Sourced (tests/integration/device_run_test.sh tests the functions above
# against a fake bundle): define them, run nothing.
(return 0 2>/dev/null) && return 0

case "${1:-}" in
  bundle) bundle ;;
  kernel-choice) kernel_choice ;;
  device) device ;;
  broken-driver) broken_driver ;;
  multi) multi ;;
  contention) contention ;;
  example) example ;;
  *) echo "usage: $0 bundle|device|multi|contention|kernel-choice|broken-driver|example" >&2; exit 2 ;;
esac
