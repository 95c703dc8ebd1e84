#!/usr/bin/env bash
# One GPU lease (issues 5 and 6): where a warm start's time goes, and which graph recompiles for batch 1 -> 4.
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26b.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
fresh() { export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d); }
# 1. batch 1 -> 4 on the PixArt-α pipeline, dynamic: per component, which call compiles (and why: recompiles log)
for ob in "" "--vae-oblivious"; do
  fresh; TORCH_LOGS=recompiles timeout 400 python3 benchmarks/gpu/batch_probe.py --model pixart-alpha $ob \
    > $RES/batch${ob:+_oblivious}.log 2>&1; grep -v Warning $RES/batch${ob:+_oblivious}.log | grep -E '^\{|recompil|guard|  - ' | cut -c1-400 | tail -25
done
# 2. warm start of PixArt-α 1024 in max-optimize:low-precision:cache-all, phases + cProfile of the first image
NEXFORT_BENCH_CPROFILE=1 timeout 900 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha \
  --height 1024 --width 1024 --mode max-optimize:low-precision:cache-all --repeats 1 \
  --output-json $RES/cache_warm_start_pixart_1024_nomaxautotune.json 2>&1 | grep -v Warning | tee $RES/cache.log
echo ALL-DONE
