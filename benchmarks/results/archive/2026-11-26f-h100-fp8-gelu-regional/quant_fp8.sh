#!/usr/bin/env bash
# Issue 4 on one GPU lease: what the quant flag (fp8 linears, nexfort.passes.quant) gives on the PixArt-alpha
# 1024x1024 denoiser: eager, torch.compile default and nexfort in max-optimize:max-autotune:low-precision:quant,
# then the same without quant for the ratio (separate processes: compare within one lease).
# Usage: bash benchmarks/gpu/quant_fp8.sh. Long: run detached (setsid nohup bash ... > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
for MODE in max-optimize:max-autotune:low-precision:quant max-optimize:max-autotune:low-precision; do
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout 540 python3 benchmarks/text_to_image.py --model pixart-alpha --denoiser-only --compiler all --height 1024 \
    --width 1024 --warmups 2 --iters 30 --compiler-config "{\"mode\": \"$MODE\"}" \
    --output-json $RES/pixart_alpha_1024_denoiser_h100_${MODE//:/_}.json > $RES/${MODE//:/_}.log 2>&1
  grep -v Warning $RES/${MODE//:/_}.log | tail -8 | cut -c1-300
done
echo ALL-DONE
