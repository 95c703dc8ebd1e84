#!/usr/bin/env bash
# Issue 4, the quant flag (fp8 linears) on the PixArt-alpha denoiser, one process per configuration
# (benchmarks/gpu/probe.py: cold compile, median CUDA-event step, peak memory, rel L2 vs eager fp16 and vs a float32
# copy, GPU time per kernel family), and the fp8 GPU unit tests. Usage: bash benchmarks/gpu/quant_probe.sh [STEP...]
# Steps: tests base quant quant-mlp small-base small-quant (default: all). Results: one JSON line each in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
LP=max-optimize:low-precision
probe() {  # name, then probe.py arguments
  local name=$1; shift
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout 300 python3 benchmarks/gpu/probe.py denoiser "$@" > $RES/$name.log 2>&1
  grep '^{' $RES/$name.log | sed "s/^{/{\"step\": \"$name\", /" >> $RES/probe.jsonl
  grep -v Warning $RES/$name.log | grep -v '^{' | tail -3 | cut -c1-300
}
for STEP in ${@:-tests base quant quant-mlp small-base small-quant}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    tests) timeout 240 python3 -m pytest -q -m gpu tests/passes/test_quant.py tests/diffusers/test_quantize_pipe.py \
             -p no:cacheprovider > $RES/pytest_gpu_quant.log 2>&1; tail -5 $RES/pytest_gpu_quant.log ;;
    base) probe base --hw 1024x1024 --eager --fp32-ref --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    quant) probe quant --hw 1024x1024 --fp32-ref --profile --compiler-config "{\"mode\": \"$LP:quant\"}" ;;
    quant-mlp) probe quant-mlp --hw 1024x1024 --fp32-ref \
                 --compiler-config "{\"mode\": \"$LP:quant\", \"options\": {\"quant\": {\"exclude\": [\"attn\"]}}}" ;;
    small-base) probe small-base --hw 512x768 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    small-quant) probe small-quant --hw 512x768 --compiler-config "{\"mode\": \"$LP:cudagraphs:quant\"}" ;;
  esac
done
python3 - $RES/probe.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['step']:12s} {r['hw']:10s} ms={r['ms']:7.3f} eager={r.get('eager_ms')} compile={r['cold_compile_s']}s "
          f"l2_eager={r['rel_l2_vs_eager']:.2e} l2_fp32={r.get('rel_l2_vs_fp32')} eager_l2_fp32={r.get('eager_rel_l2_vs_fp32')} "
          f"mem={r['peak_mem_mb']} fam={r.get('profile', {}).get('families_ms')}")
PY
echo ALL-DONE
