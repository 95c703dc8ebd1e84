"""nexfort-diffusers: compile whole diffusers pipelines with nexfort.

``compile_pipe(pipe, mode=..., options=..., ignores=(), fuse_qkv_projections=True)``; ``fuse_lora(pipe, weights)``
/ ``unfuse_lora(pipe)``: LoRA on a compiled pipeline without recompiling. ``quantize_pipe(pipe, "fp8")``: the
denoisers' linear layers in float8 (nexfort-passes' ``quantize_``). ``parallelize_pipe(pipe, cfg=2, ulysses=2,
ring=1)``: one image over several GPUs (CFG-parallel, Ulysses and ring attention: :mod:`nexfort.diffusers.parallel`).
"""

from __future__ import annotations

from nexfort.diffusers.dynamic import UnsupportedResolutionError
from nexfort.diffusers.lora import fuse_lora, unfuse_lora
from nexfort.diffusers.parallel import ParallelConfigError, ParallelInputError, init_distributed, parallelize_pipe
from nexfort.diffusers.pipe import (
    compilable_components,
    compile_module,
    compile_pipe,
    resolve_pipe_config,
    uncompile_pipe,
    upcast_vae_once,
    valid_ignore_names,
)
from nexfort.diffusers.quant import quantize_pipe

__all__ = ["UnsupportedResolutionError", "fuse_lora", "unfuse_lora",
           "ParallelConfigError", "ParallelInputError", "init_distributed", "parallelize_pipe",
           "compile_pipe", "compile_module", "compilable_components", "resolve_pipe_config", "uncompile_pipe",
           "upcast_vae_once", "quantize_pipe",
           "valid_ignore_names"]
__version__ = "0.1.0"
