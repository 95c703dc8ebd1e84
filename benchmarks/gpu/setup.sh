#!/usr/bin/env bash
# On the GPU machine (no network): install the wheels carried in .whl/ (git-ignored: whatever the machine's image
# lacks, downloaded beforehand for its Python, e.g. `pip download --only-binary=:all: --python-version 3.12 -d .whl
# redis fakeredis`) and nexfort's packages from this checkout. Source it: `source benchmarks/gpu/setup.sh`.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
python3 -m pip install -q --no-index --no-deps --no-build-isolation ./packages/nexfort-core ./packages/nexfort-passes \
  ./packages/nexfort-cache ./packages/nexfort-diffusers ./tests/plugins/nexfort-example-plugin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, diffusers; print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__)"
