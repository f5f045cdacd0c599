#!/usr/bin/env bash
# The GPU training benchmark, finlora against PEFT row by row (bench/gpu/train.ts says
# what it measures): builds the CUDA addon when it is missing, then runs the compiled
# benchmark with the given options and keeps a log.
#
#   bash bench/gpu/run.sh              every row (about 7 minutes on an H200)
#   bash bench/gpu/run.sh --quick      1B q,k,v rows, fewer steps (about a minute)
#   bash bench/gpu/run.sh --model 8b --targets qkv --dora --dropout 0.05
#
# Needs node on PATH, dist/ compiled (npx tsc -p .), nvcc and cuBLAS for the addon, and
# python3 (PYTHON overrides) with torch, transformers and peft for PEFT's side.
# FINLORA_BENCH_LOG names the log file (default bench-gpu-train.log).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if [ ! -f dist/bench/gpu/train.js ]; then
  echo "dist/bench/gpu/train.js is missing: compile first (npx tsc -p .)" >&2
  exit 1
fi
if [ ! -f build/Release/finlora_cuda.node ]; then
  echo "building the CUDA addon (native/cuda/build.sh)" >&2
  bash native/cuda/build.sh
fi
log="${FINLORA_BENCH_LOG:-bench-gpu-train.log}"
node dist/bench/gpu/train.js "$@" 2>&1 | tee "$log"
