# Sourced by the plan's calls: the machine set up (wheels, nexfort, FA4 where staged), one clock for the call.
set -u
T0=$(date +%s)
if [ "${DRY:-0}" != 1 ]; then  # DRY=1: print each command instead of running it (tests/benchmarks/test_gpu_runner.py)
  source benchmarks/gpu/setup.sh > "$OUT/setup.log" 2>&1; tail -2 "$OUT/setup.log"
  source benchmarks/gpu/fa4_stage.sh > "$OUT/fa4.log" 2>&1; tail -1 "$OUT/fa4.log"
fi
export NEXFORT_GPU_READY=1 INDUCTOR_MODES= RES=$OUT
left() { echo $(( ${1:-590} - ($(date +%s) - T0) )); }  # seconds left of the call (less a margin)
script() {  # SECONDS LOG COMMAND...: a script of benchmarks/gpu, its output in LOG, the table at its end shown
  local limit=$1 log=$2; shift 2
  if [ "${DRY:-0}" = 1 ]; then printf '%q ' "$@"; echo; return 0; fi
  timeout "$limit" "$@" > "$log" 2>&1; echo "$(basename "$log"): rc=$?"; tail -7 "$log" | cut -c1-200
}
elapsed() { echo "t=$(( $(date +%s) - T0 )) s"; }
QUANT='"mode": "max-optimize:low-precision:cudagraphs:quant"'
RECOMMENDED='"mode": "max-optimize:max-autotune:low-precision:cudagraphs"'
