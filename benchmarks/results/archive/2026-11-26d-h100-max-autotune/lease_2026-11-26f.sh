#!/usr/bin/env bash
# One GPU lease (issues 4 and 5): a bounded max-autotune. PixArt-α 1024² denoiser: max-optimize:low-precision
# (and eager) vs max-autotune without epilogue-fusion benchmarking, convolution templates or coordinate descent
# (cold compile, step time); then the pipeline's warm start in that bounded max-autotune mode (local directory
# and Redis, no cProfile); then max-autotune with coordinate descent, and the jit mode's compile time.
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26f.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES; J=$RES/probe_f.jsonl
P="python3 benchmarks/gpu/probe.py denoiser --model pixart-alpha --hw 1024x1024"
BOUNDED='"inductor.benchmark_epilogue_fusion": false, "inductor.max_autotune_conv_backends": "ATEN", "inductor.coordinate_descent_tuning": false'
timeout 300 $P --eager --compiler-config '{"mode": "max-optimize:low-precision"}' | tee -a $J
timeout 500 $P --compiler-config "{\"mode\": \"max-optimize:max-autotune:low-precision\", \"options\": {$BOUNDED}}" | tee -a $J
if LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes; then echo redis-server; fi
sleep 1
timeout 1500 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
  --mode max-optimize:max-autotune:low-precision:cache-all --options "{$BOUNDED}" --repeats 1 \
  --redis-url redis://127.0.0.1:6399/0 --output-json $RES/cache_warm_start_pixart_1024_bounded_max_autotune.json \
  > $RES/cache_bounded.log 2>&1
grep -v Warning $RES/cache_bounded.log | grep -E "^run|^cold|^warm" | cut -c1-400
timeout 500 $P --compiler-config "{\"mode\": \"max-optimize:max-autotune:low-precision\", \"options\": {\"inductor.benchmark_epilogue_fusion\": false, \"inductor.max_autotune_conv_backends\": \"ATEN\"}}" | tee -a $J
timeout 300 $P --compiler-config '{"mode": "jit:disable-runtime-fusion"}' | tee -a $J
echo ALL-DONE
