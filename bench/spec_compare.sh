#!/usr/bin/env bash
# Speculative decoding of lokal run and llama.cpp's llama-speculative-simple / llama-lookup, side by side.
#
#   [LOKAL=build/src/lokal] [LLAMA_BIN=/path/to/llama.cpp/build/bin] [MODELS=../shared/models/real]
#   [SYNTH_DIR=/tmp/spec-models] [THREADS=2] [N=128] [REPS=3] [DRAFT_MAX=16] [PAIRS="a b c d"] bench/spec_compare.sh
#
# Pairs (target + draft): a = tinytales-4m-f32 + tinytales-draft-1m-q8_0 (same vocab), b = tinychat-4m-f32 +
# tinychat-draft-1m-q8_0 (same vocab), c = tinytales-4m-f32 + tinytales-draft-v1024-q8_0 (another vocab: lokal with
# --draft-vocab intersect and text; llama.cpp refuses such a pair), d = SYNTH_DIR/tinyllama-1.1b-synth-f16.gguf +
# the same weights (same --seed) as -q8_0 (skipped when absent; make them with `lokal synth --preset tinyllama-1.1b
# --type F16|Q8_0 --seed 42 -o ...`). Prompts: bench/spec_prompts/{tales,chat}-*.txt, raw text as fed to the model
# (chat ones already rendered in tinychat's ChatML template); a and c run tales-*, b chat-*, d SYNTH_PROMPTS.
# For each pair and prompt, REPS rounds, each running one after the other with THREADS threads, greedy, N tokens,
# end of generation ignored:
#   lokal plain        lokal run -m T -p PROMPT -n N --temp 0 -t THREADS -c CTX --ignore-eos
#   lokal spec         ... --draft D --draft-max DRAFT_MAX [--draft-vocab V]     (its stderr "speculative:" line)
#   lokal n-gram       ... --draft-ngram --draft-max DRAFT_MAX      (prompts whose name has a word of NGRAM_PROMPTS,
#                      default "copy tool"; NGRAM_ALL=1: every prompt; not for pair c, whose target is pair a's)
#   llama.cpp plain    llama-cli -m T -p PROMPT -n N --temp 0 -t THREADS -c CTX --ignore-eos -no-cnv --no-escape
#                      (eval-time tokens/s; llama-simple has no -t and runs 4 threads, so it is not used)
#   llama.cpp spec     llama-speculative-simple ... -md D -cd CTX --draft-max DRAFT_MAX [--draft-p-min P] --ignore-eos
#   llama.cpp n-gram   llama-lookup ... --draft-max DRAFT_MAX --ignore-eos
# Prints one markdown table: medians of REPS tokens/s; acceptance = accepted / drafted; tokens/pass = generated tokens
# per target forward pass, plain passes included (tokens / (tokens - accepted); lokal's own figure, per speculative
# pass, in brackets); "same text" = lokal's speculative output is byte-identical to its plain output (greedy
# speculative decoding must not change the text). llama.cpp's speculative examples stop after the first pass that
# goes past N, so they may emit a few more tokens: counts are shown. Both tools default to draft-max 16 and p-min 0.75,
# but llama.cpp compares p-min with the draft's top probability renormalized over its 10 most likely tokens.
# DRAFT_P_MIN (unset: each tool's default) is passed to both as --draft-p-min (to lokal when its run --help lists it).
# LOKAL_SPEC_ARGS / LLAMA_SPEC_ARGS add words to the speculative commands. Raw outputs are kept in OUT_DIR (default:
# a new temporary folder, printed at the end).
set -euo pipefail

