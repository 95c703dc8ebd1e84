#!/usr/bin/env bash
# Issue 5 on one GPU lease: the PixArt-alpha 1024x1024 pipeline's warm start in
# max-optimize:max-autotune:low-precision:cache-all (cold, warm on the same machine, "another machine" through Redis),
# tracing every Triton kernel that tunes or loads (--trace-autotune). Leases i-l of 2026-11-26 ran it, each on the code
# of its commit (the README.md beside this script). Usage: bash benchmarks/gpu/warm_start_max_autotune.sh
# Long: run detached (setsid nohup bash ... > /tmp/res/log &), results in $RES.
set -uo pipefail
source benchmarks/gpu/setup.sh
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES
if LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes; then echo redis-server; fi
sleep 1
timeout 1200 python3 benchmarks/cache_warm_start.py --device cuda --model pixart-alpha --height 1024 --width 1024 \
  --mode max-optimize:max-autotune:low-precision:cache-all --repeats 1 --trace-autotune $RES/trace \
  --redis-url redis://127.0.0.1:6399/0 --output-json $RES/cache_warm_start.json > $RES/cache_ma.log 2>&1
grep -v Warning $RES/cache_ma.log | grep -E "^run|^cold|^warm|Error|error" | cut -c1-300
for f in $RES/trace/*.jsonl; do
  echo "$f: $(grep -c '"event": "coordesc"' $f) coordesc, $(grep -c benchmark_all $f) bench_all, $(grep -c static_load $f) static"
done
echo ALL-DONE
