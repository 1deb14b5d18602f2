#!/usr/bin/env bash
# Installs every Debian 12 package lokal needs to build, test and fuzz. Idempotent: packages
# already present are not touched, and apt-get runs only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake ninja-build pkg-config   # toolchain (CMake >= 3.25)
  libcli11-dev nlohmann-json3-dev libpcre2-dev         # CLI, JSON, Unicode regex for pre-tokenizers
  libgtest-dev                                         # tests (GoogleTest under ctest)
  xz-utils tar                                         # test fixtures ship as .tar.xz
  clang libclang-rt-14-dev                             # libFuzzer target
  jq                                                   # bench/compare.sh (joins lokal and llama-bench JSON)
  tmux                                                 # tests/test_chat_tmux.cpp drives `lokal chat` in a terminal
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
