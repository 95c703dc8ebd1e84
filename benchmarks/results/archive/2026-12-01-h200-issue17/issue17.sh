#!/usr/bin/env bash
# Issue 17's rows with the README's benchmark (--compiler all: eager, torch.compile default, torch.compile's own
# modes of INDUCTOR_MODES, nexfort in compile_pipe's recommended mode unless MODE is set; one process per row, same
# inputs; JSON + chart + log in $RES). Usage: [FA4=1] [MODE=...] [INDUCTOR_MODES=...] bash benchmarks/gpu/issue17.sh STEP...
# Steps: px1024, px512x768 (PixArt-α), sigma1024 (PixArt-Σ), sd3 (SD3-medium 1024²), sdxl (SDXL UNet 1024²),
# flux (FLUX.1-dev 1024², bf16). FA4=1 first stages FlashAttention-4 (benchmarks/gpu/fa4_stage.sh), as
# `pip install "nexfort-passes[cuda]"` installs it.
set -uo pipefail
source benchmarks/gpu/setup.sh
[ "${FA4:-0}" = 1 ] && source benchmarks/gpu/fa4_stage.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//' | tr A-Z a-z)
IM=${INDUCTOR_MODES-reduce-overhead}
run() {  # name, model, height, width[, extra benchmark args]
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  local cfg=()
  [ -n "${MODE:-}" ] && cfg=(--compiler-config "{\"mode\": \"$MODE\"}")
  local f=$RES/${1}_${GPU}
  timeout ${LIMIT:-560} python3 benchmarks/text_to_image.py --model $2 --denoiser-only --compiler all --height $3 \
    --width $4 --warmups 3 --iters 30 --inductor-modes "$IM" "${cfg[@]}" ${5:-} --output-json $f.json > $f.log 2>&1
  echo "rc=$?"; grep -v Warning $f.log | grep -iv "kept in float32\|_warn_once" | tail -9 | cut -c1-250
}
for STEP in "$@"; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    px1024) run px1024 pixart-alpha 1024 1024 ;;
    px512x768) run px512x768 pixart-alpha 512 768 ;;
    sigma1024) run sigma1024 pixart-sigma 1024 1024 ;;
    sd3) run sd3_1024 sd3-medium 1024 1024 ;;
    sdxl) run sdxl_1024 sdxl 1024 1024 ;;
    flux) run flux_1024 flux-dev 1024 1024 "--dtype bf16" ;;
  esac
done
echo ALL-DONE
