#!/usr/bin/env bash
# The main job from a fresh Debian 12 machine: installs what the build needs,
# builds kvferry, then runs `kvferry demo` (a directory, one prefill and one
# decode worker as separate processes; KV cache moved and verified).
# Extra arguments go to `kvferry demo`, e.g. scripts/run.sh --requests 500.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >build.configure.log 2>&1 \
  || { cat build.configure.log; exit 1; }
cmake --build build -j "$(nproc)"
exec build/bin/kvferry demo "$@"
