#!/usr/bin/env bash
# The GPU runner: sets the machine up, then runs measurements, each in a process of its own with fresh Inductor and
# Triton caches (a cold compile), its JSON/JSON line, chart and log in $RES (default: the device tool's $OUT, else
# benchmarks/out). Run from the repository root on the GPU machine; benchmarks/README.md says which to run for what.
#
#   bash benchmarks/gpu/run.sh KIND [ARGS...]
#
#   rows [ROW...]                 the headline rows (the README's table): --denoiser-only --compiler all, eager,
#                                 torch.compile, its $INDUCTOR_MODES and nexfort in $MODE (default: compile_pipe's
#                                 recommended mode). ROW: px1024 px512x768 sigma1024 sd3 sdxl flux (default: the
#                                 table's five: px1024 px512x768 sd3 sigma1024 flux)
#   bench NAME MODEL HxW [-- BENCHMARK ARGS]
#                                 one such row of any built-in model (--model of benchmarks/text_to_image.py)
#   pipeline NAME MODEL HxW [-- BENCHMARK ARGS]
#                                 the whole pipeline ($STEPS steps), eager and nexfort in $MODE
#   grid NAME MODEL [-- BENCHMARK ARGS]
#                                 16 resolutions + 2 rare sizes + a batch change with dynamic=True, each against eager
#                                 (MODEL sdxl runs examples/text_to_image_sdxl.py)
#   warm-start NAME MODEL HxW [-- CACHE_WARM_START ARGS]
#                                 benchmarks/cache_warm_start.py in $MODE (default max-optimize:low-precision:cache-all):
#                                 cold, warm, and with REDIS=1 another machine through Redis
#   probe NAME [PROBE ARGS]       benchmarks/gpu/probe.py denoiser ARGS (kernel families with --profile), one JSON line
#                                 in $RES/probe.jsonl; `run.sh summary` tabulates them
#   summary                       one line per probe of $RES/probe.jsonl
#   tests [PYTEST ARGS]           the GPU tests (pytest -m gpu; default: all of tests/)
#
# Environment: FA4=1 stages FlashAttention-4 first (fa4_stage.sh; what `pip install "nexfort-passes[cuda]"` brings);
# REDIS=1 starts the carried redis-server (.redis/, see archive/2026-11-26a-h100-profile-cache-grid/issues456.sh);
# MODE (nexfort's mode string), INDUCTOR_MODES (default reduce-overhead), WARMUPS (3), ITERS (30), STEPS (20),
# LIMIT (seconds per measurement, default 560), RES; DRY=1 prints each command instead of running it (no setup);
# NEXFORT_GPU_READY=1 skips the setup (several runs in one call: source setup.sh and fa4_stage.sh once, export it).
# Example (one device call): bash benchmarks/gpu/run.sh rows px1024 && bash benchmarks/gpu/run.sh probe px --hw
# 1024x1024 --profile --compiler-config '{"mode": "max-optimize"}'
set -uo pipefail
KIND=${1:?usage: bash benchmarks/gpu/run.sh KIND [ARGS...] (see the header of this file)}; shift
if [ "$KIND" != summary ] && [ "${DRY:-0}" != 1 ] && [ "${NEXFORT_GPU_READY:-0}" != 1 ]; then
  source benchmarks/gpu/setup.sh
  [ "${FA4:-0}" = 1 ] && source benchmarks/gpu/fa4_stage.sh
fi
export PYTHONUNBUFFERED=1
RES=${RES:-${OUT:-benchmarks/out}}; mkdir -p "$RES"
source benchmarks/gpu/probe_steps.sh  # probe NAME ARGS..., summary
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//' \
      | tr A-Z a-z)
GPU=${GPU:-cpu}
LIMIT=${LIMIT:-560}

fresh() { export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d); }
show() { grep -v Warning "$1" | grep -iv "kept in float32\|_warn_once" | tail -${2:-9} | cut -c1-250 || true; }
x() {  # LOG COMMAND...: run COMMAND with its output in LOG (DRY=1: print it)
  local log=$1; shift
  if [ "${DRY:-0}" = 1 ]; then printf '%q ' "$@"; echo; : > "$log"; return 0; fi
  timeout "$LIMIT" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || FAILED=1  # the runner's exit status: 1 when any measurement failed
  return $rc
}
mode_args() { [ -n "${MODE:-}" ] && printf '%s\n' --compiler-config "{\"mode\": \"$MODE\"}"; }
redis() {
  [ "${REDIS:-0}" = 1 ] || return 0
  [ "${DRY:-0}" = 1 ] && echo --redis-url redis://127.0.0.1:6399/0 && return 0
  LD_LIBRARY_PATH=$PWD/.redis .redis/redis-server --port 6399 --save '' --daemonize yes && sleep 1 \
    && echo --redis-url redis://127.0.0.1:6399/0
}