usage() {
  sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[ $# -eq 0 ] || usage

here="$(cd "$(dirname "$0")/.." && pwd)"
LOKAL="${LOKAL:-$here/build/src/lokal}"
LLAMA_BIN="${LLAMA_BIN:-${LLAMA_CPP_BUILD:+$LLAMA_CPP_BUILD/bin}}"
LLAMA_BIN="${LLAMA_BIN:-/tmp/llamacpp-build/bin}"
MODELS="${MODELS:-$here/../shared/models/real}"
SYNTH_DIR="${SYNTH_DIR:-/tmp/spec-models}"
PROMPTS="${PROMPTS:-$here/bench/spec_prompts}"
THREADS="${THREADS:-2}"
N="${N:-128}"
REPS="${REPS:-3}"
DRAFT_MAX="${DRAFT_MAX:-16}"
DRAFT_P_MIN="${DRAFT_P_MIN:-}"
PAIRS="${PAIRS:-a b c d}"
NGRAM_ALL="${NGRAM_ALL:-0}"
NGRAM_PROMPTS="${NGRAM_PROMPTS:-copy tool}"
SYNTH_PROMPTS="${SYNTH_PROMPTS:-tales-story-1 tales-copy-1}"

for v in "$THREADS" "$N" "$REPS" "$DRAFT_MAX"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "error: THREADS/N/REPS/DRAFT_MAX take a whole number > 0, got '$v'" >&2; exit 2; }
done
[ -x "$LOKAL" ] || { echo "error: lokal binary $LOKAL not found (build it, or set LOKAL)" >&2; exit 2; }
for b in llama-cli llama-speculative-simple llama-lookup; do
  [ -x "$LLAMA_BIN/$b" ] || { echo "error: $LLAMA_BIN/$b not found (cmake --build BUILD --target $b; set LLAMA_BIN)" >&2; exit 2; }
done
[ -d "$PROMPTS" ] || { echo "error: prompt folder $PROMPTS not found" >&2; exit 2; }

OUT_DIR="${OUT_DIR:-$(mktemp -d -t lokal-spec.XXXXXX)}"
mkdir -p "$OUT_DIR"
runs="$OUT_DIR/runs.tsv"
: > "$runs"

# Which speculative flags this lokal has (the feature may be missing from an older binary: its columns say n/a).
lokal_help=$("$LOKAL" run --help 2>&1 || true)
has_flag() { grep -qE -- "(^|[ ,])$1([ =,]|\$)" <<< "$lokal_help"; }
lokal_draft=0; lokal_ngram=0; lokal_vocab=0; lokal_pmin=0
has_flag --draft && has_flag --draft-max && lokal_draft=1
has_flag --draft-ngram && lokal_ngram=1
has_flag --draft-vocab && lokal_vocab=1
has_flag --draft-p-min && lokal_pmin=1
[ "$lokal_draft" = 1 ] || echo "warning: $LOKAL run has no --draft: lokal speculative columns will be n/a" >&2

# Percent of CPU time idle over the next 2 s (see bench/batched_compare.sh).
idle_pct() {
  local a b
  a=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat 2>/dev/null) || { echo "?"; return; }
  sleep 2
  b=$(awk '/^cpu /{print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat 2>/dev/null) || { echo "?"; return; }
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2];
    print (d > 0 ? sprintf("%.0f%%", 100 * (y[1] - x[1]) / d) : "?") }'
}

