#!/usr/bin/env bash
# Installs every Debian 12 package lokal needs to build, test and fuzz, then the npm clients of the
# end-to-end tests (e2e/, pinned by its package-lock.json). Idempotent: packages already present are
# not touched, apt-get runs only when something is missing, and npm ci only when e2e/node_modules is
# missing or older than the lockfile.
set -euo pipefail

PACKAGES=(
  build-essential g++ cmake ninja-build pkg-config   # toolchain (CMake >= 3.25)
  libcli11-dev nlohmann-json3-dev libpcre2-dev         # CLI, JSON, Unicode regex for pre-tokenizers
  libgtest-dev                                         # tests (GoogleTest under ctest)
  xz-utils tar                                         # test fixtures ship as .tar.xz
  clang libclang-rt-14-dev                             # libFuzzer target
  jq                                                   # bench/compare.sh (joins lokal and llama-bench JSON)
  tmux                                                 # tests/test_chat_tmux.cpp drives `lokal chat` in a terminal
  libcpp-httplib-dev libssl-dev libjwt-dev             # lokal serve: HTTP(S) server and client, JWT verification
  libsystemd-dev libtomlplusplus-dev                   # lokal serve: sd_notify, TOML config files
  zlib1g-dev libjs-marked libjs-highlight.js node-dompurify  # the web chat page: Markdown, code highlighting, HTML sanitizing (embedded at build time)
  chromium                                             # e2e/webui.test.mjs drives the web chat page in headless Chromium (playwright-core)
  nginx haproxy python3-yaml                           # e2e/scaleout.test.mjs runs deploy/'s load balancers; e2e/deploy.test.mjs parses deploy/k8s/*.yaml
  libvulkan-dev glslc                                  # gpu/: Vulkan headers (the loader is dlopen'ed at run time), GLSL -> SPIR-V shader compiler
  mesa-vulkan-drivers                                  # tests/test_vulkan.cpp runs the GPU kernels on lavapipe (Vulkan on the CPU)
)
# e2e/ runs the official openai and ollama npm clients and playwright-core under node --test. They need Node 20
# or newer (playwright-core's engines field); Debian 12's nodejs is v18, so a newer node already on PATH is kept and
# an older one is reported below.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "setup: error: node $(node --version) is too old for the end-to-end tests (playwright-core needs Node 20+)." >&2
  echo "setup: install Node 20 or newer on PATH (Debian 12's nodejs package is 18)." >&2
  exit 1
fi

# npm packages of the end-to-end tests, exactly as e2e/package-lock.json pins them.
E2E="$(cd "$(dirname "$0")/../e2e" && pwd)"
if [ ! -f "$E2E/node_modules/.package-lock.json" ] || [ "$E2E/package-lock.json" -nt "$E2E/node_modules/.package-lock.json" ]; then
  echo "setup: npm ci in $E2E"
  npm ci --prefix "$E2E" --no-audit --no-fund
else
  echo "setup: e2e npm packages already installed"
fi
echo "setup: done"
