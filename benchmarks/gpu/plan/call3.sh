# FLUX.1-dev 1024^2 bf16 lossless (the recommended mode), with and without the q/k RMSNorm + RoPE op.
source benchmarks/gpu/plan/common.sh
LIMIT=$(left) ITERS=20 bash benchmarks/gpu/run.sh bench flux_lossless_rope flux-dev 1024x1024 -- --dtype bf16 \
  --compiler-config "{$RECOMMENDED}" \
  --also-nexfort "rope={$RECOMMENDED, \"options\": {\"qk_norm_rope.enabled\": true}}"
elapsed; python3 benchmarks/gpu/plan/counters.py flux_lossless_rope