# ---- parsers: each prints "tps<TAB>tokens<TAB>drafted<TAB>accepted<TAB>tokens_per_pass<TAB>prompt_tokens" ("-" = none)
# lokal: "prompt: P tokens in ..." and "generation: X tokens in Y ms (Z tokens/s), stop: ..." and, when speculative,
# "speculative: METHOD | drafted D, accepted A (R%), T tokens/target pass, draft X ms, verify Y ms, est. speed-up S x"
parse_lokal() {
  awk '
    /^prompt: [0-9]+ tokens/ { pt = $2 }
    /^generation: [0-9]+ tokens in / {
      ntok = $2
      if (match($0, /\(([0-9.]+) tokens\/s\)/)) { s = substr($0, RSTART + 1, RLENGTH - 1); split(s, a, " "); tps = a[1] }
    }
    /^speculative: .*\| *drafted / {
      line = $0
      if (match(line, /drafted [0-9]+/)) dr = substr(line, RSTART + 8, RLENGTH - 8)
      if (match(line, /accepted [0-9]+/)) ac = substr(line, RSTART + 9, RLENGTH - 9)
      if (match(line, /[0-9.]+ tokens\/target pass/)) { s = substr(line, RSTART, RLENGTH); split(s, a, " "); tpp = a[1] }
      m = line; sub(/^speculative: */, "", m); sub(/ *\|.*$/, "", m); gsub(/[\t ]+/, "%20", m)
    }
    END {
      if (tps == "") exit 1
      # tokens per target pass over the whole generation (plain passes included), as for llama.cpp below;
      # lokal'"'"'s own figure (per speculative pass) is kept after a slash
      if (ac != "" && ntok - ac > 0) tpp = sprintf("%.2f", ntok / (ntok - ac)) "/" (tpp == "" ? "-" : tpp)
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", tps, ntok, (dr == "" ? "-" : dr), (ac == "" ? "-" : ac), (tpp == "" ? "-" : tpp), (pt == "" ? "-" : pt), (m == "" ? "-" : m)
    }' "$1"
}
# llama-cli: "llama_perf_context_print: eval time = X ms / R runs ( ... ms per token, Z tokens per second)"; the
# first generated token comes out of the prompt pass, so tokens = R + 1.
parse_llama_cli() {
  awk '
    /llama_perf_context_print: +prompt eval time/ { for (i = 1; i <= NF; i++) if ($i == "/") { pt = $(i + 1); break } }
    /llama_perf_context_print: +eval time/ {
      for (i = 1; i <= NF; i++) { if ($i == "/") r = $(i + 1); if ($i == "tokens" && $(i + 1) == "per") tps = $(i - 1) }
    }
    END { if (tps == "") exit 1; printf "%s\t%s\t-\t-\t-\t%s\t-\n", tps, r + 1, (pt == "" ? "-" : pt) }' "$1"
}
# llama-speculative-simple / llama-lookup: "encoded P tokens ...", "decoded N tokens in T seconds, speed: Z t/s",
# "n_drafted = D", "n_accept = A"
parse_llama_spec() {
  awk '
    /encoded +[0-9]+ tokens in/ { for (i = 1; i <= NF; i++) if ($i == "encoded") pt = $(i + 1) }
    /decoded +[0-9]+ tokens in/ {
      for (i = 1; i <= NF; i++) { if ($i == "decoded") ntok = $(i + 1); if ($i == "speed:") tps = $(i + 1) }
    }
    /n_drafted +=/ { dr = $NF }
    /n_accept +=/ { ac = $NF }
    END {
      if (tps == "") exit 1
      tpp = (ntok - ac > 0) ? sprintf("%.2f", ntok / (ntok - ac)) : "-"
      printf "%s\t%s\t%s\t%s\t%s\t%s\t-\n", tps, ntok, dr, ac, tpp, (pt == "" ? "-" : pt)
    }' "$1"
}

# run ENGINE MODE PAIR PROMPT REP PARSER CMD...: runs CMD (stdout and stderr kept apart), appends one line to runs.tsv:
# pair prompt engine mode rep status tps tokens drafted accepted tpp prompt_tokens method (lokal's, spaces as %20)
run_one() {
  local engine=$1 mode=$2 pair=$3 pname=$4 rep=$5 parser=$6
  shift 6
  local stem="$OUT_DIR/$pair.$pname.$engine.$mode.$rep"
  local status=ok fields
  printf '%s\n' "$*" > "$stem.cmd"
  if ! "$@" > "$stem.out" 2> "$stem.err" < /dev/null; then
    status=fail
    if grep -q "vocab" "$stem.err" && grep -qiE "must (closely )?match|are_compatible" "$stem.err"; then status=refused; fi
  fi
  if [ "$status" = ok ] && fields=$("$parser" "$stem.err"); then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$pname" "$engine" "$mode" "$rep" ok "$fields" >> "$runs"
  else
    [ "$status" = ok ] && status=noparse
    printf '%s\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\n' "$pair" "$pname" "$engine" "$mode" "$rep" "$status" >> "$runs"
    echo "  $engine $mode: $status (see $stem.err)" >&2
  fi
}

