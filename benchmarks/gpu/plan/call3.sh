# FLUX.1-dev 1024^2 bf16 lossless (the recommended mode) against the same with the two untimed FLUX passes on
# (qk_norm_rope, cat_linear), one process (call 2 isolates qk_norm_rope under fp8, where cat_linear does not act).
source benchmarks/gpu/plan/common.sh
ON='"options": {"qk_norm_rope.enabled": true, "cat_linear.enabled": true}'
LIMIT=$(left) ITERS=20 bash benchmarks/gpu/run.sh bench flux_lossless_passes flux-dev 1024x1024 -- --dtype bf16 \
  --compiler-config "{$RECOMMENDED}" --also-nexfort "passes={$RECOMMENDED, $ON}"
elapsed; python3 benchmarks/gpu/plan/counters.py flux_lossless_passes
