#!/usr/bin/env bash
# Issue 2 on the GPU: the CUDA tests on a PixArt-α-sized transformer, then eager / torch.compile / nexfort
# per-step times of PixArt-α XL-2 (one CFG forward, fp16, 1024x1024) measured in one process.
set -uo pipefail
source benchmarks/gpu/setup.sh
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider -m gpu tests/core/test_backend_gpu.py -s 2>&1 | tee $OUT/pytest_gpu.log | grep -E "mode=|passed|failed|Error"
python3 benchmarks/text_to_image.py --model pixart-alpha --denoiser-only --compiler all --height 1024 --width 1024 \
  --warmups 2 --iters 20 --output-json $OUT/pixart_alpha_1024_denoiser.json --output-chart $OUT/pixart_alpha_1024_denoiser.png \
  2>&1 | tee $OUT/bench.log | tail -25
