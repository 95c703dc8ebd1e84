#!/usr/bin/env bash
# Issue 4's table rows, each with the diffusers issue's benchmark (--compiler all: eager, torch.compile default and
# nexfort in one process, same inputs; JSON + chart in $RES). Usage: bash benchmarks/gpu/issue4_targets.sh [STEP...]
# Steps: px1024 (target mode), px512x768 (target mode + cudagraphs), jit (PixArt 1024, jit mode: regional by default),
# sd3 (SD3-medium 1024, target mode + cudagraphs), px512x768-mk (px512x768 with options triton.multi_kernel=1);
# FA4=1 first stages FlashAttention-4 (benchmarks/gpu/fa4_stage.sh) and adds _fa4 to the file names.
set -uo pipefail
source benchmarks/gpu/setup.sh
SUFFIX=
[ "${FA4:-0}" = 1 ] && source benchmarks/gpu/fa4_stage.sh && SUFFIX=_fa4
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
T=max-optimize:max-autotune:low-precision
run() {  # name, height, width, mode[, model[, extra compiler-config JSON members]]
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout 560 python3 benchmarks/text_to_image.py --model ${5:-pixart-alpha} --denoiser-only --compiler all --height $2 \
    --width $3 --warmups 3 --iters 50 --compiler-config "{\"mode\": \"$4\"${6:+, $6}}" --output-json $RES/$1$SUFFIX.json > $RES/$1$SUFFIX.log 2>&1
  grep -v Warning $RES/$1$SUFFIX.log | grep -iv "kept in float32\|_warn_once" | tail -8 | cut -c1-300
}
for STEP in ${@:-px1024 px512x768 jit}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    px1024) run pixart_alpha_1024_denoiser_h100_target_mode 1024 1024 $T ;;
    px512x768) run pixart_alpha_512x768_denoiser_h100_target_mode_cudagraphs 512 768 $T:cudagraphs ;;
    jit) run pixart_alpha_1024_denoiser_h100_jit_regional 1024 1024 jit:disable-runtime-fusion ;;
    px512x768-mk) run pixart_alpha_512x768_denoiser_h100_target_mode_cudagraphs_multi_kernel 512 768 $T:cudagraphs \
                    pixart-alpha '"options": {"triton.multi_kernel": 1}' ;;
    sd3) run sd3_medium_1024_denoiser_h100_target_mode_cudagraphs 1024 1024 $T:cudagraphs sd3-medium ;;
  esac
done
echo ALL-DONE
