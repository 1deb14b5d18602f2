#!/usr/bin/env bash
# What a JSON schema costs per generated token, lokal vs llama.cpp, measured side by side in one run.
#
#   bench/grammar_compare.sh MODEL.gguf [LLAMA_CPP_BIN_DIR] [N_TOKENS] [REPEATS]
#
# For each runtime: the same prompt, seed and sampling (temp 0.8, top-k 40, top-p 0.95, min-p 0.05), N tokens
# (default 64) unconstrained and then constrained by a JSON schema (an object with a string, an integer and an array
# of strings), REPEATS times (default 3) interleaved, $THREADS threads (default 2). Reports each run's generation speed and the median
# per-token time, and the overhead of the schema (constrained / unconstrained - 1). llama.cpp's numbers come from
# llama-cli's perf report (eval + sampling time per generated token); lokal's from `lokal run` (generation line:
# forward pass and sampling, the first token excluded). A random-weight model (lokal synth) is the hard case for a
# grammar: its choices are near-uniform, so the grammar refuses many of the best-ranked tokens.
set -euo pipefail
MODEL="${1:?usage: bench/grammar_compare.sh MODEL.gguf [LLAMA_CPP_BIN_DIR] [N_TOKENS] [REPEATS]}"
LLAMA_BIN="${2:-}"
N="${3:-64}"
R="${4:-3}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOKAL="${LOKAL:-$ROOT/build/src/lokal}"
# Two schemas: mostly free text inside a string (most tokens allowed), and numbers only (most tokens refused: the
# hard case for a grammar sampler, where the best-ranked tokens are rejected and the mask over the whole vocabulary
# decides). SCHEMA=... replaces both with one.
SCHEMAS=('{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"}}},"required":["name","age","tags"]}'
         '{"type":"array","items":{"type":"integer"}}')
if [ -n "${SCHEMA:-}" ]; then SCHEMAS=("$SCHEMA"); fi
PROMPT="Once upon a time"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

lokal_ms() {  # ms per generated token from `lokal run`'s generation line
  "$LOKAL" run -m "$MODEL" -n "$N" --temp 0.8 -s 1 -t "$THREADS" -p "$PROMPT" "$@" 2>"$TMP/err" >/dev/null
  sed -n 's/^generation: \([0-9]*\) tokens in \([0-9.]*\) ms.*/\1 \2/p' "$TMP/err" | awk '{ printf "%.3f\n", $2 / ($1 - 1) }'
}
llama_ms() {  # ms per generated token from llama-cli's perf report: (eval + sampling) / generated tokens
  timeout 900 "$LLAMA_BIN/llama-cli" -m "$MODEL" -no-cnv --simple-io -n "$N" --temp 0.8 -s 1 -t "$THREADS" -p "$PROMPT" "$@" \
    </dev/null >/dev/null 2>"$TMP/lerr" || true
  local eval_ms eval_n samp_ms
  eval_ms=$(sed -n 's/.*llama_perf_context_print: *eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) runs.*/\1/p' "$TMP/lerr")
  eval_n=$(sed -n 's/.*llama_perf_context_print: *eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) runs.*/\2/p' "$TMP/lerr")
  samp_ms=$(sed -n 's/.*llama_perf_sampler_print: *sampling time = *\([0-9.]*\) ms.*/\1/p' "$TMP/lerr")
  if [ -z "$eval_ms" ] || [ -z "$eval_n" ] || [ "$eval_n" = 0 ]; then echo "nan"; return; fi
  awk -v e="$eval_ms" -v n="$eval_n" -v s="${samp_ms:-0}" 'BEGIN { printf "%.3f\n", (e + s) / (n + 1) }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for SCHEMA in "${SCHEMAS[@]}"; do
echo "schema: $SCHEMA"
: >"$TMP/lokal_free"; : >"$TMP/lokal_json"; : >"$TMP/llama_free"; : >"$TMP/llama_json"
for i in $(seq "$R"); do
  a=$(lokal_ms); b=$(lokal_ms --json-schema "$SCHEMA")
  echo "$a" >>"$TMP/lokal_free"; echo "$b" >>"$TMP/lokal_json"
  echo "run $i lokal:     free $a ms/token, json-schema $b ms/token"
  if [ -n "$LLAMA_BIN" ]; then
    c=$(llama_ms); d=$(llama_ms -j "$SCHEMA")
    echo "$c" >>"$TMP/llama_free"; echo "$d" >>"$TMP/llama_json"
    echo "run $i llama.cpp: free $c ms/token, json-schema $d ms/token"
  fi
done
report() {
  local f j
  f=$(median <"$TMP/$1_free"); j=$(median <"$TMP/$1_json")
  awk -v n="$2" -v f="$f" -v j="$j" 'BEGIN { printf "%-10s median %.2f ms/token free, %.2f ms/token with the schema: %+.1f%%\n", n, f, j, 100 * (j / f - 1) }'
}
report lokal lokal
if [ -n "$LLAMA_BIN" ]; then report llama llama.cpp; fi
done
