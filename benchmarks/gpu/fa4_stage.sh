#!/usr/bin/env bash
# FlashAttention-4 on the GPU machine, whose calls carry at most 64 MiB (the working tree included). Its CuTe-DSL
# library wheel nvidia-cutlass-dsl-libs-cu13 (92 MB) travels unpacked and xz-compressed (61 MB: .fa4x/cu13.tar.xz)
# in a first call, which unpacks it to /tmp/cu13x (it lasts while the machine stays warm: call again within its
# idle time). When the working tree is too large for the 61 MB beside it, the archive travels split in two
# (`split -b 45M cu13.tar.xz cu13.tar.xz.`: .fa4x/cu13.tar.xz.aa in the first call, .fa4x2/cu13.tar.xz.ab in the
# second, which joins and unpacks them); the other wheels (.fa4) travel with the next call, which installs them into /tmp/fa4site and merges the
# unpacked library into it (its folder nvidia_cutlass_dsl/ is shared with the other cutlass-dsl wheels: installing
# it with pip --target after them would replace theirs). The older layout, the wheel in two halves
# (.fa4big1/cu13part.aa, .fa4big2/cu13part.ab over two calls), still works.
# Here, beforehand (Python 3.12 wheels; the GPU image already has cuda-bindings, cuda-pathfinder and einops):
#   pip download --pre --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ... -d .fa4 \
#     flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
#     nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi torch-c-dlpack-ext quack-kernels
#   mkdir x && (cd x && unzip -q ../.fa4/nvidia_cutlass_dsl_libs_cu13-*.whl && tar cf - . | xz -9 -T2) > .fa4x/cu13.tar.xz
#   rm .fa4/nvidia_cutlass_dsl_libs_cu13-*.whl
# Source it: `source benchmarks/gpu/fa4_stage.sh` (sets PYTHONPATH when FlashAttention-4 is installed).
mkdir -p /tmp/parts
for d in .fa4big1 .fa4big2 .fa4x .fa4x2; do [ -d $d ] && cp $d/* /tmp/parts/; done
if [ ! -d /tmp/cu13x ]; then
  tarball=
  if [ -f /tmp/parts/cu13.tar.xz ]; then tarball=/tmp/parts/cu13.tar.xz
  elif [ -f /tmp/parts/cu13.tar.xz.aa ] && [ -f /tmp/parts/cu13.tar.xz.ab ]; then
    cat /tmp/parts/cu13.tar.xz.a? > /tmp/parts/cu13.joined.tar.xz && tarball=/tmp/parts/cu13.joined.tar.xz
  fi
  if [ -n "$tarball" ]; then
    mkdir -p /tmp/cu13x.tmp && tar xJf "$tarball" -C /tmp/cu13x.tmp && mv /tmp/cu13x.tmp /tmp/cu13x
  fi
fi
if [ ! -d /tmp/fa4site ] && [ -d .fa4 ]; then
  if [ -d /tmp/cu13x ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fa4site.tmp .fa4/*.whl \
      && cp -r /tmp/cu13x/. /tmp/fa4site.tmp/ && mv /tmp/fa4site.tmp /tmp/fa4site
  elif [ -f /tmp/parts/cu13part.aa ] && [ -f /tmp/parts/cu13part.ab ]; then
    mkdir -p /tmp/w && cat /tmp/parts/cu13part.aa /tmp/parts/cu13part.ab \
      > /tmp/w/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl && cp .fa4/*.whl /tmp/w/ \
      && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fa4site /tmp/w/*.whl
  fi
fi
if [ -d /tmp/fa4site ]; then
  # pip --target does not run the cutlass-dsl .pth file: add its package folder by hand
  export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:${PYTHONPATH:-}
  python3 -c "import flash_attn.cute, cutlass; print('flash-attn-4 installed')"
else
  echo "flash-attn-4 not staged yet: $(ls /tmp/parts) $(ls -d /tmp/cu13x 2>/dev/null)"
fi
