#!/usr/bin/env bash
# Issue 4: what CUDA graphs and freezing give on the rows still short of the targets (PixArt-alpha 512x768 <= 10 ms,
# SD3-medium 1024 <= 39 ms, PixArt 1024), and where the jit-mode cold compile goes (Dynamo's per-phase times).
# One process per step (benchmarks/gpu/probe.py). Usage: bash benchmarks/gpu/launch_overhead.sh [STEP...]
# Results: one JSON line per step in $RES/probe.jsonl.
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
  grep -v Warning $RES/$name.log | grep -v '^{' | grep -iv "kept in float32\|_warn_once" | tail -3 | cut -c1-300
}
for STEP in ${@:-small-freeze small-target-cg sd3-cg sd3-cg-freeze px-cg-freeze px-jit}; do
  echo "== $STEP $(date +%T)"
  case $STEP in
    small-freeze) probe $STEP --hw 512x768 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    small-target-cg) probe $STEP --hw 512x768 --compiler-config \
                       "{\"mode\": \"max-optimize:max-autotune:low-precision:cudagraphs\"}" ;;
    sd3-cg) probe $STEP --model sd3-medium --hw 1024x1024 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs\"}" ;;
    sd3-cg-freeze) probe $STEP --model sd3-medium --hw 1024x1024 \
                     --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    px-cg-freeze) probe $STEP --hw 1024x1024 --eager --compiler-config "{\"mode\": \"$LP:cudagraphs:freezing\"}" ;;
    px-jit) probe $STEP --hw 1024x1024 --compile-times --compiler-config "{\"mode\": \"jit:disable-runtime-fusion\"}" ;;
  esac
done
python3 - $RES/probe.jsonl <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['step']:16s} {r['model']:12s} {r['hw']:9s} ms={r['ms']:7.3f} eager={r.get('eager_ms')} "
          f"compile={r['cold_compile_s']}s l2={r['rel_l2_vs_eager']:.2e} mem={r['peak_mem_mb']}")
    if r.get("compile_times"):
        keys, vals = r["compile_times"]
        top = sorted(zip(keys, vals), key=lambda kv: -float(kv[1]))[:10]
        print("   compile phases (s):", ", ".join(f"{k}={float(v):.1f}" for k, v in top))
PY
echo ALL-DONE
