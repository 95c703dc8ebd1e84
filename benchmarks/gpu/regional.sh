#!/usr/bin/env bash
# Issue 4, the jit row (cold compile <= 30 s, still faster than eager): regional compilation
# (options.diffusers.regional) against whole-model compilation, PixArt-alpha 1024x1024 and SD3-medium denoisers,
# one process each (benchmarks/gpu/probe.py; cold compile = fresh Inductor/Triton caches, first call included).
# Usage: bash benchmarks/gpu/regional.sh [STEP...]. Results: one JSON line per step in $RES/probe.jsonl.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
JIT=jit:disable-runtime-fusion
REG='"options": {"diffusers": {"regional": true}}'
probe() {  # name, then probe.py arguments
  local name=$1; shift
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout 300 python3 benchmarks/gpu/probe.py denoiser "$@" > $RES/$name.log 2>&1
  grep '^{' $RES/$name.log | sed "s/^{/{\"step\": \"$name\", /" >> $RES/probe.jsonl
  grep -v Warning $RES/$name.log | grep -v '^{' | grep -iv "kept in float32\|_warn_once" | tail -3 | cut -c1-300
}
for STEP in ${@:-px-jit-regional px-jit px-lp-regional sd3-jit-regional sd3-jit}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    px-jit-regional) probe $STEP --hw 1024x1024 --eager --compile-times --compiler-config "{\"mode\": \"$JIT\", $REG}" ;;
    px-jit) probe $STEP --hw 1024x1024 --compile-times --compiler-config "{\"mode\": \"$JIT\"}" ;;
    px-lp-regional) probe $STEP --hw 1024x1024 --compiler-config "{\"mode\": \"max-optimize:low-precision\", $REG}" ;;
    sd3-jit-regional) probe $STEP --model sd3-medium --hw 1024x1024 --eager --compiler-config \
                        "{\"mode\": \"$JIT\", $REG}" ;;
    sd3-jit) probe $STEP --model sd3-medium --hw 1024x1024 --compiler-config "{\"mode\": \"$JIT\"}" ;;
  esac
done
python3 - $RES/probe.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    g = (r.get("nexfort_counters") or {}).get("backend", {}).get("graphs")
    print(f"{r['step']:16s} {r['model']:12s} {r['hw']:9s} ms={r['ms']:7.3f} eager={r.get('eager_ms')} "
          f"compile={r['cold_compile_s']}s graphs={g} l2={r['rel_l2_vs_eager']:.2e} mem={r['peak_mem_mb']}")
    if r.get("compile_times"):
        keys, vals = r["compile_times"]
        top = sorted(zip(keys, vals), key=lambda kv: -float(kv[1]))[:6]
        print("   compile phases (s):", ", ".join(f"{k}={float(v):.1f}" for k, v in top))
PY
echo ALL-DONE
