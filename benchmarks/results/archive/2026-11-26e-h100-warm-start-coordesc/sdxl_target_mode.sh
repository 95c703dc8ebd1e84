#!/usr/bin/env bash
# Issue 4 on one GPU lease: SDXL UNet 1024x1024 denoiser in the target mode
# (max-optimize:max-autotune:low-precision): eager, torch.compile default and nexfort in one process.
# Usage: bash benchmarks/gpu/sdxl_target_mode.sh [ITERS (20)] [FILE SUFFIX]. Leases m (20) and n (40, "_rerun") of
# 2026-11-26 ran it. Long: run detached (setsid nohup bash ... > /tmp/res/log &), results in $RES.
set -uo pipefail
ITERS=${1:-20}; SUFFIX=${2:-}
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
timeout 1100 python3 benchmarks/text_to_image.py --model sdxl --denoiser-only --compiler all --height 1024 \
  --width 1024 --warmups 2 --iters $ITERS --compiler-config '{"mode": "max-optimize:max-autotune:low-precision"}' \
  --output-json $RES/sdxl_unet_1024_denoiser_h100_max_optimize_max_autotune_low_precision$SUFFIX.json > $RES/sdxl.log 2>&1
grep -v Warning $RES/sdxl.log | tail -14 | cut -c1-300
echo ALL-DONE
