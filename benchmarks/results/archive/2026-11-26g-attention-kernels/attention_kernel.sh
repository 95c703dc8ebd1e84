#!/usr/bin/env bash
# Issue 4: the attention_kernel pass (SDPA or FlashAttention-4, chosen per shape at run time) on the target mode, on
# and off (options attention_kernel.enabled=false), one process per step (benchmarks/gpu/probe.py), after its GPU
# tests. Needs FlashAttention-4 staged (benchmarks/gpu/fa4_stage.sh). Usage: bash benchmarks/gpu/attention_kernel.sh [STEP...]
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/fa4_stage.sh
source benchmarks/gpu/probe_steps.sh
T=max-optimize:max-autotune:low-precision
OFF='"options": {"attention_kernel.enabled": false}'
for STEP in ${@:-test sd3-on sd3-off}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    test) timeout 400 python3 -m pytest -q -p no:cacheprovider -m gpu tests/passes/test_attention_kernel.py \
            > $RES/pytest_gpu_attention_kernel.log 2>&1; tail -3 $RES/pytest_gpu_attention_kernel.log ;;
    sd3-on) probe $STEP --model sd3-medium --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$T:cudagraphs\"}" ;;
    sd3-off) probe $STEP --model sd3-medium --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$T:cudagraphs\", $OFF}" ;;
    px-on) probe $STEP --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$T\"}" ;;
    px-off) probe $STEP --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$T\", $OFF}" ;;
    px-cg-mk) probe $STEP --hw 1024x1024 --profile --compiler-config \
                "{\"mode\": \"$T:cudagraphs\", \"options\": {\"triton.multi_kernel\": 1}}" ;;
    px512-on) probe $STEP --hw 512x768 --eager --profile --compiler-config "{\"mode\": \"$T:cudagraphs\"}" ;;
    px512-off) probe $STEP --hw 512x768 --profile --compiler-config "{\"mode\": \"$T:cudagraphs\", $OFF}" ;;
  esac
done
summary
echo ALL-DONE
