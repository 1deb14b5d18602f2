#!/usr/bin/env bash
# plan-resources.sh - memory and CPU for one `lokal serve` replica, from `lokal plan`'s memory plan.
#
# Usage: deploy/plan-resources.sh [--format env|k8s|docker|systemd|json] -m MODEL.gguf [other `lokal plan` options]
#   e.g. deploy/plan-resources.sh --format k8s -m /srv/models/qwen2.5-7b-instruct-q4_0.gguf -np 4 -c 4096 -t 8
#
# Give it the options the replicas will run with (-np, -c, -t, -ctk/-ctv, -b): the plan is for exactly those. --ram
# defaults to 1TiB, so the plan states what the settings need rather than what fits into this machine's free memory
# (with a smaller --ram the planner may pick smaller KV types or context: the settings it chose are printed, use
# them). -t sets the CPU request; without it the planner counts this machine's cores.
#
# From the plan's total (weights + KV cache + compute buffers + overhead):
#   request = total + 10% + 32 MiB   (the binary, its libraries, the HTTP threads)
#   limit   = total + 25% + 64 MiB   (allocator slack; the mapped weights are page cache charged to the container
#                                     too, which the kernel can drop again under the limit)
# both rounded up to whole MiB. CPU request: the compute threads.
#
# LOKAL_BIN names the lokal binary (default: lokal on PATH). Needs jq (Debian package jq).
set -euo pipefail

format="env"
args=()
have_ram=0
while [ $# -gt 0 ]; do
  case "$1" in
    --format) format="${2:?--format needs a value}"; shift 2 ;;
    --format=*) format="${1#--format=}"; shift ;;
    --ram|--ram=*) have_ram=1; args+=("$1"); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
case "$format" in env|k8s|docker|systemd|json) ;; *) echo "plan-resources: unknown --format $format (env, k8s, docker, systemd, json)" >&2; exit 2 ;; esac
[ ${#args[@]} -gt 0 ] || { echo "plan-resources: give at least -m MODEL.gguf (see --help)" >&2; exit 2; }
[ "$have_ram" -eq 1 ] || args+=(--ram 1TiB)
command -v jq >/dev/null 2>&1 || { echo "plan-resources: jq is missing (Debian package jq)" >&2; exit 1; }
lokal="${LOKAL_BIN:-lokal}"

# `lokal plan` exits 1 when nothing fits (the JSON says why) and on errors (a message on stderr, no JSON).
plan="$("$lokal" plan --json "${args[@]}")" || true
if [ -z "$plan" ] || ! jq -e 'has("total_bytes")' >/dev/null 2>&1 <<<"$plan"; then
  echo "plan-resources: \`$lokal plan\` gave no plan" >&2
  exit 1
fi
if [ "$(jq -r '.fits' <<<"$plan")" != "true" ]; then
  echo "plan-resources: the plan does not fit: $(jq -r '.reason' <<<"$plan")" >&2
  exit 1
fi
summary="$(jq -r '"lokal plan: \(.model | split("/") | last) (\(.file_type)), ctx \(.settings.n_ctx), parallel \(.settings.n_parallel), KV \(.settings.cache_type_k)/\(.settings.cache_type_v), batch \(.settings.n_batch), threads \(.settings.n_threads): \(.total_bytes) bytes"' <<<"$plan")"

total=$(jq -r '.total_bytes' <<<"$plan")
threads=$(jq -r '.settings.n_threads' <<<"$plan")
MiB=1048576
ceil_mib() { echo $(( ($1 + MiB - 1) / MiB )); }
request_mib=$(ceil_mib $(( total + total / 10 + 32 * MiB )))
limit_mib=$(ceil_mib $(( total + total / 4 + 64 * MiB )))

case "$format" in
  env)
    cat <<EOF
PLAN_TOTAL_BYTES=$total
MEMORY_REQUEST_BYTES=$(( request_mib * MiB ))
MEMORY_LIMIT_BYTES=$(( limit_mib * MiB ))
MEMORY_REQUEST=${request_mib}Mi
MEMORY_LIMIT=${limit_mib}Mi
CPU_REQUEST=$threads
CTX_SIZE=$(jq -r '.settings.n_ctx' <<<"$plan")
PARALLEL=$(jq -r '.settings.n_parallel' <<<"$plan")
BATCH_SIZE=$(jq -r '.settings.n_batch' <<<"$plan")
CACHE_TYPE_K=$(jq -r '.settings.cache_type_k' <<<"$plan")
CACHE_TYPE_V=$(jq -r '.settings.cache_type_v' <<<"$plan")
EOF
    ;;
  k8s)
    cat <<EOF
# $summary
resources:
  requests:
    memory: ${request_mib}Mi
    cpu: "$threads"
  limits:
    memory: ${limit_mib}Mi
EOF
    ;;
  docker)
    echo "--memory=${limit_mib}m --memory-reservation=${request_mib}m --memory-swap=${limit_mib}m --cpus=$threads"
    ;;
  systemd)
    cat <<EOF
# $summary
[Service]
MemoryHigh=${request_mib}M
MemoryMax=${limit_mib}M
EOF
    ;;
  json)
    jq -c --argjson req $(( request_mib * MiB )) --argjson lim $(( limit_mib * MiB )) --argjson cpu "$threads" \
      '{plan_total_bytes: .total_bytes, memory_request_bytes: $req, memory_limit_bytes: $lim,
        memory_request: "\($req / 1048576)Mi", memory_limit: "\($lim / 1048576)Mi", cpu_request: $cpu, settings}' <<<"$plan"
    ;;
esac
