#!/usr/bin/env bash
# Builds sdmoe (installing dependencies if needed) and runs the whole ctest
# suite.  Fixtures come from $SDMOE_FIXTURES (default ../shared/fixtures).
#   scripts/test.sh               Release build in build/
#   SANITIZE=1 scripts/test.sh    ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
export SDMOE_FIXTURES="${SDMOE_FIXTURES:-$(cd .. && pwd)/shared/fixtures}"
if [ "${SANITIZE:-0}" = 1 ]; then
  export BUILD_DIR=build-asan
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  scripts/setup.sh -DSDMOE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
else
  export BUILD_DIR=build
  scripts/setup.sh
fi
cd "$BUILD_DIR"
ctest --output-on-failure -j2 "$@"
