#!/usr/bin/env bash
# One GPU lease (issue 4): SDXL UNet 1024x1024 denoiser in the target mode
# (max-optimize:max-autotune:low-precision), never measured before: eager, torch.compile default and nexfort in one
# process; the rerun (lease n) with 40 timed steps, to check the spread of lease m's torch.compile timings. Long: run detached (setsid nohup bash benchmarks/gpu/lease_2026-11-26m.sh > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
timeout 1100 python3 benchmarks/text_to_image.py --model sdxl --denoiser-only --compiler all --height 1024 \
  --width 1024 --warmups 2 --iters 40 --compiler-config '{"mode": "max-optimize:max-autotune:low-precision"}' \
  --output-json $RES/sdxl_unet_1024_denoiser_h100_max_optimize_max_autotune_low_precision_rerun.json > $RES/sdxl.log 2>&1
grep -v Warning $RES/sdxl.log | tail -14 | cut -c1-300
echo ALL-DONE
