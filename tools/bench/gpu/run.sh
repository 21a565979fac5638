#!/usr/bin/env bash
# Side by side on a GPU machine: adapterkit on WebGPU (tools/bench/src/gpu.ts) and PyTorch + PEFT
# (../shared/gpu/torch_t5_bench.py) in one command, one machine. Run from the repository root:
#
#   bash tools/bench/gpu/run.sh            # builds the bundle and .devpack/, prints the device command
#
# then call the device tool's `run` with carry [".devpack"] and the printed command. Both scripts print one
# JSON line per figure; the closing line of the device command's output is PyTorch's LoRA step.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=$(cd "$root/.." && pwd)/shared/gpu
[ -x "$shared/pack.sh" ] || { echo "run.sh: $shared/pack.sh not found (the GPU recipe lives in ../shared/gpu)" >&2; exit 1; }
pnpm turbo run build --filter=@adapterkit/bench... >/dev/null
mkdir -p tools/bench/gpu/build
# one ESM file; `webgpu` (Dawn, with its native addon) travels beside it in .devpack
pnpm --filter @adapterkit/bench exec rolldown dist/gpu.js --format esm --platform node --external webgpu \
  --banner "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" \
  --file gpu/build/bundle.mjs >/dev/null
"$shared/pack.sh" tools/bench/gpu/build/bundle.mjs "$shared/torch_t5_bench.py"
echo
echo "device command (carry: [\".devpack\"]):"
echo "  source .devpack/unpack.sh && node .devpack/bundle.mjs && python3 .devpack/torch_t5_bench.py"
