#!/usr/bin/env bash
# Issue 4, the linear_gelu pass (GELU in the fc1 GEMM's cuBLASLt epilogue): each model's denoiser with the pass on
# (the max-optimize default) and off, one process each (benchmarks/gpu/probe.py: median CUDA-event step, GPU time
# per kernel family, rel L2 vs eager), then the pass's GPU tests. Usage: bash benchmarks/gpu/linear_gelu.sh [STEP...]
# Results: one JSON line per step in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
LP=max-optimize:low-precision
OFF='"options": {"linear_gelu": {"enabled": false}}'
probe() {  # name, then probe.py arguments
  local name=$1; shift
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout 300 python3 benchmarks/gpu/probe.py denoiser "$@" > $RES/$name.log 2>&1
  grep '^{' $RES/$name.log | sed "s/^{/{\"step\": \"$name\", /" >> $RES/probe.jsonl
  grep -v Warning $RES/$name.log | grep -v '^{' | grep -iv "kept in float32\|_warn_once" | tail -3 | cut -c1-300
}
for STEP in ${@:-tests px-on px-off small-on small-off sd3-on sd3-off}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    tests) timeout 240 python3 -m pytest -q -m gpu tests/passes/test_linear_gelu.py -p no:cacheprovider \
             > $RES/pytest_gpu_linear_gelu.log 2>&1; tail -3 $RES/pytest_gpu_linear_gelu.log ;;
    px-on) probe px-on --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    px-off) probe px-off --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$LP\", $OFF}" ;;
    small-on) probe small-on --hw 512x768 --eager --profile --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    small-off) probe small-off --hw 512x768 --profile --compiler-config "{\"mode\": \"$LP:cudagraphs\", $OFF}" ;;
    sd3-on) probe sd3-on --model sd3-medium --hw 1024x1024 --eager --profile --compiler-config "{\"mode\": \"$LP\"}" ;;
    sd3-off) probe sd3-off --model sd3-medium --hw 1024x1024 --profile --compiler-config "{\"mode\": \"$LP\", $OFF}" ;;
  esac
done
python3 - $RES/probe.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    p = r.get("profile") or {}
    c = (r.get("nexfort_counters") or {}).get("pass", {})
    print(f"{r['step']:10s} {r['model']:12s} {r['hw']:9s} ms={r['ms']:7.3f} eager={r.get('eager_ms')} "
          f"compile={r['cold_compile_s']}s l2={r['rel_l2_vs_eager']:.2e} mem={r['peak_mem_mb']} gpu_ms={p.get('gpu_ms')} "
          f"passes={c} fam={p.get('families_ms')}")
PY
echo ALL-DONE
