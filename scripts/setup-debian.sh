#!/usr/bin/env bash
# Installs the Debian 12 packages kvferry needs to build and test.
# Idempotent, and quiet when everything is already there.
set -euo pipefail

packages=(build-essential cmake ninja-build ccache pkg-config git
  libcaf-dev libcaf-openssl0.17 libyaml-cpp-dev libspdlog-dev libfmt-dev doctest-dev
  libxxhash-dev libssl-dev libcli11-dev nlohmann-json3-dev iproute2 procps
  clang-format
  python3 python3-numpy # the Python module kvferry's tests (docs/engine-api.md)
  gnuplot-nox) # `kvferry sim --out` draws its plots with it (docs/sim.md)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