pair_def() {  # pair -> "target draft ctx prompt-glob label"
  case "$1" in
    a) echo "$MODELS/tinytales-4m-f32.gguf $MODELS/tinytales-draft-1m-q8_0.gguf 256 tales tinytales-4m-f32+draft-1m-q8_0" ;;
    b) echo "$MODELS/tinychat-4m-f32.gguf $MODELS/tinychat-draft-1m-q8_0.gguf 512 chat tinychat-4m-f32+draft-1m-q8_0" ;;
    c) echo "$MODELS/tinytales-4m-f32.gguf $MODELS/tinytales-draft-v1024-q8_0.gguf 256 tales tinytales-4m-f32+draft-v1024-q8_0" ;;
    d) echo "$SYNTH_DIR/tinyllama-1.1b-synth-f16.gguf $SYNTH_DIR/tinyllama-1.1b-synth-q8_0.gguf 512 synth tinyllama-1.1b-synth-f16+q8_0" ;;
    *) return 1 ;;
  esac
}

idle_notes=()
for pair in $PAIRS; do
  def=$(pair_def "$pair") || { echo "error: unknown pair '$pair' (a b c d)" >&2; exit 2; }
  read -r target draft ctx pglob label <<< "$def"
  if [ ! -f "$target" ] || [ ! -f "$draft" ]; then
    echo "warning: pair $pair skipped: $target or $draft missing" >&2
    continue
  fi
  prompt_files=()
  if [ "$pglob" = synth ]; then
    for p in $SYNTH_PROMPTS; do prompt_files+=("$PROMPTS/$p.txt"); done
  else
    prompt_files=("$PROMPTS/$pglob"-*.txt)
  fi
  # speculative modes of lokal for this pair: name and extra words
  modes=(); margs=()
  if [ "$pair" = c ]; then
    if [ "$lokal_vocab" = 1 ]; then
      for v in intersect text; do modes+=("draft-vocab-$v"); margs+=("--draft $draft --draft-vocab $v"); done
    else
      modes+=(draft); margs+=("--draft $draft")
    fi
  else
    modes+=(draft); margs+=("--draft $draft")
  fi
  idle_notes+=("$pair: $(idle_pct) idle before")
  for pf in "${prompt_files[@]}"; do
    [ -f "$pf" ] || { echo "warning: prompt $pf missing" >&2; continue; }
    pname=$(basename "$pf" .txt)
    prompt=$(cat "$pf"; printf x); prompt=${prompt%x}   # keep trailing newlines (ChatML ends with "assistant\n")
    ngram=0
    # n-gram drafting uses no draft model: pair c would repeat pair a's target-only runs
    for w in $NGRAM_PROMPTS; do [[ "$pname" == *"$w"* ]] && ngram=1; done
    [ "$NGRAM_ALL" = 1 ] && ngram=1
    [ "$pair" = c ] && ngram=0
    common_l=(-m "$target" -p "$prompt" -n "$N" --temp 0 -t "$THREADS" -c "$ctx" --ignore-eos)
    common_ll=(-m "$target" -p "$prompt" -n "$N" --temp 0 -t "$THREADS" -c "$ctx" --ignore-eos --no-escape)
    pmin_l=(); pmin_ll=()
    if [ -n "$DRAFT_P_MIN" ]; then pmin_ll=(--draft-p-min "$DRAFT_P_MIN"); [ "$lokal_pmin" = 1 ] && pmin_l=(--draft-p-min "$DRAFT_P_MIN"); fi
    read -r -a lextra <<< "${LOKAL_SPEC_ARGS:-}"
    read -r -a llextra <<< "${LLAMA_SPEC_ARGS:-}"
    for rep in $(seq 1 "$REPS"); do
      echo "[pair $pair] $pname: round $rep/$REPS" >&2
      run_one lokal plain "$pair" "$pname" "$rep" parse_lokal "$LOKAL" run "${common_l[@]}"
      if [ "$lokal_draft" = 1 ]; then
        for k in "${!modes[@]}"; do
          read -r -a ma <<< "${margs[$k]}"
          run_one lokal "${modes[$k]}" "$pair" "$pname" "$rep" parse_lokal \
            "$LOKAL" run "${common_l[@]}" "${ma[@]}" --draft-max "$DRAFT_MAX" "${pmin_l[@]}" "${lextra[@]}"
        done
      fi
      if [ "$ngram" = 1 ] && [ "$lokal_ngram" = 1 ]; then
        run_one lokal ngram "$pair" "$pname" "$rep" parse_lokal \
          "$LOKAL" run "${common_l[@]}" --draft-ngram --draft-max "$DRAFT_MAX" "${lextra[@]}"
      fi
      run_one llama plain "$pair" "$pname" "$rep" parse_llama_cli \
        "$LLAMA_BIN/llama-cli" "${common_ll[@]}" -no-cnv
      run_one llama draft "$pair" "$pname" "$rep" parse_llama_spec \
        "$LLAMA_BIN/llama-speculative-simple" "${common_ll[@]}" -md "$draft" -cd "$ctx" --draft-max "$DRAFT_MAX" \
        "${pmin_ll[@]}" "${llextra[@]}"
      if [ "$ngram" = 1 ]; then
        run_one llama ngram "$pair" "$pname" "$rep" parse_llama_spec \
          "$LLAMA_BIN/llama-lookup" "${common_ll[@]}" --draft-max "$DRAFT_MAX" "${llextra[@]}"
      fi
    done
    # greedy speculative output must equal the plain output: compare round 1's texts
    for m in "${modes[@]}" ngram; do
      s="$OUT_DIR/$pair.$pname.lokal.$m.1.out"
      [ -f "$s" ] || continue
      if cmp -s "$OUT_DIR/$pair.$pname.lokal.plain.1.out" "$s"; then same=yes; else same=NO; fi
      printf '%s\t%s\t%s\t%s\n' "$pair" "$pname" "$m" "$same" >> "$OUT_DIR/same.tsv"
    done
  done
  printf '%s\t%s\n' "$pair" "$label" >> "$OUT_DIR/labels.tsv"
