#!/usr/bin/env bash
# One GPU lease (issue 5): the pipeline's warm start in max-optimize:max-autotune:low-precision:cache-all after the
# cache started storing the autotuning results of each graph's first call (lease g: coordinate descent re-ran in
# every warm process). Local directory and Redis, no cProfile.
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26h.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
if LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes; then echo redis-server; fi
sleep 1
timeout 1200 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
  --mode max-optimize:max-autotune:low-precision:cache-all --repeats 1 \
  --redis-url redis://127.0.0.1:6399/0 --output-json $RES/cache_warm_start_pixart_1024_max_autotune_h100_first_call.json \
  > $RES/cache_ma.log 2>&1
grep -v Warning $RES/cache_ma.log | grep -E "^run|^cold|^warm|Error|error" | cut -c1-600
echo ALL-DONE
