#!/usr/bin/env bash
# Side-by-side speed of lokal and llama.cpp on the same GGUF files, same threads, one after the other.
#
#   LLAMA_CPP_BUILD=/path/to/llama.cpp/build bench/compare.sh [-t 2] [-p 512] [-n 128] [-r 5] [-d 0] [-g NGL] FILE.gguf...
#
# For each file: `lokal bench --json` then `$LLAMA_CPP_BUILD/bin/llama-bench -o json` with the same -t/-p/-n/-r
# (and -d when not 0; llama-bench has it since mid-2025), then one table: t/s of each and the ratio lokal/llama.cpp
# for every test (ppP, tgN). Raw JSON is kept in $OUT_DIR (default: a new temporary folder, printed at the end).
# LOKAL selects the lokal binary (default: build/src/lokal of this checkout). Needs jq.
set -euo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

threads=$(nproc)
n_prompt=512
n_gen=128
reps=5
depth=0
ngl=0  # -g: GPU layers for both (-ngl; llama.cpp built with its Vulkan or CUDA backend)
while getopts "t:p:n:r:d:g:h" opt; do
  case "$opt" in
    t) threads=$OPTARG ;;
    p) n_prompt=$OPTARG ;;
    n) n_gen=$OPTARG ;;
    r) reps=$OPTARG ;;
    d) depth=$OPTARG ;;
    g) ngl=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage

here="$(cd "$(dirname "$0")/.." && pwd)"
LOKAL="${LOKAL:-$here/build/src/lokal}"
if [ -z "${LLAMA_CPP_BUILD:-}" ]; then
  echo "error: set LLAMA_CPP_BUILD to a llama.cpp build folder (the one holding bin/llama-bench)" >&2
  exit 2
fi
LLAMA_BENCH="$LLAMA_CPP_BUILD/bin/llama-bench"
[ -x "$LLAMA_BENCH" ] || { echo "error: $LLAMA_BENCH not found or not executable" >&2; exit 2; }
[ -x "$LOKAL" ] || { echo "error: lokal binary $LOKAL not found (build it, or set LOKAL)" >&2; exit 2; }
command -v jq >/dev/null || { echo "error: jq is needed (apt-get install jq, or scripts/setup.sh)" >&2; exit 2; }
for f in "$@"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done

OUT_DIR="${OUT_DIR:-$(mktemp -d -t lokal-compare.XXXXXX)}"
mkdir -p "$OUT_DIR"

depth_args=()
[ "$depth" = "0" ] || depth_args=(-d "$depth")

rows="$OUT_DIR/rows.tsv"
: > "$rows"
i=0
for f in "$@"; do
  i=$((i + 1))
  base="$(basename "$f" .gguf)"
  lj="$OUT_DIR/$i-$base.lokal.json"
  cj="$OUT_DIR/$i-$base.llama.json"
  echo "[$i/$#] $base: lokal" >&2
  "$LOKAL" bench -m "$f" -t "$threads" -p "$n_prompt" -n "$n_gen" -r "$reps" "${depth_args[@]}" -ngl "$ngl" --json -q > "$lj"
  echo "[$i/$#] $base: llama.cpp" >&2
  "$LLAMA_BENCH" -m "$f" -t "$threads" -p "$n_prompt" -n "$n_gen" -r "$reps" "${depth_args[@]}" -ngl "$ngl" -o json > "$cj" 2> "$OUT_DIR/$i-$base.llama.log"
  # One row per lokal test, joined with llama-bench's test of the same n_prompt / n_gen / depth.
  jq -r -n --arg file "$base" --slurpfile L "$lj" --slurpfile C "$cj" '
    $L[0][] as $l
    | ([$C[0][] | select(.n_prompt == $l.n_prompt and .n_gen == $l.n_gen and ((.n_depth // 0) == ($l.n_depth // 0)))]
       | first) as $c
    | [$file, $l.model_type, $l.test, $l.avg_ts, $l.stddev_ts, ($c.avg_ts // "nan"), ($c.stddev_ts // "nan"),
       ($l.mem_bw_pct // 0)]
    | @tsv' >> "$rows"
done

threads_used=$(jq -r '.[0].n_threads' "$OUT_DIR/1-$(basename "$1" .gguf).lokal.json")
llama_commit=$(jq -r '.[0].build_commit + " (build " + (.[0].build_number | tostring) + ")"' "$OUT_DIR/1-$(basename "$1" .gguf).llama.json")
echo
echo "lokal vs llama.cpp $llama_commit, $threads_used threads, -p $n_prompt -n $n_gen -r $reps$( [ "$depth" = 0 ] || echo " -d $depth")$( [ "$ngl" = 0 ] || echo " -ngl $ngl"), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpu: $(jq -r '.[0].cpu_info' "$OUT_DIR/1-$(basename "$1" .gguf).lokal.json")"
echo
awk -F'\t' '
  BEGIN {
    printf "| %-28s | %-26s | %-14s | %18s | %18s | %13s | %13s |\n", "file", "model", "test", "lokal t/s", "llama.cpp t/s", "lokal/llama", "bw ceiling";
    printf "| %-28s | %-26s | %-14s | %18s | %18s | %13s | %13s |\n", "----------------------------", "--------------------------", "--------------", "-----------------:", "-----------------:", "------------:", "------------:";
  }
  {
    ratio = ($6 == "nan" || $6 + 0 == 0) ? "n/a" : sprintf("%.2fx", $4 / $6);
    ll = ($6 == "nan") ? "n/a" : sprintf("%.2f ± %.2f", $6, $7);
    # Decode reads every weight once per token: llama.cpp at llama_ts reads pct * llama_ts / lokal_ts
    # percent of the measured bandwidth, so no runtime reading the same bytes can beat it by more
    # than 100 / that.
    ceil = ($8 + 0 > 0 && $6 != "nan" && $6 + 0 > 0) ? sprintf("%.2fx", 100 / ($8 * $6 / $4)) : "-";
    printf "| %-28s | %-26s | %-14s | %18s | %18s | %13s | %13s |\n", $1, $2, $3, sprintf("%.2f ± %.2f", $4, $5), ll, ratio, ceil;
  }' "$rows"
echo
echo "bw ceiling (decode): the most any runtime reading the same weight bytes per token could beat llama.cpp by,"
echo "given the memory read bandwidth lokal bench measured in the same run."
echo
echo "raw JSON: $OUT_DIR" >&2
