# Sourced by the lease scripts that run benchmarks/gpu/probe.py once per step (after setup.sh). Results go to $RES
# (default: the device tool's $OUT).
# probe NAME ARGS...: `probe.py denoiser ARGS` in a process of its own with fresh Inductor/Triton caches, its JSON
# line (tagged "step": NAME) appended to $RES/probe.jsonl, its log in $RES/NAME.log.
# summary: one line per step of $RES/probe.jsonl (`probe.py summary`).
export PYTHONUNBUFFERED=1
RES=${RES:-$OUT}; mkdir -p $RES

probe() {
  local name=$1; shift
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d)
  timeout ${LIMIT:-300} python3 benchmarks/gpu/probe.py denoiser "$@" > $RES/$name.log 2>&1
  grep '^{' $RES/$name.log | sed "s/^{/{\"step\": \"$name\", /" >> $RES/probe.jsonl
  grep -v Warning $RES/$name.log | grep -v '^{' | grep -iv "kept in float32\|_warn_once" | tail -3 | cut -c1-300
}
summary() {
  python3 benchmarks/gpu/probe.py summary $RES/probe.jsonl
}
