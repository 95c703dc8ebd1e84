#!/usr/bin/env bash
# One GPU lease (issues 6 and 5), after this session's fixes: the SDXL resolution grid with dynamic=True (the
# UNet now forwards explicit upsample sizes at every size: one graph), then the PixArt-α warm start without
# max-autotune (the upsample probe is now remembered in nexfort's store, not compiled in every process).
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26d.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
TORCH_LOGS=recompiles timeout 1000 python3 examples/text_to_image_sdxl.py --compiler nexfort --steps 20 \
  --compiler-config '{"mode": "max-optimize:low-precision", "dynamic": true, "memory_format": "channels_last"}' \
  --run_multiple_resolutions 1 --run_rare_resolutions 1 --warmups 1 --iters 1 --output-json $RES/sdxl_grid_dynamic.json \
  --output-chart $RES/sdxl_grid_dynamic.png > $RES/grid_sdxl.log 2>&1
grep -v Warning $RES/grid_sdxl.log | grep -E "recompil|triggered|  - |nexfort |eager |compilations" | cut -c1-300 | tail -45
NEXFORT_BENCH_CPROFILE=1 timeout 700 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha \
  --height 1024 --width 1024 --mode max-optimize:low-precision:cache-all --repeats 1 \
  --output-json $RES/cache_warm_start_pixart_1024_nomaxautotune.json > $RES/cache.log 2>&1
grep -v Warning $RES/cache.log | tail -30
echo ALL-DONE
