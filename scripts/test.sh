#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: installs what the build
# needs, checks the code's format, builds (warnings are errors), runs every test ctest knows, then builds
# again under AddressSanitizer + UndefinedBehaviorSanitizer and runs the tests
# that don't need a GPU there too. GPU tests skip with a message without a GPU.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the normal build's tests only, no sanitizer pass
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc)

bash scripts/setup-debian.sh

# The style of .clang-format, checked first: it takes seconds.
echo "== format (clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1))"
git ls-files '*.cpp' '*.hpp' '*.h' '*.cu' | xargs clang-format --dry-run --Werror \
  || { echo "run: git ls-files '*.cpp' '*.hpp' '*.h' '*.cu' | xargs clang-format -i"; exit 1; }

# docs/benchmarks.md keeps its own rules (cited commits exist, rows
# complete): no build needed, so it runs before the builds too.
echo "== benchmarks doc"
bash scripts/check-benchmarks.sh

configure_and_test() {  # <build dir> <ctest label filter args...> -- <cmake args...>
  local dir=$1; shift
  local ctest_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do ctest_args+=("$1"); shift; done
  shift
  echo "== configure $dir"
  cmake -S . -B "$dir" -G Ninja -DCMAKE_COMPILE_WARNING_AS_ERROR=ON "$@" >"$dir.configure.log" 2>&1 \
    || { cat "$dir.configure.log"; exit 1; }
  grep -E "kvferry:" "$dir.configure.log" || true
  echo "== build $dir"
  cmake --build "$dir" -j "$jobs"
  echo "== test $dir"
  (cd "$dir" && ctest --output-on-failure --no-tests=error -j "$jobs" "${ctest_args[@]}")
}

mkdir -p build-ci
configure_and_test build-ci/release -- -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ $quick -eq 0 ]; then
  # CUDA host code and nvcc objects are not instrumented; the sanitizer pass
  # covers everything else. Tests that only check the install are skipped.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  # Leaks of code that is not ours (CAF 0.17.6, a deliberately broken fixture)
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  configure_and_test build-ci/asan -LE "gpu|install" -- \
    -DCMAKE_BUILD_TYPE=Debug -DKVFERRY_SANITIZE=ON -DKVFERRY_CUDA=OFF
fi
echo "== all tests passed"
