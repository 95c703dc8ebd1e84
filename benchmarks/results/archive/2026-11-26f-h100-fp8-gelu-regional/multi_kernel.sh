#!/usr/bin/env bash
# Issue 4: Inductor's multi-kernel reductions (options triton.multi_kernel=1: persistent and looped variants of each
# reduction, the faster picked at run time; the persistent threshold x16 covers LayerNorm rows of 1152/1536) on the
# target mode. One process per step (benchmarks/gpu/probe.py). Usage: bash benchmarks/gpu/multi_kernel.sh [STEP...]
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/probe_steps.sh
T=max-optimize:max-autotune:low-precision
MK='"options": {"triton.multi_kernel": 1}'
for STEP in ${@:-sd3-cg-mk sd3-cg px-mk px}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    sd3-cg-mk) probe $STEP --model sd3-medium --hw 1024x1024 --eager --profile --compiler-config \
                 "{\"mode\": \"$T:cudagraphs\", $MK}" ;;
    sd3-cg) probe $STEP --model sd3-medium --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$T:cudagraphs\"}" ;;
    px-mk) probe $STEP --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$T\", $MK}" ;;
    px) probe $STEP --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$T\"}" ;;
  esac
done
summary
echo ALL-DONE
