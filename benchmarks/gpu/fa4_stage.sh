#!/usr/bin/env bash
# FlashAttention-4 on the GPU machine, whose calls carry at most 64 MiB: its CuTe-DSL library wheel (92 MB) travels
# in two halves over two calls (carry .fa4big1, then .fa4big2, each copied to /tmp/parts, which lasts while the
# machine stays warm), the other wheels (.fa4) with the third call, which assembles and installs them into
# /tmp/fa4site. Here, beforehand: pip download --pre --no-deps flash-attn-4 nvidia-cutlass-dsl
# nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core nvidia-cutlass-dsl-libs-cu13 apache-tvm-ffi
# torch-c-dlpack-ext quack-kernels einops cuda-bindings cuda-pathfinder (Python 3.12 wheels) into .fa4, then
# split -b 46000000 the libs-cu13 wheel into .fa4big1/cu13part.aa and .fa4big2/cu13part.ab.
# Source it: `source benchmarks/gpu/fa4_stage.sh` (sets PYTHONPATH when FlashAttention-4 is installed).
mkdir -p /tmp/parts
for d in .fa4big1 .fa4big2; do [ -d $d ] && cp $d/* /tmp/parts/; done
if [ ! -d /tmp/fa4site ] && [ -f /tmp/parts/cu13part.aa ] && [ -f /tmp/parts/cu13part.ab ] && [ -d .fa4 ]; then
  mkdir -p /tmp/w && cat /tmp/parts/cu13part.aa /tmp/parts/cu13part.ab \
    > /tmp/w/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl && cp .fa4/*.whl /tmp/w/ \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fa4site /tmp/w/*.whl
fi
if [ -d /tmp/fa4site ]; then
  # pip --target does not run the cutlass-dsl .pth file: add its package folder by hand
  export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:${PYTHONPATH:-}
  python3 -c "import flash_attn.cute, cutlass; print('flash-attn-4 installed')"
else
  echo "flash-attn-4 not staged yet: $(ls /tmp/parts)"
fi
