# GPU tests of the new code; the new ops' microbenchmarks; PixArt-a 1024^2 int8 (new GEMM / _int_mm / no quant).
source benchmarks/gpu/plan/common.sh
LIMIT=200 bash benchmarks/gpu/run.sh tests tests/passes/test_qk_norm_rope.py tests/passes/test_quant_prologue.py \
  tests/passes/test_quant_int8_gemm.py tests/passes/test_attention_short_kv.py; elapsed
script 60 "$OUT/qk_norm_rope.log" python3 benchmarks/gpu/qk_norm_rope.py
script 90 "$OUT/int8_gemm.log" python3 benchmarks/gpu/int8_gemm.py; elapsed
I8='"quant.type": "int8_dynamic", "quant.activation_kernel": "triton"'
LIMIT=$(left) bash benchmarks/gpu/run.sh bench pixart_int8_gemm pixart-alpha 1024x1024 -- \
  --compiler-config "{$QUANT, \"options\": {$I8, \"quant.gemm_kernel\": \"triton\"}}" \
  --also-nexfort "int_mm={$QUANT, \"options\": {$I8}}" --also-nexfort "fp16={$RECOMMENDED}"
elapsed; python3 benchmarks/gpu/plan/counters.py pixart_int8_gemm