bench() {  # NAME MODEL HEIGHT WIDTH [extra args]: one --denoiser-only --compiler all row
  local name=$1 model=$2 h=$3 w=$4; shift 4
  local f=$RES/${name}_${GPU} cfg
  mapfile -t cfg < <(mode_args)
  fresh
  x "$f.log" python3 benchmarks/text_to_image.py --model "$model" --denoiser-only --compiler all --height "$h" \
    --width "$w" --warmups "${WARMUPS:-3}" --iters "${ITERS:-30}" --inductor-modes "${INDUCTOR_MODES-reduce-overhead}" \
    "${cfg[@]}" "$@" --output-json "$f.json" --output-chart "${f}_chart.png"
  echo "$name: rc=$?"; show "$f.log"
}

hw() { echo "${1%x*} ${1#*x}"; }  # 1024x768 -> "1024 768"
split_args() { ARGS=(); while [ $# -gt 0 ] && [ "$1" != -- ]; do ARGS+=("$1"); shift; done; [ $# -gt 0 ] && shift; EXTRA=("$@"); }

case $KIND in
  rows)
    for ROW in ${@:-px1024 px512x768 sd3 sigma1024 flux}; do
      echo "== $ROW $(date +%T)"
      case $ROW in
        px1024) bench px1024 pixart-alpha 1024 1024 ;;
        px512x768) bench px512x768 pixart-alpha 512 768 ;;
        sigma1024) bench sigma1024 pixart-sigma 1024 1024 ;;
        sd3) bench sd3_1024 sd3-medium 1024 1024 ;;
        sdxl) bench sdxl_1024 sdxl 1024 1024 ;;
        flux) bench flux_1024 flux-dev 1024 1024 --dtype bf16 ;;
        *) echo "unknown row $ROW; rows: px1024 px512x768 sigma1024 sd3 sdxl flux"; exit 2 ;;
      esac
    done ;;
  bench)
    split_args "$@"; set -- "${ARGS[@]}"
    bench "$1" "$2" $(hw "$3") "${EXTRA[@]}" ;;
  pipeline)
    split_args "$@"; set -- "${ARGS[@]}"
    f=$RES/${1}_${GPU}; read -r h w <<< "$(hw "$3")"; mapfile -t cfg < <(mode_args); fresh
    x "$f.log" python3 benchmarks/text_to_image.py --model "$2" --compiler nexfort --steps "${STEPS:-20}" \
      --height "$h" --width "$w" --warmups "${WARMUPS:-2}" --iters "${ITERS:-5}" "${cfg[@]}" "${EXTRA[@]}" \
      --output-json "$f.json" --output-chart "${f}_chart.png"
    echo "$1: rc=$?"; show "$f.log" ;;
  grid)
    split_args "$@"; set -- "${ARGS[@]}"
    f=$RES/${1}_${GPU}; fresh
    script=benchmarks/text_to_image.py; model=(--model "$2")
    [ "$2" = sdxl ] && script=examples/text_to_image_sdxl.py && model=()
    x "$f.log" python3 $script "${model[@]}" --compiler nexfort --steps "${STEPS:-20}" \
      --compiler-config "{\"mode\": \"${MODE:-max-optimize:low-precision}\", \"dynamic\": true}" \
      --run_multiple_resolutions 1 --run_rare_resolutions 1 --warmups 1 --iters "${ITERS:-1}" "${EXTRA[@]}" \
      --output-json "$f.json" --output-chart "$f.png"
    echo "$1: rc=$?"; show "$f.log" 40 ;;
  warm-start)
    split_args "$@"; set -- "${ARGS[@]}"
    f=$RES/${1}_${GPU}; read -r h w <<< "$(hw "$3")"; read -r -a rurl <<< "$(redis)"
    x "$f.log" python3 benchmarks/cache_warm_start.py --device cuda --model "$2" --height "$h" --width "$w" \
      --mode "${MODE:-max-optimize:low-precision:cache-all}" --repeats 1 "${rurl[@]}" "${EXTRA[@]}" \
      --output-json "$f.json"
    echo "$1: rc=$?"; grep -v Warning "$f.log" | grep -E "^run|^cold|^warm|Error|error" | cut -c1-300 || true ;;
  probe)
    name=$1; shift
    if [ "${DRY:-0}" = 1 ]; then printf '%q ' python3 benchmarks/gpu/probe.py denoiser "$@"; echo
    else probe "$name" "$@"; fi ;;
  summary)
    summary ;;
  tests)
    x "$RES/pytest_gpu_${GPU}.log" python3 -m pytest -q -p no:cacheprovider -m gpu "${@:-tests}"
    echo "tests: rc=$?"; tail -5 "$RES/pytest_gpu_${GPU}.log" ;;
  *)
    echo "unknown kind $KIND: rows bench pipeline grid warm-start probe summary tests (see the header of $0)"; exit 2 ;;
esac
exit ${FAILED:-0}
