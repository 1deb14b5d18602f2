#!/usr/bin/env bash
# The test command: builds and runs every test twice, once optimized (Release) and once
# with AddressSanitizer + UBSan, then a short fuzz run of the GGUF parser.
# Test data comes from $LOKAL_TEST_DATA (default: ../shared beside the checkout); the tests
# fail, never skip, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOKAL_TEST_DATA="${LOKAL_TEST_DATA:-$(cd .. && pwd)/shared}"
if [ ! -f "$LOKAL_TEST_DATA/README.md" ]; then
  echo "error: shared test data not found at $LOKAL_TEST_DATA (set LOKAL_TEST_DATA)" >&2
  exit 1
fi
JOBS="$(nproc)"

echo "== Release build + tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOKAL_TEST_DATA="$LOKAL_TEST_DATA" >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"

echo "== AddressSanitizer + UBSan build + tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOKAL_SANITIZE=ON \
  -DLOKAL_TEST_DATA="$LOKAL_TEST_DATA" >/dev/null
cmake --build build-asan -j"$JOBS"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$JOBS"

if [ -x scripts/fuzz.sh ]; then
  echo "== GGUF parser fuzz smoke run"
  FUZZ_SECONDS="${FUZZ_SECONDS:-30}" scripts/fuzz.sh
fi
echo "all tests passed"
