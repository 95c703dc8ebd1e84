#!/usr/bin/env bash
# One GPU lease (issue 5): where the warm start of the max-autotune mode goes (phases, cProfile, Inductor caches).
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26e.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
NEXFORT_BENCH_CPROFILE=1 timeout 1100 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha \
  --height 1024 --width 1024 --mode max-optimize:max-autotune:low-precision:cache-all --repeats 1 \
  --output-json $RES/cache_warm_start_pixart_1024_max_autotune.json > $RES/cache_ma.log 2>&1
grep -v Warning $RES/cache_ma.log | grep -v "triton_\|AUTOTUNE\|^  " | tail -12 | cut -c1-600
echo ALL-DONE
