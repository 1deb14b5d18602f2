#!/usr/bin/env bash
# Multi-sequence decode speed of lokal and llama.cpp on the same GGUF files, same threads, one after the other.
#
#   LLAMA_CPP_BUILD=/path/to/llama.cpp/build bench/batched_compare.sh [-t 2] [-p 128] [-n 128] [-l 1,2,4,8,16] [-r R] FILE.gguf...
#
# For each file: `lokal bench -m FILE -t T -p P -n N --parallel L --json` (-r R passed on only when given), then
# `$LLAMA_CPP_BUILD/bin/llama-batched-bench -m FILE -c CTX -b 2048 -ub 512 -npp P -ntg N -npl L -t T` (CTX = max(L) *
# (P + N) rounded up to 256; flash attention and KV types left at llama.cpp's defaults), then one table: for every N in
# L, lokal's aggregate decode t/s (avg_ts of its n_gen > 0 test with n_parallel N), llama.cpp's S_TG t/s at B = N,
# lokal/llama.cpp, and each runtime's N vs N=1 scaling; its title says how idle the CPUs were before each half.
# Raw outputs are kept in $OUT_DIR (default: a new temporary folder, printed at the end). LOKAL selects the lokal
# binary (default: build/src/lokal of this checkout); LLAMA_EXTRA_ARGS adds words to the llama-batched-bench command
# (e.g. "-fa"). Needs jq.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

threads=$(nproc)
n_prompt=128
n_gen=128
parallel=1,2,4,8,16
reps=
while getopts "t:p:n:l:r:h" opt; do
  case "$opt" in
    t) threads=$OPTARG ;;
    p) n_prompt=$OPTARG ;;
    n) n_gen=$OPTARG ;;
    l) parallel=$OPTARG ;;
    r) reps=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage

