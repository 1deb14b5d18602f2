#!/usr/bin/env bash
# Builds the GGUF parser fuzzer (clang++, libFuzzer + AddressSanitizer + UBSan) in build-fuzz and runs it, then
# the safetensors header parser fuzzer for $FUZZ_SAFETENSORS_SECONDS (default 10) seconds, then the chat layer's
# fuzzers (Jinja templates, model-output parsing, GBNF grammars / JSON schemas) and the server's request parsers for
# $FUZZ_CHAT_SECONDS (default 10) seconds each.
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
cmake --build "$BUILD" -j"${FUZZ_JOBS:-2}" --target fuzz_gguf fuzz_gguf_seeds fuzz_safetensors fuzz_jinja fuzz_chat_parse fuzz_grammar fuzz_server_requests

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

# safetensors: seeds are a few small valid files; inputs that find new coverage go to build-fuzz/fuzz-corpus-st.
ST_SEEDS="$BUILD/fuzz-seeds-st"
ST_CORPUS="$BUILD/fuzz-corpus-st"
rm -rf "$ST_SEEDS"
mkdir -p "$ST_SEEDS" "$ST_CORPUS"
st_seed() {  # st_seed NAME HEADER DATA_BYTES
  local n=${#2}
  { printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8)))\\0\\0\\0\\0\\0\\0"; printf '%s' "$2"; head -c "$3" /dev/zero; } >"$ST_SEEDS/$1"
}
st_seed one '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' 8
st_seed meta '{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F16","shape":[3],"data_offsets":[12,18]}}' 18
st_seed empty '{}' 0
ST_SECONDS="${FUZZ_SAFETENSORS_SECONDS:-10}"
echo "fuzzing SafeTensorsFile::parse for ${ST_SECONDS}s"
# shellcheck disable=SC2086
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" "$BUILD/fuzz/fuzz_safetensors" \
  -max_total_time="$ST_SECONDS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
  -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 ${FUZZ_FLAGS:-} "$ST_CORPUS" "$ST_SEEDS"

# The chat layer's parsers, $FUZZ_CHAT_SECONDS (default 10) seconds each: Jinja chat templates (seeds: the shared
# templates, each followed by a NUL and a small chat context), model-output parsing, GBNF grammars / JSON schemas.
CHAT_SECONDS="${FUZZ_CHAT_SECONDS:-10}"
for target in fuzz_jinja fuzz_chat_parse fuzz_grammar fuzz_server_requests; do
  seeds="$BUILD/fuzz-seeds-$target"
  corpus="$BUILD/fuzz-corpus-$target"
  rm -rf "$seeds"
  mkdir -p "$seeds" "$corpus"
  dict=()
  case "$target" in
    fuzz_jinja)
      ctx='{"messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"},{"role":"assistant","content":"ok"}],"add_generation_prompt":true,"bos_token":"<s>","eos_token":"</s>"}'
      for t in "$DATA"/chat-templates/*.jinja; do { cat "$t"; printf '\0%s' "$ctx"; } >"$seeds/$(basename "$t")"; done
      dict=(-dict=fuzz/jinja.dict) ;;
    fuzz_chat_parse)
      printf '\0\0<think>a</think><tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>' >"$seeds/hermes"
      printf '\0\0[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "abcdefghi"}]' >"$seeds/mistral"
      dict=(-dict=fuzz/chat_parse.dict) ;;
    fuzz_grammar)
      printf 'root ::= "a" [b-d]* (x | "y"){1,3}\nx ::= [^"]+ "."\n' >"$seeds/gbnf"
      printf '{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string"}}},"required":["a"]}' >"$seeds/schema"
      # A regression seed: nested one-or-more loops once took 45 s per input (a CI timeout) before max_expand_steps.
      printf 'root ::= "x" .%s\n' "$(printf '+%.0s' $(seq 60))" >"$seeds/nested-repeat" ;;
    fuzz_server_requests)
      printf '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.5,"top_p":1,"max_tokens":8,"stop":["a","b"],"seed":3,"logit_bias":{"5":-100},"logprobs":true,"top_logprobs":2,"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"tool_choice":{"type":"function","function":{"name":"f"}},"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}}' >"$seeds/openai"
      printf '{"prompt":[1,2,3],"n_predict":-1,"logit_bias":[[1,false],["a",1.5]],"n_probs":3,"json_schema":{},"grammar":"root ::= \"a\""}' >"$seeds/llama"
      printf '{"name":"m","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},{"role":"tool","content":"2","tool_name":"f"}],"format":"json","options":{"num_predict":-2,"temperature":0},"think":"high","keep_alive":"5m"}' >"$seeds/ollama" ;;
  esac
  echo "fuzzing $target for ${CHAT_SECONDS}s"
  # shellcheck disable=SC2086
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" "$BUILD/fuzz/$target" \
    -max_total_time="$CHAT_SECONDS" -max_len=8192 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    "${dict[@]}" -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 ${FUZZ_FLAGS:-} "$corpus" "$seeds"
done
