#!/usr/bin/env bash
# Installs the Debian packages quantkit builds with, skipping those already present.
# `install-deps.sh fuzz` adds clang and its libFuzzer/sanitizer runtime (make fuzz).
set -euo pipefail
pkgs=(cmake g++ make pkg-config nlohmann-json3-dev libcli11-dev libfmt-dev libopenblas-dev liblapacke-dev
      libgtest-dev libbenchmark-dev openmpi-bin libopenmpi-dev
      pybind11-dev python3-dev python3-numpy python3-pytest python3-setuptools python3-wheel python3-pip chromium)
if [ "${1:-}" = fuzz ]; then pkgs+=(clang libclang-rt-14-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm (for the llama.cpp peer) comes with the machine's Node.js; Debian's npm only if absent.
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