for v in "$threads" "$n_prompt" "$n_gen" ${reps:+"$reps"}; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "error: -t/-p/-n/-r take one whole number, got '$v'" >&2; exit 2; }
done
[[ "$parallel" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "error: -l takes a comma list of counts >= 1, got '$parallel'" >&2; exit 2; }
[ "$n_gen" -gt 0 ] || { echo "error: -n must be > 0 (decode speed is what is compared)" >&2; exit 2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
LOKAL="${LOKAL:-$here/build/src/lokal}"
if [ -z "${LLAMA_CPP_BUILD:-}" ]; then
  echo "error: set LLAMA_CPP_BUILD to a llama.cpp build folder (the one holding bin/llama-batched-bench)" >&2
  exit 2
fi
LLAMA_BB="$LLAMA_CPP_BUILD/bin/llama-batched-bench"
[ -x "$LLAMA_BB" ] || { echo "error: $LLAMA_BB not found or not executable" >&2; exit 2; }
[ -x "$LOKAL" ] || { echo "error: lokal binary $LOKAL not found (build it, or set LOKAL)" >&2; exit 2; }
command -v jq >/dev/null || { echo "error: jq is needed (apt-get install jq, or scripts/setup.sh)" >&2; exit 2; }
for f in "$@"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done

OUT_DIR="${OUT_DIR:-$(mktemp -d -t lokal-batched.XXXXXX)}"
mkdir -p "$OUT_DIR"

# llama-batched-bench skips a B whose B * (PP + TG) exceeds its context: size it for the largest.
max_pl=$(tr ',' '\n' <<< "$parallel" | sort -n | tail -1)
ctx=$(( (max_pl * (n_prompt + n_gen) + 255) / 256 * 256 ))
reps_args=()
[ -z "$reps" ] || reps_args=(-r "$reps")
read -r -a llama_extra <<< "${LLAMA_EXTRA_ARGS:-}"

# lokal's JSON: an array of test objects (JSON lines or a lone object are read too); those with n_gen > 0 are decode
# tests. Prints "N<TAB>t/s" per n_parallel (an absent field counts as 1): of several decode tests with the same N, the
# one of least n_depth, then the first. Other fields are not looked at.
lokal_rows() {
  jq -rs '
    [ .[] | (if type == "array" then .[] else . end)
      | select(type == "object" and ((.n_gen // 0) | tonumber) > 0 and .avg_ts != null)
      | {n: ((.n_parallel // 1) | tonumber), ts: (.avg_ts | tonumber), d: ((.n_depth // 0) | tonumber)} ]
    | group_by(.n) | .[] | (map(.d) | min) as $d | (map(select(.d == $d)) | first) | [.n, .ts] | @tsv' "$1"
}

# llama-batched-bench's markdown table: columns found by header name ("B", "PP", "TG", "S_TG t/s"); prints
# "B<TAB>S_TG" for rows of this PP / TG.
llama_rows() {
  awk -F'|' -v pp="$2" -v tg="$3" '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    /^\|/ && !have {
      for (i = 2; i < NF; i++) { h = trim($i); col[h] = i }
      if (("B" in col) && ("S_TG t/s" in col)) have = 1; else delete col
      next
    }
    /^\|/ && have {
      b = trim($(col["B"])); s = trim($(col["S_TG t/s"]))
      if (b !~ /^[0-9]+$/) next
      if (("PP" in col) && trim($(col["PP"])) != pp) next
      if (("TG" in col) && trim($(col["TG"])) != tg) next
      print b "\t" s
    }' "$1"
}

# Percent of CPU time idle over the next 2 s (all cores; "?" without /proc/stat). llama.cpp's spinning thread
# barriers slow down 10x and more when another process takes one of the -t cores, so each table says whether the
# machine was quiet when each half started.
idle_pct() {
  local a b
  a=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat 2>/dev/null) || { echo "?"; return; }
  sleep 2
  b=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat 2>/dev/null) || { echo "?"; return; }
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2];
    print (d > 0 ? sprintf("%.0f%%", 100 * (y[1] - x[1]) / d) : "?") }'
}

tables="$OUT_DIR/tables.md"
: > "$tables"
i=0
for f in "$@"; do
  i=$((i + 1))
  base="$(basename "$f" .gguf)"
  lj="$OUT_DIR/$i-$base.lokal.json"
  lt="$OUT_DIR/$i-$base.llama.txt"
  idle_lokal=$(idle_pct)
  echo "[$i/$#] $base: lokal" >&2
  if ! "$LOKAL" bench -m "$f" -t "$threads" -p "$n_prompt" -n "$n_gen" --parallel "$parallel" "${reps_args[@]}" --json \
    > "$lj" 2> "$OUT_DIR/$i-$base.lokal.log"; then
    tail -5 "$OUT_DIR/$i-$base.lokal.log" >&2
    echo "error: lokal bench failed on $f (log: $OUT_DIR/$i-$base.lokal.log)" >&2
    exit 1
  fi
  idle_llama=$(idle_pct)
  echo "[$i/$#] $base: llama.cpp" >&2
  if ! "$LLAMA_BB" -m "$f" -c "$ctx" -b 2048 -ub 512 -npp "$n_prompt" -ntg "$n_gen" -npl "$parallel" -t "$threads" \
    "${llama_extra[@]}" > "$lt" 2>&1; then
    tail -5 "$lt" >&2
    echo "error: llama-batched-bench failed on $f (output: $lt)" >&2
    exit 1
  fi

  lokal_rows "$lj" > "$OUT_DIR/$i-$base.lokal.tsv"
  llama_rows "$lt" "$n_prompt" "$n_gen" > "$OUT_DIR/$i-$base.llama.tsv"
  [ -s "$OUT_DIR/$i-$base.lokal.tsv" ] || echo "warning: $base: no decode test (n_gen > 0) in $lj" >&2
  [ -s "$OUT_DIR/$i-$base.llama.tsv" ] || echo "warning: $base: no llama-batched-bench table in $lt" >&2

  {
    echo "### $base (idle CPU in the 2 s before lokal: $idle_lokal, before llama.cpp: $idle_llama)"
    echo
    awk -F'\t' -v list="$parallel" '
      FILENAME == ARGV[1] { lk[$1] = $2; next }
      FILENAME == ARGV[2] { ll[$1] = $2; next }
      END {
        fmt = "| %4s | %14s | %18s | %11s | %13s | %13s |\n";
        printf fmt, "N", "lokal t/s", "llama.cpp S_TG t/s", "lokal/llama", "lokal N/N=1", "llama N/N=1";
        printf fmt, "---:", "-------------:", "-----------------:", "----------:", "------------:", "------------:";
        n = split(list, ns, ",");
        for (k = 1; k <= n; k++) {
          N = ns[k];
          a = (N in lk) ? sprintf("%.2f", lk[N]) : "n/a";
          b = (N in ll) ? sprintf("%.2f", ll[N]) : "n/a";
          r = ((N in lk) && (N in ll) && ll[N] + 0 > 0) ? sprintf("%.2fx", lk[N] / ll[N]) : "n/a";
          s = ((N in lk) && (1 in lk) && lk[1] + 0 > 0) ? sprintf("%.2fx", lk[N] / lk[1]) : "n/a";
          t = ((N in ll) && (1 in ll) && ll[1] + 0 > 0) ? sprintf("%.2fx", ll[N] / ll[1]) : "n/a";
          printf fmt, N, a, b, r, s, t;
        }
      }' "$OUT_DIR/$i-$base.lokal.tsv" "$OUT_DIR/$i-$base.llama.tsv"
    echo
  } >> "$tables"
done

echo
echo "lokal vs llama.cpp llama-batched-bench, $threads threads, -p $n_prompt -n $n_gen, N = $parallel (llama.cpp -c $ctx -b 2048 -ub 512$( [ ${#llama_extra[@]} -eq 0 ] || echo " ${llama_extra[*]}")), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "lokal t/s: aggregate decode tokens/s over N sequences (avg_ts); llama.cpp: S_TG t/s = B*TG / T_TG"
echo
cat "$tables"
echo "raw outputs: $OUT_DIR" >&2
