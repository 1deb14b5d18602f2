#!/usr/bin/env bash
# The GPU speed comparison of docs/PERFORMANCE.md as one prepared run on a lent GPU machine (the device tool), which
# starts bare and reaches nothing: everything comes in the folder bench/gpu_pack.sh made (carried as .gpu).
#
#   bash bench/gpu_device.sh [PACK]          # PACK: .gpu by default; results in $OUT (the device tool's folder)
#
# 1. finds the GPU's Vulkan driver (the NVIDIA ICD file where the machine has one) and checks that lokal runs (else
#    through the packed dynamic loader and libraries);
# 2. writes synth models with real shapes (MODELS, default TinyLlama-1.1B and Qwen2.5-7B in Q4_K_M, Q8_0, F16) to
#    $WORK (default /tmp/lokal-gpu);
# 3. for each: `lokal bench -ngl 99` with the f32 path (LOKAL_GPU_INT8=0) and the int8 path (LOKAL_GPU_INT8=1),
#    then decode once more with command buffers built every step (LOKAL_GPU_REUSE=0: what reusing them saves),
#    then llama.cpp's llama-bench -ngl 99 where PACK/llama holds one, with the same -p/-n/-r (P, N, R);
# 4. OUT/gpu_results.md: one table (t/s, lokal/llama.cpp, decode GB/s and % of the GPU's bandwidth, BW_GBPS or
#    the known figure of the GPU's name) and one of the host's time per command buffer with and without reuse,
#    OUT/gpu_results.jsonl (every result), OUT/gpu_run.log (all output). The tables are rewritten after every model,
#    so a run stopped by the device tool's time limit still leaves those of the models it finished.
# Each step has its own time limit (STEP_S, default 240 s) so that one hang leaves the rest.
set -uo pipefail

PACK="$(cd "${1:-.gpu}" && pwd)"
OUT="${OUT:-/tmp/lokal-gpu-out}"
WORK="${WORK:-/tmp/lokal-gpu}"
MODELS="${MODELS:-tinyllama-1.1b:Q4_K_M tinyllama-1.1b:Q8_0 tinyllama-1.1b:F16 qwen2.5-7b:Q4_K_M qwen2.5-7b:Q8_0 qwen2.5-7b:F16}"
P="${P:-512}" N="${N:-128}" R="${R:-3}" STEP_S="${STEP_S:-240}"
SYNTH_ARGS="${SYNTH_ARGS:-}"  # e.g. "--layers 2" for a quick trial
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_run.log"
exec > >(tee -a "$LOG") 2>&1

if [ -z "${VK_DRIVER_FILES:-}" ]; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
           /etc/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$f" ]; then export VK_DRIVER_FILES="$f"; break; fi
  done
fi
echo "== VK_DRIVER_FILES=${VK_DRIVER_FILES:-(loader default)}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

# lokal as the machine runs it, or through the packed loader when its own libraries do not fit.
export LOKAL_VULKAN_LOADER="$PACK/lib/app/libvulkan.so.1"
LOKAL=(env LD_LIBRARY_PATH="$PACK/lib/app" "$PACK/lokal")
if ! "${LOKAL[@]}" --version >/dev/null 2>&1; then
  echo "== lokal needs the packed C library here: running it through the packed loader"
  LOKAL=("$PACK/lib/sys/ld-linux-x86-64.so.2" --library-path "$PACK/lib/app:$PACK/lib/sys" "$PACK/lokal")
fi
"${LOKAL[@]}" --version || { echo "error: lokal does not start here"; exit 1; }
echo "== lokal info --devices"
timeout "$STEP_S" "${LOKAL[@]}" info --devices || { echo "error: no Vulkan device"; exit 1; }

LLAMA=()
if [ -x "$PACK/llama/llama-bench" ]; then
  LLAMA=(env LD_LIBRARY_PATH="$PACK/llama/lib/app" "$PACK/llama/llama-bench")
  if ! "${LLAMA[@]}" --help >/dev/null 2>&1; then
    LLAMA=("$PACK/llama/lib/sys/ld-linux-x86-64.so.2" --library-path "$PACK/llama/lib/app:$PACK/llama/lib/sys"
           "$PACK/llama/llama-bench")
  fi
fi

results="$OUT/gpu_results.jsonl"
: > "$results"
# The tables from what gpu_results.jsonl holds so far (written after every model, so a run cut short by its time
# limit still leaves the tables of the models it finished).
tables() {
python3 - "$results" "${BW_GBPS:-}" > "$OUT/gpu_results.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
gpu = next((r["gpu"] for r in rows if r.get("gpu")), "?")
known = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "RTX 4090": 1008, "RTX 3090": 936,
         "RTX 2060": 336, "RTX 3060": 360, "RTX 4060": 272, "A100": 1935, "L40S": 864, "L4": 300}
bw = float(sys.argv[2]) if sys.argv[2] else next((v for k, v in known.items() if k in gpu), 0)
print(f"GPU: {gpu}; bandwidth used for %: {bw:g} GB/s\n")
print("| model | type | test | lokal f32 t/s | lokal int8 t/s | llama.cpp t/s | best lokal / llama.cpp | decode GB/s (best lokal) | % of bandwidth |")
print("|---|---|---|--:|--:|--:|--:|--:|--:|")
keys = []
for r in rows:
    k = (r["model"], r["type"], r["test"])
    if k not in keys: keys.append(k)
