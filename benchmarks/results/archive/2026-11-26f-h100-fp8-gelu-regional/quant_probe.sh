#!/usr/bin/env bash
# Issue 4, the quant flag (fp8 linears) on the PixArt-alpha denoiser, one process per configuration
# (benchmarks/gpu/probe.py: cold compile, median CUDA-event step, peak memory, rel L2 vs eager fp16 and vs a float32
# copy, GPU time per kernel family), and the fp8 GPU unit tests. Usage: bash benchmarks/gpu/quant_probe.sh [STEP...]
# Steps: tests base quant quant-mlp small-base small-quant (default: all). Results: one JSON line each in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/probe_steps.sh
LP=max-optimize:low-precision
for STEP in ${@:-tests base quant quant-mlp small-base small-quant}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    tests) timeout 240 python3 -m pytest -q -m gpu tests/passes/test_quant.py tests/diffusers/test_quantize_pipe.py \
             -p no:cacheprovider > $RES/pytest_gpu_quant.log 2>&1; tail -5 $RES/pytest_gpu_quant.log ;;
    base) probe base --hw 1024x1024 --eager --fp32-ref --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    quant) probe quant --hw 1024x1024 --fp32-ref --profile --compiler-config "{\"mode\": \"$LP:quant\"}" ;;
    quant-mlp) probe quant-mlp --hw 1024x1024 --fp32-ref \
                 --compiler-config "{\"mode\": \"$LP:quant\", \"options\": {\"quant\": {\"exclude\": [\"attn\"]}}}" ;;
    small-base) probe small-base --hw 512x768 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    small-quant) probe small-quant --hw 512x768 --compiler-config "{\"mode\": \"$LP:cudagraphs:quant\"}" ;;
  esac
done
summary
echo ALL-DONE
