#!/usr/bin/env bash
# Issue 4's profiling step on the GPU: SDPA backends on PixArt-α's shapes, then the denoiser compiled in several
# modes (cold compile, median CUDA-event time, error vs eager, kernel families). Writes $OUT/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
P="python3 benchmarks/gpu/probe.py"
RES=${RES:-$OUT}; mkdir -p $RES; J=$RES/probe.jsonl
fresh() { export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d); }
fresh; timeout 120 $P attention | tee -a $J
fresh; timeout 300 $P denoiser --hw 1024x1024 --eager --profile --profile-eager | tee -a $J
fresh; timeout 300 $P denoiser --hw 1024x1024 --profile --compiler-config '{"mode": "max-optimize:low-precision"}' | tee -a $J
fresh; timeout 300 $P denoiser --hw 512x768 --eager --profile --compiler-config '{"mode": "max-optimize:low-precision"}' | tee -a $J
fresh; timeout 300 $P denoiser --hw 512x768 --profile --compiler-config '{"mode": "max-optimize:low-precision:cudagraphs"}' | tee -a $J
fresh; timeout 300 $P denoiser --hw 1024x1024 --compiler-config '{"mode": "max-optimize:low-precision:cudagraphs"}' | tee -a $J
fresh; timeout 480 $P denoiser --hw 1024x1024 --profile --compiler-config '{"mode": "max-optimize:max-autotune:low-precision"}' | tee -a $J
echo PROBE-DONE