for k in keys:
    def get(e):
        return next((r for r in rows if (r["model"], r["type"], r["test"]) == k and r["engine"] == e), None)
    a, b, c = get("lokal-int8=0"), get("lokal-int8=1"), get("llama.cpp")
    if not (a or b or c): continue
    fmt = lambda r: f'{r["ts"]:.1f} ± {r["sd"]:.1f}' if r else "-"
    best = max((r for r in (a, b) if r), key=lambda r: r["ts"], default=None)
    ratio = f'{best["ts"] / c["ts"]:.2f}x' if best and c else "-"
    gbs = pct = "-"
    if best and k[2].startswith("tg") and best.get("bytes_per_token"):
        g = best["bytes_per_token"] * best["ts"] / 1e9
        gbs = f"{g:.1f}"
        pct = f"{100 * g / bw:.0f}%" if bw else "-"
    print(f"| {k[0]} | {k[1]} | {k[2]} | {fmt(a)} | {fmt(b)} | {fmt(c)} | {ratio} | {gbs} | {pct} |")
print("\nDecode on the int8 path with command buffers reused and built every step (LOKAL_GPU_REUSE=0): t/s, and per")
print("command buffer the host's recording time and the time until the device was done.\n")
print("| model | type | test | reused: t/s | host us | device us | % reused | built: t/s | host us | device us | dispatches |")
print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for k in keys:
    if not k[2].startswith("tg"): continue
    on = next((r for r in rows if (r["model"], r["type"], r["test"]) == k and r["engine"] == "lokal-int8=1"), None)
    off = next((r for r in rows if (r["model"], r["type"], r["test"]) == k and r["engine"] == "lokal-reuse=0"), None)
    if not (on and off): continue
    f1 = lambda v: f"{v:.1f}" if v is not None else "-"
    print(f'| {k[0]} | {k[1]} | {k[2]} | {on["ts"]:.1f} | {f1(on.get("host_us"))} | {f1(on.get("device_us"))} | '
          f'{f1(on.get("reused_pct"))} | {off["ts"]:.1f} | {f1(off.get("host_us"))} | {f1(off.get("device_us"))} | '
          f'{f1(on.get("dispatches"))} |')
EOF
}

for m in $MODELS; do
  preset=${m%%:*} type=${m#*:}
  f="$WORK/$preset-$type.gguf"
  if [ ! -f "$f" ]; then
    echo "== synth $preset $type"
    # shellcheck disable=SC2086
    timeout "$STEP_S" "${LOKAL[@]}" synth --preset "$preset" --type "$type" -q -o "$f" $SYNTH_ARGS || { echo "synth failed"; continue; }
  fi
  for variant in int8=0 int8=1 reuse=0; do
    int8=${variant#int8=} reuse=1 p="$P"
    if [ "$variant" = reuse=0 ]; then int8=1 reuse=0 p=0; fi  # decode only, on the int8 path
    echo "== lokal bench $preset $type LOKAL_GPU_INT8=$int8 LOKAL_GPU_REUSE=$reuse"
    LOKAL_GPU_INT8=$int8 LOKAL_GPU_REUSE=$reuse timeout "$STEP_S" "${LOKAL[@]}" bench -m "$f" -ngl 99 -p "$p" -n "$N" \
      -r "$R" --no-mem-bw --json -q > "$WORK/lokal.json" || { echo "lokal bench failed"; continue; }
    python3 - "$WORK/lokal.json" "$preset" "$type" "lokal-$variant" >> "$results" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(json.dumps({"model": sys.argv[2], "type": sys.argv[3], "engine": sys.argv[4], "test": r["test"],
                      "ts": r["avg_ts"], "sd": r["stddev_ts"], "bytes_per_token": r.get("decode_bytes_per_token"),
                      "gpu": r.get("gpu_info"), "int8": r.get("gpu_int8"), "load_ms": r.get("load_ms"),
                      "host_us": r.get("gpu_host_us"), "device_us": r.get("gpu_device_us"),
                      "reused_pct": r.get("gpu_reused_pct"), "dispatches": r.get("gpu_dispatches")}))
EOF
  done
  if [ ${#LLAMA[@]} -gt 0 ]; then
    echo "== llama-bench $preset $type"
    timeout "$STEP_S" "${LLAMA[@]}" -m "$f" -ngl 99 -p "$P" -n "$N" -r "$R" -o json > "$WORK/llama.json" \
      || { echo "llama-bench failed"; continue; }
    python3 - "$WORK/llama.json" "$preset" "$type" >> "$results" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    t = ("pp%d" % r["n_prompt"]) if r["n_prompt"] else ("tg%d" % r["n_gen"])
    print(json.dumps({"model": sys.argv[2], "type": sys.argv[3], "engine": "llama.cpp", "test": t,
                      "ts": r["avg_ts"], "sd": r["stddev_ts"], "gpu": r.get("gpu_info"),
                      "backends": r.get("backends")}))
EOF
  fi
  tables
done

tables
cat "$OUT/gpu_results.md"
