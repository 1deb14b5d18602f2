#!/usr/bin/env bash
# Regenerates README.md's Usage block, between "<!-- usage:begin" and "<!-- usage:end -->", from `lokal usage`:
# the synopsis of every subcommand generated from the CLI definitions (src/cli/usage.cpp), so it cannot drift.
# tests/test_cli_consistency.cpp fails when the block and the binary's output differ: run this after changing an
# option, with the binary you just built.
#
#   scripts/update-readme-usage.sh [LOKAL_BINARY]      (default: build/src/lokal)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/build/src/lokal}"
readme="$root/README.md"
[ -x "$bin" ] || { echo "error: $bin: no lokal binary (build first, or give its path)" >&2; exit 1; }

usage="$(mktemp)"
out="$(mktemp "$readme.XXXXXX")"
trap 'rm -f "$usage" "$out"' EXIT
"$bin" usage > "$usage"
awk -v uf="$usage" '
  /^<!-- usage:begin/ { print; print "```sh"; while ((getline line < uf) > 0) print line; print "```"; skip = 1; begins++; next }
  /^<!-- usage:end -->/ { skip = 0; ends++ }
  !skip { print }
  END { if (begins != 1 || ends != 1) { print "error: README.md needs one usage:begin and one usage:end marker" > "/dev/stderr"; exit 1 } }
' "$readme" > "$out"
if cmp -s "$out" "$readme"; then
  echo "README.md: usage block already up to date"
else
  cat "$out" > "$readme"
  echo "README.md: usage block regenerated from $bin"
fi
