#!/usr/bin/env bash
# HTTP serving throughput of lokal serve and llama.cpp's llama-server on the same GGUF file, side by side.
#
#   LLAMA_CPP_BUILD=/path/to/llama.cpp/build bench/serve_compare.sh [-t 2] [-n 64] [-r 2] [-c 1,4,8,16] FILE.gguf
#
# For each concurrency C in -c: both servers are started with the same threads (-t), C parallel slots, a context of
# 512 tokens per slot (llama-server: -c 512*C, its context being shared by its slots; lokal: -c 512 --parallel C),
# on 127.0.0.1; then build/bench/serve_load sends R*C streaming /completion requests (-r R per client) of -n tokens each
# (end-of-generation ignored, temperature 0.8, a seed per request, the same prompts) from C clients, one server at a
# time (the other is stopped). Prints one table: aggregate generated tokens/s, TTFT p50 and p99 of both, and the
# tokens/s ratio lokal / llama-server. Raw JSON results are kept in $OUT_DIR (default: a new temporary folder).
set -euo pipefail

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

threads=$(nproc)
n_gen=64
reqs=2
conc=1,4,8,16
while getopts "t:n:r:c:h" opt; do
  case "$opt" in
    t) threads=$OPTARG ;;
    n) n_gen=$OPTARG ;;
    r) reqs=$OPTARG ;;
    c) conc=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
model=$1
[ -f "$model" ] || { echo "error: $model: no such file" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
LOKAL=${LOKAL:-$root/build/src/lokal}
LOAD=${LOAD:-$root/build/bench/serve_load}
LLAMA_SERVER=${LLAMA_CPP_BUILD:?set LLAMA_CPP_BUILD to a llama.cpp build folder}/bin/llama-server
for b in "$LOKAL" "$LOAD" "$LLAMA_SERVER"; do [ -x "$b" ] || { echo "error: $b not built" >&2; exit 2; }; done
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/serve-compare.XXXXXX)}
mkdir -p "$OUT_DIR"

port=$((20000 + RANDOM % 20000))
pid=
stop_server() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
}
trap stop_server EXIT

wait_ready() {  # waits for GET /health = 200 (both servers answer it)
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "error: the server exited; see $1" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: the server did not become ready; see $1" >&2
  exit 1
}

run() {  # run NAME C: starts that server with C slots, loads it, stops it
  local name=$1 c=$2 log="$OUT_DIR/$1-c$2.log"
  if [ "$name" = lokal ]; then
    "$LOKAL" serve -m "$model" -t "$threads" --parallel "$c" -c 512 --host 127.0.0.1 --port "$port" --no-access-log 2>"$log" &
  else
    "$LLAMA_SERVER" -m "$model" -t "$threads" -np "$c" -c $((512 * c)) --host 127.0.0.1 --port "$port" 2>"$log" >/dev/null &
  fi
  pid=$!
  wait_ready "$log"
  "$LOAD" --url "http://127.0.0.1:$port" --clients 1 --requests 1 --n-predict 8 >/dev/null  # warm-up
  "$LOAD" --url "http://127.0.0.1:$port" --clients "$c" --requests $((reqs * c)) --n-predict "$n_gen" --json >"$OUT_DIR/$name-c$c.json"
  stop_server
}

printf "%s, %s threads, %s tokens per request, %s requests per client\n" "$(basename "$model")" "$threads" "$n_gen" "$reqs"
printf "%-8s | %16s %10s %10s | %16s %10s %10s | %8s\n" clients "lokal t/s" "TTFT p50" "p99" "llama-srv t/s" "TTFT p50" "p99" "ratio"
IFS=, read -ra cs <<<"$conc"
for c in "${cs[@]}"; do
  run lokal "$c"
  run llama "$c"
  l="$OUT_DIR/lokal-c$c.json" s="$OUT_DIR/llama-c$c.json"
  printf "%-8s | %16.1f %8.0fms %8.0fms | %16.1f %8.0fms %8.0fms | %7.2fx\n" "$c" \
    "$(jq .tokens_per_s "$l")" "$(jq .ttft_p50_ms "$l")" "$(jq .ttft_p99_ms "$l")" \
    "$(jq .tokens_per_s "$s")" "$(jq .ttft_p50_ms "$s")" "$(jq .ttft_p99_ms "$s")" \
    "$(jq -n "$(jq .tokens_per_s "$l") / $(jq .tokens_per_s "$s")")"
  for f in "$l" "$s"; do
    [ "$(jq .errors "$f")" = 0 ] || echo "  warning: $(basename "$f"): $(jq -r '.errors|tostring' "$f") errors ($(jq -r .first_error "$f"))"
  done
done
echo "raw results: $OUT_DIR"
