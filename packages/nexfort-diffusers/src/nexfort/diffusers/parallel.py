"""``parallelize_pipe``: one image's work over the GPUs (or CPU processes) of a host, through ``torch.distributed``.

Modes, combined as ``cfg x ulysses x ring = world size`` (a mesh ``(cfg, ring, ulysses)``, Ulysses innermost):

- ``cfg=2``: the two halves of the classifier-free-guidance batch (unconditional, conditional) on two ranks; the
  denoiser's output halves are all-gathered (:mod:`nexfort.diffusers.parallel_hooks`). Any denoiser, for pipelines
  that batch CFG (PixArt-α/Σ, SD3, SDXL, ...).
- ``ulysses=N``, ``ring=N``: the image tokens split over ``N`` ranks; attention by all-to-all over the heads
  (Ulysses) or by passing key/value chunks around (ring). This is diffusers' own context parallelism
  (``ContextParallelConfig``, ``enable_parallelism``) for the models it covers (FLUX and every other transformer with
  a ``_cp_plan``) and nexfort's plans and processors on top of it for PixArt and SD3
  (:mod:`nexfort.diffusers.parallel_attention`).

Every rank runs the same program (launch with ``torchrun --nproc-per-node N``); everything is validated on every
rank before anything is changed or compiled. Each rank compiles its own graphs (``compile_pipe``, in either order
with ``parallelize_pipe``: see :func:`parallelize_pipe`); the collectives are functional collectives, inside the
compiled graphs. NVLink multicast (NVLS) is kept off in the processes that :func:`init_distributed` starts
(:data:`NVLS_OFF`, set with ``os.environ.setdefault`` before the process group is made).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from nexfort.core.api import NexfortConfigError
from nexfort.diffusers.parallel_hooks import Layout, ParallelInputError, batches_cfg, make_hook, wrap_pipeline

logger = logging.getLogger("nexfort")

__all__ = ["NVLS_OFF", "ParallelConfigError", "ParallelInputError", "init_distributed", "parallelize_pipe",
           "parse_parallel", "valid_layouts"]

#: NVLink multicast (NVLS) off, for NCCL, torch's symmetric memory and NVSHMEM; :func:`init_distributed` and
#: :func:`parallelize_pipe` set these with ``os.environ.setdefault`` (an explicit setting wins).
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
HOOK_NAME = "nexfort_parallel"
DEGREES = ("cfg", "ulysses", "ring")


class ParallelConfigError(NexfortConfigError):
    """A parallel layout this pipeline, model or process group cannot run (raised before anything changes)."""


def nvls_off() -> None:
    for k, v in NVLS_OFF.items():
        os.environ.setdefault(k, v)


def init_distributed(backend: Optional[str] = None) -> Tuple[int, int]:
    """The default process group for a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT`` from the environment): NCCL with one CUDA device per local rank where CUDA is
    available, else gloo; NVLink multicast off first (:data:`NVLS_OFF`). Returns ``(rank, world size)``; does
    nothing but return them where a default group exists already."""
    import torch.distributed as dist

    nvls_off()
    if not dist.is_available():
        raise ParallelConfigError("this torch was built without torch.distributed; parallelism needs it")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def parse_parallel(text: str) -> Dict[str, int]:
    """``"cfg=2,ulysses=2"`` -> ``{"cfg": 2, "ulysses": 2, "ring": 1}`` (the benchmark's ``--parallel``)."""
    out = {d: 1 for d in DEGREES}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in out or not value.strip().isdigit() or int(value) < 1:
            raise ParallelConfigError(f"--parallel: bad entry {part!r} in {text!r}; expected comma-separated "
                                      f"degree=N with degree in {', '.join(DEGREES)} and N >= 1, e.g. "
                                      f"'cfg=2,ulysses=2'.")
        out[key] = int(value)
    return out


def valid_layouts(world: int, heads: Optional[int] = None, cfg_ok: bool = True, ring_ok: bool = True,
                  seq_ok: bool = True) -> List[str]:
    """The layouts ``cfg x ulysses x ring = world`` that the model and pipeline can run."""
    out = []
    for cfg in (1, 2):
        for ulysses in range(1, world + 1):
            for ring in range(1, world + 1):
                if cfg * ulysses * ring != world or (cfg == 2 and not cfg_ok) or (ring > 1 and not ring_ok):
                    continue
                if ulysses * ring > 1 and not seq_ok or (heads and heads % ulysses):
                    continue
                out.append(f"cfg={cfg},ulysses={ulysses},ring={ring}")
    return out


def _diffusers_cp_models() -> List[str]:
    """The transformer classes of the installed diffusers that carry a ``_cp_plan`` (read from its sources)."""
    import diffusers

    folder = os.path.join(os.path.dirname(diffusers.__file__), "models", "transformers")
    names = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if f.endswith(".py"):
            with open(os.path.join(folder, f), encoding="utf-8") as fh:
                text = fh.read()
            for m in re.finditer(r"^    _cp_plan = \{", text, re.M):
                cls = re.findall(r"^class (\w+)\(", text[:m.start()], re.M)
                if cls:
                    names.append(cls[-1])
    return names


@contextlib.contextmanager
def _device_count_at_least_one() -> Iterator[None]:
    """diffusers' ``enable_parallelism`` picks ``rank % torch.accelerator.device_count()`` as the device, a
    division by zero on a machine without an accelerator: the count reads 1 for that call only (CPU/gloo)."""
    acc = getattr(torch, "accelerator", None)
    if acc is None or acc.device_count() > 0:
        yield
        return
    orig = acc.device_count
    acc.device_count = lambda: 1
    try:
        yield
    finally:
        acc.device_count = orig


def _read_split_signatures(model: torch.nn.Module) -> None:
    """diffusers' split hooks read the forward signature of their module on its first call (to find inputs given
    positionally), which Dynamo cannot trace for a block class marked ``allow_in_graph`` (PixArt's
    ``BasicTransformerBlock``: a graph break at ``inspect.signature``): read it now, exactly as they would."""
    import inspect

    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        for hook in (getattr(reg, "hooks", {}) or {}).values():
            md = getattr(hook, "module_forward_metadata", None)
            if md is not None and getattr(md, "cached_parameter_indices", 0) is None and md._cls is not None:
                params = list(inspect.signature(md._cls.forward).parameters)[1:]
                md.cached_parameter_indices = {p: i for i, p in enumerate(params)}


def _attention_modules(model: torch.nn.Module) -> List[Tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules()
            if getattr(m, "processor", None) is not None and callable(getattr(m, "set_processor", None))]


def _check(pipe: Any, model: Any, cfg: int, ulysses: int, ring: int) -> Dict[str, Any]:
    """Every check of :func:`parallelize_pipe`; returns what it found (nothing is changed)."""
    import torch.distributed as dist

    from nexfort.diffusers.parallel_attention import REPLACED

    for name, v in zip(DEGREES, (cfg, ulysses, ring)):
        if type(v) is not int or v < 1:
            raise ParallelConfigError(f"parallelize_pipe: {name}={v!r}; each degree is an int >= 1.")
    if cfg > 2:
        raise ParallelConfigError(f"parallelize_pipe: cfg={cfg}; CFG parallelism splits the batch in its two "
                                  f"halves (unconditional, conditional): cfg is 1 or 2.")
    if not (dist.is_available() and dist.is_initialized()):
        raise ParallelConfigError(
            "parallelize_pipe needs torch.distributed's default process group and none is initialised: launch "
            "with `torchrun --nproc-per-node N script.py` and call nexfort.diffusers.parallel.init_distributed() "
            "(or torch.distributed.init_process_group('nccl' on GPUs, 'gloo' on the CPU)) first.")
    world, seq = dist.get_world_size(), ulysses * ring
    cls = type(model).__name__
    attn = _attention_modules(model)
    heads = sorted({int(m.heads) for _, m in attn if isinstance(getattr(m, "heads", None), int)})
    ours = cls in REPLACED
    plan = getattr(model, "_cp_plan", None)
    seq_ok = ours or plan is not None
    cfg_ok, why_cfg = batches_cfg(pipe)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cpu_ring_ok = cls == "PixArtTransformer2DModel"
    ring_ok = cls != "SD3Transformer2DModel" and (device.type != "cpu" or cpu_ring_ok)
    h = heads[0] if len(heads) == 1 else None

    def layouts() -> str:
        ok = valid_layouts(world, h, cfg_ok, ring_ok, seq_ok)
        return f"layouts that work for {cls} on {world} ranks: {'; '.join(ok) if ok else 'none'}"

    if cfg * seq != world:
        raise ParallelConfigError(f"parallelize_pipe: cfg x ulysses x ring = {cfg} x {ulysses} x {ring} = "
                                  f"{cfg * seq}, but the world size is {world}; {layouts()}.")
    if cfg == 2 and not cfg_ok:
        raise ParallelConfigError(f"parallelize_pipe: cfg=2 needs a pipeline that batches classifier-free guidance: "
                                  f"{why_cfg}. {layouts()}.")
    if seq > 1 and not seq_ok:
        raise ParallelConfigError(
            f"parallelize_pipe: ulysses={ulysses}, ring={ring}: {cls} has no context-parallel plan, neither in "
            f"diffusers (no _cp_plan) nor in nexfort ({', '.join(REPLACED)}); diffusers covers "
            f"{', '.join(_diffusers_cp_models()) or 'none'}. cfg=2 works with any denoiser. {layouts()}.")
    bad = [x for x in heads if x % ulysses]
    if seq > 1 and bad:
        raise ParallelConfigError(f"parallelize_pipe: ulysses={ulysses} splits the attention heads, but {cls} has "
                                  f"{', '.join(map(str, bad))} heads (not divisible by {ulysses}); {layouts()}.")
    if ring > 1 and cls == "SD3Transformer2DModel":
        raise ParallelConfigError(f"parallelize_pipe: ring={ring}: nexfort's SD3 joint attention keeps the text "
                                  f"tokens whole on every rank, which ring attention cannot (they would count once "
                                  f"per ring rank); use ulysses. {layouts()}.")
    if ring > 1 and device.type == "cpu" and not cpu_ring_ok:
        raise ParallelConfigError(
            f"parallelize_pipe: ring={ring} on the CPU: diffusers' ring attention needs each chunk's log-sum-exp, "
            f"and none of its attention backends returns it on the CPU ('native': 'Native attention does not "
            f"support return_lse=True'); nexfort supplies one for PixArt only. {layouts()}.")
    if ring > 1 and device.type == "cuda" and model.dtype not in (torch.float16, torch.bfloat16):
        raise ParallelConfigError(f"parallelize_pipe: ring={ring} on CUDA runs diffusers' cuDNN attention "
                                  f"(_native_cudnn, for the log-sum-exp), which takes fp16/bf16; {cls} is "
                                  f"{model.dtype}. Use ulysses, or fp16/bf16.")
    backend = str(dist.get_backend())
    if device.type == "cuda" and "nccl" not in backend or device.type == "cpu" and "gloo" not in backend:
        raise ParallelConfigError(f"parallelize_pipe: {cls} is on {device.type}, but the process group's backend is "
                                  f"{backend!r}: use 'nccl' for CUDA tensors, 'gloo' for CPU tensors.")
    if getattr(model, "_parallel_config", None) is not None or getattr(pipe, "_nexfort_parallel", None):
        raise ParallelConfigError(f"parallelize_pipe: this {type(pipe).__name__} (its {cls}) is parallelized "
                                  f"already; build or load the pipeline again for another layout.")
    if seq > 1 and not ours:
        lacking = sorted({type(m.processor).__name__ for _, m in attn if not hasattr(m.processor, "_parallel_config")})
        if lacking:
            raise ParallelConfigError(f"parallelize_pipe: {cls}'s attention processors {', '.join(lacking)} do not "
                                      f"take diffusers' parallel config (only those calling dispatch_attention_fn "
                                      f"do); restore the model's default processors first.")
    return {"world": world, "device": device, "ours": ours, "plan": plan, "rank": dist.get_rank()}


def _layout(pipe: Any, model: Any, cfg: int, ulysses: int, ring: int, found: Dict[str, Any]) -> Layout:
    from nexfort.diffusers.parallel_hooks import positions

    kind, split = "tokens", ()
    if found["ours"]:
        kind = "patches"
    elif isinstance(found["plan"], dict) and isinstance(found["plan"].get(""), dict):
        index = positions(type(model).forward)
        split = tuple((name, int(cpi.split_dim)) for name, cpi in found["plan"][""].items()
                      if isinstance(name, str) and name in index and hasattr(cpi, "split_dim")
                      and not getattr(cpi, "split_output", False))
    patch = int(getattr(model.config, "patch_size", 1) or 1)
    return Layout(cfg=cfg, ulysses=ulysses, ring=ring, rank=found["rank"], world_size=found["world"],
                  model=type(model).__name__, kind=kind, patch_size=patch,
                  vae_scale=int(getattr(pipe, "vae_scale_factor", None) or 8), split_inputs=split)


def parallelize_pipe(pipe: Any, cfg: int = 1, ulysses: int = 1, ring: int = 1) -> Any:
    """Split each denoising step of ``pipe`` over the ranks of the default process group, in place; returns
    ``pipe``. ``cfg x ulysses x ring`` must be the world size (see the module's docstring for the modes).

    Call it on every rank, with the pipeline on that rank's device (``cuda:LOCAL_RANK`` with NCCL, the CPU with
    gloo), after the process group exists (:func:`init_distributed`). Everything is checked first, on every rank,
    and a layout that cannot run raises :class:`ParallelConfigError` naming the values and the layouts that work:
    degrees whose product is not the world size, heads not divisible by ``ulysses``, ``cfg=2`` for a pipeline
    that does not batch CFG (FLUX), a model without a context-parallel plan (diffusers' or nexfort's), ring
    attention where no attention backend returns the log-sum-exp (the CPU, but for PixArt), no process group.
    At call time, before the denoiser runs: ``cfg=2`` without guidance (``guidance_scale <= 1``) or an odd CFG
    batch, and a token count not divisible by ``ulysses x ring`` raise :class:`ParallelInputError` (a
    ``ValueError``) naming the sizes that work; nothing is padded.

    With ``compile_pipe``: either order, before the pipeline's first call. Compiled after, the hooks and
    collectives are traced into the denoiser's graph (no graph break); compiled before, the compiled call runs
    them the same way (QKV projections fused by ``max-optimize`` are read by the parallel processors). Dynamic
    shapes (``dynamic=True``) keep working: a new resolution does not recompile. Every rank must call the
    pipeline with the same arguments; the initial latents are broadcast from rank 0, and a scheduler that draws
    noise needs the same seeded generator on every rank. Rank 0's output is the image (every rank has it).
    """
    nvls_off()
    try:
        from diffusers.hooks.hooks import HookRegistry
    except ImportError as e:  # pragma: no cover - an old diffusers
        raise ImportError(f"parallelize_pipe needs diffusers' model hooks and context parallelism (diffusers "
                          f">= 0.36): {e}; pip install -U 'diffusers>=0.36'") from None
    model = getattr(pipe, "transformer", None)
    if not isinstance(model, torch.nn.Module):
        model = getattr(pipe, "unet", None)
    if not isinstance(model, torch.nn.Module):
        raise ParallelConfigError(f"parallelize_pipe expects a diffusers pipeline with a transformer (or unet), got "
                                  f"{type(pipe).__name__}.")
    found = _check(pipe, model, cfg, ulysses, ring)
    layout = _layout(pipe, model, cfg, ulysses, ring, found)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    device = found["device"]
    if found["ours"] and ulysses * ring > 1:  # before anything else changes: it raises for an unknown processor
        from nexfort.diffusers.parallel_attention import install_processors

        install_processors(model)
    mesh = init_device_mesh(device.type, (cfg, ring, ulysses), mesh_dim_names=("cfg", "ring", "ulysses"))
    layout.mesh = mesh
    if cfg > 1:
        layout.cfg_group = mesh["cfg"].get_group()
        layout.cfg_rank = dist.get_rank(layout.cfg_group)
    if ulysses * ring > 1:
        from diffusers import ContextParallelConfig
        from nexfort.diffusers.parallel_attention import plans

        if ring > 1 and device.type == "cuda":
            from diffusers.models.attention_dispatch import AttentionBackendName

            for _, m in _attention_modules(model):  # this model only: the process-wide backend stays
                if hasattr(m.processor, "_attention_backend") and m.processor._attention_backend is None:
                    m.processor._attention_backend = AttentionBackendName._NATIVE_CUDNN
        cp = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh["ring", "ulysses"])
        with _device_count_at_least_one():
            model.enable_parallelism(config=cp, cp_plan=plans().get(type(model).__name__))
        _read_split_signatures(model)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(make_hook(layout), HOOK_NAME)
    wrap_pipeline(pipe, layout)
    pipe._nexfort_parallel = layout
    model._nexfort_parallel = layout
    logger.info("nexfort: parallelize_pipe(%s): %s on %d ranks (rank %d)", type(pipe).__name__, layout.describe(),
                layout.world_size, layout.rank)
    return pipe
