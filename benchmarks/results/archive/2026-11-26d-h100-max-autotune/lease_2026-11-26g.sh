#!/usr/bin/env bash
# One GPU lease (issues 4 and 5) after max-autotune became bounded (coordinate descent only) and the fused QKV
# projections stopped keeping a second copy of their weights: PixArt-α 1024² denoiser in max-optimize:low-precision
# (and eager) vs max-optimize:max-autotune:low-precision; the pipeline's warm start in that exact mode (local
# directory and Redis, no cProfile); SD3-medium's step time and peak memory with max-optimize:low-precision.
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26g.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES; J=$RES/probe_g.jsonl
P="python3 benchmarks/gpu/probe.py denoiser --model pixart-alpha --hw 1024x1024"
timeout 300 $P --eager --compiler-config '{"mode": "max-optimize:low-precision"}' | tee -a $J
timeout 400 $P --compiler-config '{"mode": "max-optimize:max-autotune:low-precision"}' | tee -a $J
if LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes; then echo redis-server; fi
sleep 1
timeout 1200 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
  --mode max-optimize:max-autotune:low-precision:cache-all --repeats 1 \
  --redis-url redis://127.0.0.1:6399/0 --output-json $RES/cache_warm_start_pixart_1024_max_autotune_h100.json \
  > $RES/cache_ma.log 2>&1
grep -v Warning $RES/cache_ma.log | grep -E "^run|^cold|^warm" | cut -c1-400
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
timeout 600 python3 benchmarks/text_to_image.py --model sd3-medium --denoiser-only --compiler all --height 1024 \
  --width 1024 --warmups 2 --iters 20 --compiler-config '{"mode": "max-optimize:low-precision"}' \
  --output-json $RES/sd3_medium_1024_denoiser_h100_max_optimize_low_precision.json > $RES/sd3.log 2>&1
grep -v Warning $RES/sd3.log | tail -12 | cut -c1-300
echo ALL-DONE
