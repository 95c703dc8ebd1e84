#!/usr/bin/env bash
# One GPU lease (issue 6): the resolution grid (16 sizes + 544x408 + 960x720 + batch 1 -> 4) with dynamic=True after
# the batch fixes (per-head mask repeat, per-sample VAE), PixArt-α then SDXL, each output checked against eager.
# Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26c.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
timeout 900 python3 benchmarks/text_to_image.py --model pixart-alpha --compiler nexfort --steps 20 \
  --compiler-config '{"mode": "max-optimize:low-precision", "dynamic": true}' --run_multiple_resolutions 1 \
  --run_rare_resolutions 1 --warmups 1 --iters 3 --output-json $RES/pixart_alpha_grid_dynamic.json \
  --output-chart $RES/pixart_alpha_grid_dynamic.png 2>&1 | tee $RES/grid_pixart.log | grep -v Warning | tail -40
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
timeout 1200 python3 examples/text_to_image_sdxl.py --compiler nexfort --steps 20 \
  --compiler-config '{"mode": "max-optimize:low-precision", "dynamic": true, "memory_format": "channels_last"}' \
  --run_multiple_resolutions 1 --run_rare_resolutions 1 --warmups 1 --iters 1 --output-json $RES/sdxl_grid_dynamic.json \
  --output-chart $RES/sdxl_grid_dynamic.png 2>&1 | tee $RES/grid_sdxl.log | grep -v Warning | tail -40
echo ALL-DONE
