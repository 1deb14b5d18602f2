#!/usr/bin/env bash
# Packs what bench/gpu_device.sh needs on a bare GPU machine into one folder (default .gpu, ignored by git):
#
#   bench/gpu_pack.sh [DIR]                  # LOKAL=build/src/lokal by default; LLAMA_CPP_BUILD=... adds llama-bench
#
#   DIR/lokal            the binary (built here: Debian 12, x86-64)
#   DIR/lib/app/         every shared library it loads except the C library, plus the Vulkan loader (libvulkan.so.1,
#                        which lokal dlopens)
#   DIR/lib/sys/         the C library (libc, libm, ...) and the dynamic loader (ld-linux-x86-64.so.2), so that
#                        gpu_device.sh can run lokal through the packed loader where the machine's C library is older
#   DIR/llama/           with LLAMA_CPP_BUILD: bin/llama-bench of that build and the libraries it needs (llama.cpp
#                        built outside this repo with -DGGML_VULKAN=ON; nothing of it is committed)
#
# The device tool carries DIR when a run names it in `carry` (64 MiB in all: the script prints the size).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$here/.gpu}"
LOKAL="${LOKAL:-$here/build/src/lokal}"
[ -x "$LOKAL" ] || { echo "error: $LOKAL not found (build first, or set LOKAL)" >&2; exit 2; }

# copy_libs BINARY DIR: the libraries ldd resolves for BINARY, the C library's parts into DIR/sys, the rest into
# DIR/app.
copy_libs() {
  local bin=$1 dest=$2
  mkdir -p "$dest/app" "$dest/sys"
  ldd "$bin" | awk '/=> \// {print $3} /^[[:space:]]*\/.*ld-linux/ {print $1}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) cp -L "$lib" "$dest/sys/" ;;
      *) cp -L "$lib" "$dest/app/" ;;
    esac
  done
}

rm -rf "$DIR"
mkdir -p "$DIR"
cp "$LOKAL" "$DIR/lokal"
strip "$DIR/lokal" 2>/dev/null || true
copy_libs "$LOKAL" "$DIR/lib"
vk=$(ldconfig -p | awk '/libvulkan\.so\.1 / {print $NF; exit}')
[ -n "$vk" ] || { echo "error: no libvulkan.so.1 here (apt-get install libvulkan1)" >&2; exit 2; }
cp -L "$vk" "$DIR/lib/app/"
if [ -n "${LLAMA_CPP_BUILD:-}" ]; then
  lb="$LLAMA_CPP_BUILD/bin/llama-bench"
  [ -x "$lb" ] || { echo "error: $lb not found" >&2; exit 2; }
  cp "$lb" "$DIR/llama/llama-bench"
  strip "$DIR/llama/llama-bench" 2>/dev/null || true
  copy_libs "$lb" "$DIR/llama/lib"
  cp -L "$vk" "$DIR/llama/lib/app/"
fi
du -sh "$DIR"
size=$(du -sm "$DIR" | cut -f1)
if [ "$size" -gt 60 ]; then
  echo "warning: $DIR is $size MiB: the device tool carries at most 64 MiB with the working tree" >&2
fi
