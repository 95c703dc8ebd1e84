#!/usr/bin/env bash
# One GPU lease for issues 4, 5 and 6 (results under $RES, default $OUT):
#  - CUDA graphs on PixArt-α after the static-parameter fix; max-optimize:max-autotune:low-precision cold compile,
#  - the compiled-artifact cache's warm start on PixArt-α 1024x1024 (cold / warm / another machine through Redis),
#  - the resolution grid (16 + rare sizes + batch 1->4) with dynamic=True, PixArt-α and SDXL, checked against eager.
# Carry .whl (the wheels benchmarks/gpu/setup.sh installs, with redis and fakeredis) and .redis: the Debian redis-server binary and the
# libraries ldd lists for it that the GPU image lacks, copied here (git-ignored):
#   mkdir -p .redis && cp /usr/bin/redis-server .redis/ && for l in liblzf.so.1 libjemalloc.so.2 libsystemd.so.0 \
#     libssl.so.3 libcrypto.so.3 libatomic.so.1 libcap.so.2 libgcrypt.so.20 liblzma.so.5 libzstd.so.1 liblz4.so.1 \
#     libgpg-error.so.0; do cp -L /lib/x86_64-linux-gnu/$l .redis/; done
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES; J=$RES/probe2.jsonl
P="python3 benchmarks/gpu/probe.py"
fresh() { export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d); }
# Redis: the Debian server binary carried in .redis (a real redis-server), else fakeredis's TCP server
if LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes; then REDIS_KIND=redis-server
else python3 -c "from fakeredis import TcpFakeServer; TcpFakeServer(('127.0.0.1', 6399)).serve_forever()" &
     REDIS_KIND=fakeredis-tcp; fi
sleep 1; echo "redis: $REDIS_KIND" | tee $RES/redis_kind.txt
fresh; timeout 300 $P denoiser --hw 512x768 --profile --compiler-config '{"mode": "max-optimize:low-precision:cudagraphs"}' | tee -a $J
fresh; timeout 300 $P denoiser --hw 1024x1024 --compiler-config '{"mode": "max-optimize:low-precision:cudagraphs"}' | tee -a $J
fresh; timeout 420 $P denoiser --hw 1024x1024 --profile --compiler-config '{"mode": "max-optimize:max-autotune:low-precision"}' | tee -a $J
MA=$(python3 -c "import json,sys; r=[json.loads(l) for l in open('$J')][-1]; print('max-autotune:' if 'max-autotune' in (r.get('config') or '') and r['cold_compile_s']<300 else '')" 2>/dev/null)
timeout 900 python3 benchmarks/text_to_image.py --model pixart-alpha --compiler nexfort --steps 20 \
  --compiler-config '{"mode": "max-optimize:low-precision", "dynamic": true}' --run_multiple_resolutions 1 \
  --run_rare_resolutions 1 --warmups 1 --iters 3 --output-json $RES/pixart_alpha_grid_dynamic.json --output-chart $RES/pixart_alpha_grid_dynamic.png \
  2>&1 | tee $RES/grid_pixart.log | tail -40
timeout 900 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
  --mode "max-optimize:${MA}low-precision:cache-all" --redis-url redis://127.0.0.1:6399/0 --repeats 1 \
  --output-json $RES/cache_warm_start_pixart_1024_h100.json 2>&1 | tee $RES/cache.log | grep -v Warning
timeout 900 python3 examples/text_to_image_sdxl.py --compiler nexfort --steps 20 \
  --compiler-config '{"mode": "max-optimize:low-precision", "dynamic": true, "memory_format": "channels_last"}' --run_multiple_resolutions 1 \
  --run_rare_resolutions 1 --warmups 1 --iters 3 --output-json $RES/sdxl_grid_dynamic.json --output-chart $RES/sdxl_grid_dynamic.png \
  2>&1 | tee $RES/grid_sdxl.log | tail -40
echo ALL-DONE
