#!/usr/bin/env bash
# Issue 4: what CUDA graphs and freezing give on the rows still short of the targets (PixArt-alpha 512x768 <= 10 ms,
# SD3-medium 1024 <= 39 ms, PixArt 1024), and where the jit-mode cold compile goes (Dynamo's per-phase times).
# One process per step (benchmarks/gpu/probe.py). Usage: bash benchmarks/gpu/launch_overhead.sh [STEP...]
# Results: one JSON line per step in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/probe_steps.sh
LP=max-optimize:low-precision
for STEP in ${@:-small-freeze small-target-cg sd3-cg sd3-cg-freeze px-cg-freeze px-jit}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    small-freeze) probe $STEP --hw 512x768 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    small-target-cg) probe $STEP --hw 512x768 --compiler-config \
                       "{\"mode\": \"max-optimize:max-autotune:low-precision:cudagraphs\"}" ;;
    sd3-cg) probe $STEP --model sd3-medium --hw 1024x1024 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    sd3-cg-freeze) probe $STEP --model sd3-medium --hw 1024x1024 \
                     --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    px-cg-freeze) probe $STEP --hw 1024x1024 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    px-jit) probe $STEP --hw 1024x1024 --compile-times --compiler-config "{\"mode\": \"jit:disable-runtime-fusion\"}" ;;
  esac
done
summary
echo ALL-DONE
