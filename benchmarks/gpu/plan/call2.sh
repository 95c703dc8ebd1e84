# FLUX.1-dev 1024^2 bf16 fp8 dynamic, with and without the q/k RMSNorm + RoPE op (FA4 staged by this call).
source benchmarks/gpu/plan/common.sh
LIMIT=$(left) ITERS=20 bash benchmarks/gpu/run.sh bench flux_fp8_rope flux-dev 1024x1024 -- --dtype bf16 \
  --compiler-config "{$QUANT}" --also-nexfort "rope={$QUANT, \"options\": {\"qk_norm_rope.enabled\": true}}"
elapsed; python3 benchmarks/gpu/plan/counters.py flux_fp8_rope
