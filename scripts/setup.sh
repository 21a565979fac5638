#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine (root, Node 20 + npm) lacks for adapterkit: pnpm, and for the
# WebGPU tests Debian's chromium (whose SwiftShader Vulkan driver Dawn uses when no GPU exists) and the
# Vulkan loader. Idempotent: skips what is already there.
set -euo pipefail
PNPM_VERSION=10.34.8
if [ "$(pnpm --version 2>/dev/null || true)" != "$PNPM_VERSION" ]; then
  echo "==> installing pnpm@$PNPM_VERSION"
  npm install -g "pnpm@$PNPM_VERSION" >/dev/null
fi
has_libvulkan() { compgen -G '/usr/lib/*/libvulkan.so.1' >/dev/null || compgen -G '/lib/*/libvulkan.so.1' >/dev/null; }
if [ "${1:-}" != "--no-browser" ] && { [ ! -x /usr/bin/chromium ] || ! has_libvulkan; }; then
  echo "==> installing chromium (SwiftShader Vulkan driver, browser tests) and libvulkan1"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium libvulkan1 >/dev/null
fi
