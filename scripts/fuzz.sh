#!/usr/bin/env bash
# Builds the GGUF parser fuzzer (clang++, libFuzzer + AddressSanitizer + UBSan) in build-fuzz and runs it.
#
# Usage: scripts/fuzz.sh [SECONDS]     (default: $FUZZ_SECONDS, else 60)
# Seeds: a few small synthetic GGUF files, shrunk copies of every shared model (valid files of a few KB)
# and the first 4 KB of each shared model. Inputs that find new coverage accumulate in
# build-fuzz/fuzz-corpus across runs; crashes are saved under build-fuzz/fuzz-artifacts/ and the script
# fails. Reproduce one with: build-fuzz/fuzz/fuzz_gguf build-fuzz/fuzz-artifacts/crash-...
# Extra libFuzzer flags can be passed in FUZZ_FLAGS (e.g. FUZZ_FLAGS="-max_len=65536").
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS="${1:-${FUZZ_SECONDS:-60}}"
DATA="${LOKAL_TEST_DATA:-$(cd .. && pwd)/shared}"
BUILD=build-fuzz
if [ ! -d "$DATA/models" ]; then
  echo "error: shared test data not found at $DATA (set LOKAL_TEST_DATA)" >&2
  exit 1
fi

CXX="${FUZZ_CXX:-clang++}" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="${FUZZ_CXX:-clang++}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOKAL_FUZZ=ON -DLOKAL_BUILD_TESTS=OFF -DLOKAL_TEST_DATA="$DATA" >/dev/null
cmake --build "$BUILD" -j"${FUZZ_JOBS:-2}" --target fuzz_gguf fuzz_gguf_seeds

SEEDS="$BUILD/fuzz-seeds"
CORPUS="$BUILD/fuzz-corpus"
ARTIFACTS="$BUILD/fuzz-artifacts"
rm -rf "$SEEDS"
mkdir -p "$SEEDS" "$CORPUS" "$ARTIFACTS"
models=("$DATA"/models/*/*.gguf)
for m in "${models[@]}"; do head -c 4096 "$m" >"$SEEDS/head-$(basename "$m")"; done
"$BUILD/fuzz/fuzz_gguf_seeds" "$SEEDS" "${models[@]}"

echo "fuzzing GGUFFile::parse for ${RUN_SECONDS}s ($(ls "$SEEDS" | wc -l) seeds, $(ls "$CORPUS" | wc -l) corpus files)"
# shellcheck disable=SC2086
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" "$BUILD/fuzz/fuzz_gguf" \
  -max_total_time="$RUN_SECONDS" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
  -dict=fuzz/gguf.dict -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 ${FUZZ_FLAGS:-} \
  "$CORPUS" "$SEEDS"
