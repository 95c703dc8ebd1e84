# (If the lease has time left) PixArt-a 1024^2 fp16 fp8 dynamic: FA4 against FA4 + the lossy int8 Q.K^T attention
# (issue 18's fp8-attention option, off by default; its per-shape check bound raised to the mode's 3e-2), one process.
source benchmarks/gpu/plan/common.sh
LIMIT=$(left) bash benchmarks/gpu/run.sh bench pixart_fp8_int8qk pixart-alpha 1024x1024 -- \
  --compiler-config "{$QUANT}" --also-nexfort "int8qk={$QUANT, \"options\": {\"attention_kernel.kernels\": [\"fa4\", \
\"int8_qk\"], \"attention_kernel.max_rel_l2\": 0.03}}"
elapsed; python3 benchmarks/gpu/plan/counters.py pixart_fp8_int8qk
