"""``--parallel cfg=2,ulysses=2``: the benchmark under ``torchrun --nproc-per-node N``, one image over N ranks
(:func:`nexfort.diffusers.parallelize_pipe`). Every rank loads, parallelizes, compiles and times the same pipeline
(the collectives keep them in step); rank 0 prints and writes the image, JSON and chart. NVLink multicast stays off
(``nexfort.diffusers.parallel.init_distributed`` sets ``NCCL_NVLS_ENABLE=0``, ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``,
``NVSHMEM_DISABLE_NVLS=1`` with ``os.environ.setdefault`` before the process group exists). Without
``--parallel`` nothing here runs."""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional


def setup(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Parse ``--parallel``, check the launch, start the process group and pick this rank's device; None without
    ``--parallel``. A bad value or launch exits before any model is built."""
    if not getattr(args, "parallel", None):
        return None
    from nexfort.diffusers.parallel import ParallelConfigError, init_distributed, parse_parallel

    try:
        degrees = parse_parallel(args.parallel)
    except ParallelConfigError as e:
        raise SystemExit(str(e)) from None
    need = degrees["cfg"] * degrees["ulysses"] * degrees["ring"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if need != world:
        raise SystemExit(f"--parallel {args.parallel}: cfg x ulysses x ring = {need} processes, but WORLD_SIZE is "
                         f"{world}; launch it as `torchrun --nproc-per-node {need} benchmarks/text_to_image.py "
                         f"--parallel {args.parallel} ...`.")
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    rank, world = init_distributed("nccl" if args.device.startswith("cuda") else "gloo")
    import torch.distributed as dist

    return {**degrees, "world_size": world, "rank": rank, "backend": str(dist.get_backend()),
            "nvls_env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                                         "NVSHMEM_DISABLE_NVLS")}}


def apply(pipe: Any, info: Optional[Dict[str, Any]]) -> None:
    """``parallelize_pipe`` on the loaded pipeline (once, before any compiler runs)."""
    if info is None:
        return
    from nexfort.diffusers import parallelize_pipe

    parallelize_pipe(pipe, cfg=info["cfg"], ulysses=info["ulysses"], ring=info["ring"])


def is_main(info: Optional[Dict[str, Any]]) -> bool:
    """Whether this process prints and writes files (always without ``--parallel``; rank 0 with it)."""
    return info is None or info["rank"] == 0


def describe(info: Optional[Dict[str, Any]]) -> str:
    if info is None:
        return ""
    return (f"; parallel cfg={info['cfg']} x ulysses={info['ulysses']} x ring={info['ring']} on "
            f"{info['world_size']} ranks ({info['backend']})")


def finish(info: Optional[Dict[str, Any]]) -> None:
    if info is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
