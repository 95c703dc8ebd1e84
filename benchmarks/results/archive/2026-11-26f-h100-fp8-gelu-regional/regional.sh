#!/usr/bin/env bash
# Issue 4, the jit row (cold compile <= 30 s, still faster than eager): regional compilation
# (options.diffusers.regional) against whole-model compilation, PixArt-alpha 1024x1024 and SD3-medium denoisers,
# one process each (benchmarks/gpu/probe.py; cold compile = fresh Inductor/Triton caches, first call included).
# Usage: bash benchmarks/gpu/regional.sh [STEP...]. Results: one JSON line per step in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
source benchmarks/gpu/probe_steps.sh
JIT=jit:disable-runtime-fusion
REG='"options": {"diffusers": {"regional": true}}'
for STEP in ${@:-px-jit-regional px-jit px-lp-regional sd3-jit-regional sd3-jit}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    px-jit-regional) probe $STEP --hw 1024x1024 --eager --compile-times --compiler-config "{\"mode\": \"$JIT\", $REG}" ;;
    px-jit) probe $STEP --hw 1024x1024 --compile-times --compiler-config "{\"mode\": \"$JIT\"}" ;;
    px-lp-regional) probe $STEP --hw 1024x1024 --compiler-config "{\"mode\": \"max-optimize:low-precision\", $REG}" ;;
    sd3-jit-regional) probe $STEP --model sd3-medium --hw 1024x1024 --eager --compiler-config \
                        "{\"mode\": \"$JIT\", $REG}" ;;
    sd3-jit) probe $STEP --model sd3-medium --hw 1024x1024 --compiler-config "{\"mode\": \"$JIT\"}" ;;
  esac
done
summary
echo ALL-DONE
