#!/usr/bin/env bash
# Installs sdmoe's build and test dependencies from Debian's packages, then
# configures and builds a Release build in build/.  Idempotent and
# non-interactive: safe to run again at any time.
#   BUILD_DIR=DIR          build folder (default build/); arguments go to cmake
#   SETUP_TARGETS="a b"    build only these targets (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(build-essential cmake pkg-config libopenblas-dev libdnnl-dev libpng-dev
          libstb-dev libcriterion-dev libcjson-dev libyaml-dev libutf8proc-dev libssl-dev
          valgrind)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
# shellcheck disable=SC2086
cmake --build "$BUILD_DIR" -j"$(nproc)" ${SETUP_TARGETS:+--target $SETUP_TARGETS}
echo "setup: built $BUILD_DIR/sdmoe"
