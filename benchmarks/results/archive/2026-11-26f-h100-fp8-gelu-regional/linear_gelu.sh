#!/usr/bin/env bash
# Issue 4, the linear_gelu pass (GELU in the fc1 GEMM's cuBLASLt epilogue): each model's denoiser with the pass on
# (the max-optimize default) and off, one process each (benchmarks/gpu/probe.py: median CUDA-event step, GPU time
# per kernel family, rel L2 vs eager), then the pass's GPU tests. Usage: bash benchmarks/gpu/linear_gelu.sh [STEP...]
# Results: one JSON line per step in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/probe_steps.sh
LP=max-optimize:low-precision
OFF='"options": {"linear_gelu": {"enabled": false}}'
for STEP in ${@:-tests px-on px-off small-on small-off sd3-on sd3-off}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    tests) timeout 240 python3 -m pytest -q -m gpu tests/passes/test_linear_gelu.py -p no:cacheprovider \
             > $RES/pytest_gpu_linear_gelu.log 2>&1; tail -3 $RES/pytest_gpu_linear_gelu.log ;;
    px-on) probe px-on --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    px-off) probe px-off --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$LP\", $OFF}" ;;
    small-on) probe small-on --hw 512x768 --eager --profile --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    small-off) probe small-off --hw 512x768 --profile --compiler-config "{\"mode\": \"$LP:cudagraphs\", $OFF}" ;;
    sd3-on) probe sd3-on --model sd3-medium --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    sd3-off) probe sd3-off --model sd3-medium --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$LP\", $OFF}" ;;
  esac
done
summary
echo ALL-DONE