done
touch "$OUT_DIR/same.tsv" "$OUT_DIR/labels.tsv"

# ---- table: one row per pair x prompt x speculative method (draft / draft-vocab-* / ngram); llama.cpp's method is
# draft for draft rows (also the draft-vocab rows of pair c, where it refuses) and llama-lookup for ngram rows.
report="$OUT_DIR/table.md"
awk -F'\t' '
  function med(key,   n, i, j, t, v) {
    n = cnt[key]; if (n == 0) return ""
    for (i = 1; i <= n; i++) v[i] = vals[key, i]
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function f2(x) { return (x == "") ? "n/a" : sprintf("%.1f", x) }
  function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2fx", a / b) }
  function acc(key) { if (!(key in dr) || dr[key] == "-") return "n/a"; return (dr[key] + 0 > 0) ? sprintf("%.1f%% (%d/%d)", 100 * ac[key] / dr[key], ac[key], dr[key]) : "- (0 drafted)" }
  function stat(key) { return (key in bad) ? bad[key] : "" }
  FILENAME == ARGV[1] { label[$1] = $2; next }
  FILENAME == ARGV[2] { same[$1 SUBSEP $2 SUBSEP $3] = $4; next }
  {
    key = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4
    if (!((($1 SUBSEP $2) in seen))) { seen[$1 SUBSEP $2] = 1; order[++no] = $1 SUBSEP $2 }
    if ($3 == "lokal" && $4 != "plain" && !((($1 SUBSEP $2 SUBSEP $4) in mseen))) { mseen[$1 SUBSEP $2 SUBSEP $4] = 1; mlist[$1 SUBSEP $2] = mlist[$1 SUBSEP $2] " " $4 }
    if ($3 == "llama" && $4 == "ngram" && !((($1 SUBSEP $2 SUBSEP "ngram") in mseen))) { mseen[$1 SUBSEP $2 SUBSEP "ngram"] = 1; mlist[$1 SUBSEP $2] = mlist[$1 SUBSEP $2] " ngram" }
    if ($3 == "llama" && $4 == "draft" && !((($1 SUBSEP $2 SUBSEP "llama-draft") in mseen))) { mseen[$1 SUBSEP $2 SUBSEP "llama-draft"] = 1; lldraft[$1 SUBSEP $2] = 1 }
    if ($6 != "ok") { bad[key] = $6; next }
    vals[key, ++cnt[key]] = $7
    ntok[key] = $8; dr[key] = $9; ac[key] = $10; tpp[key] = $11; pt[key] = $12; meth[key] = $13
  }
  END {
    print "| pair | prompt | method | lokal plain t/s | lokal spec t/s | lokal speed-up | lokal acceptance | tokens/pass | same text | llama.cpp plain t/s | llama.cpp spec t/s | llama.cpp speed-up | llama.cpp acceptance | llama.cpp tokens/pass | tokens lokal / llama.cpp | prompt tokens lokal / llama.cpp |"
    print "|---|---|---|--:|--:|--:|--:|--:|:-:|--:|--:|--:|--:|--:|--:|--:|"
    for (o = 1; o <= no; o++) {
      split(order[o], pp, SUBSEP); p = pp[1]; q = pp[2]
      ml = mlist[p SUBSEP q]
      if (ml == "" && (p SUBSEP q) in lldraft) ml = " draft"
      nm = split(ml, ms, " ")
      for (k = 1; k <= nm; k++) {
        m = ms[k]
        lp = p SUBSEP q SUBSEP "lokal" SUBSEP "plain"; ls = p SUBSEP q SUBSEP "lokal" SUBSEP m
        llm = (m == "ngram") ? "ngram" : "draft"
        qp = p SUBSEP q SUBSEP "llama" SUBSEP "plain"; qs = p SUBSEP q SUBSEP "llama" SUBSEP llm
        a = med(lp); b = med(ls); c = med(qp); d = med(qs)
        bs = (b == "") ? ((stat(ls) != "") ? stat(ls) : "n/a") : f2(b)
        ds = (d == "") ? ((stat(qs) != "") ? stat(qs) : "n/a") : f2(d)
        sm = ((p SUBSEP q SUBSEP m) in same) ? same[p SUBSEP q SUBSEP m] : "n/a"
        mname = m
        if ((ls in meth) && meth[ls] != "-") { t = meth[ls]; gsub(/%20/, " ", t); mname = mname " (lokal: " t ")" }
        if (m == "ngram") mname = mname ", llama-lookup"
        tp = (ls in tpp) ? tpp[ls] : "n/a"
        if (index(tp, "/")) { split(tp, tt, "/"); tp = tt[1] ((tt[2] == "-") ? "" : " (" tt[2] " per spec. pass)") }
        printf "| %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s |\n",
          p, label[p], q, mname, f2(a), bs, ratio(b, a), acc(ls), tp, sm,
          f2(c), ds, ratio(d, c), acc(qs), ((qs in tpp) ? tpp[qs] : "n/a"),
          ((ls in ntok) ? ntok[ls] : "-"), ((qs in ntok) ? ntok[qs] : "-"),
          ((lp in pt) ? pt[lp] : "-"), ((qs in pt) ? pt[qs] : ((qp in pt) ? pt[qp] : "-"))
      }
    }
  }' "$OUT_DIR/labels.tsv" "$OUT_DIR/same.tsv" "$runs" > "$report"

echo
echo "lokal run --draft vs llama.cpp llama-speculative-simple / llama-lookup: $THREADS threads, -n $N, greedy, end of generation ignored, --draft-max $DRAFT_MAX${DRAFT_P_MIN:+, --draft-p-min $DRAFT_P_MIN}, median of $REPS, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "lokal: $LOKAL ($(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$here" diff --quiet 2>/dev/null || echo ', dirty tree')); llama.cpp: $LLAMA_BIN; CPU idle: ${idle_notes[*]:-}"
echo "t/s: lokal = its \"generation:\" line; llama.cpp plain = llama-cli eval time; llama.cpp spec = the example's \"decoded ... speed\" (its decode loop: draft, verify and sampling)"
echo
cat "$report"
echo "raw outputs: $OUT_DIR" >&2
