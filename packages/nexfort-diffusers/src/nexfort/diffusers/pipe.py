"""``compile_pipe``: compile what matters in a diffusers pipeline with nexfort (or plain Inductor)."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from nexfort.core import api
from nexfort.core.api import NexfortConfigError, patches
from nexfort.diffusers import video
from nexfort.diffusers.dynamic import make_upsample_sizes_explicit, shape_check, wrap_compiled_call
from nexfort.diffusers.regional import uncompile_regions
from nexfort.diffusers.text_padding import text_padding_trimmer
from nexfort.diffusers.vae import upcast_vae_once

logger = logging.getLogger("nexfort")

#: Denoiser component names, in the order they are compiled.
DENOISERS = ("transformer", "transformer_2", "unet", "controlnet", "prior", "decoder")
#: VAE submodules compiled (the VAE's ``decode``/``encode`` run them).
VAE_PARTS = ("decoder", "encoder")
BACKENDS = ("nexfort", "inductor")
#: what ``compile_pipe(pipe)`` with no ``mode`` compiles with, by the pipeline's device type (:func:`recommended_mode`).
#: CUDA: nexfort's lossless target mode plus CUDA graphs, measured on an NVIDIA H200 (torch 2.11, flash-attn-4
#: 4.0.0b36, 2026-12-01, one process per row, denoiser forward): PixArt-α 1024² 30.26 ms against torch.compile's
#: 32.33 and its reduce-overhead's 32.04, PixArt-α 512x768 10.13 against 13.37 and 10.19, SD3-medium 35.27 against
#: 39.86, every output within 2.3e-3 rel L2 of eager (benchmarks/results/README.md, "The headline run").
#: Elsewhere (the CPU) nothing of nexfort's own is measured to pay yet: plain Inductor through nexfort (the empty
#: mode).
RECOMMENDED_MODES = {"cuda": "max-optimize:max-autotune:low-precision:cudagraphs"}


def _is_text_encoder(name: str) -> bool:
    return name.startswith("text_encoder") or name.startswith("image_encoder")


def _components(pipe: Any) -> Dict[str, Any]:
    comps = getattr(pipe, "components", None)
    if not isinstance(comps, Mapping):
        raise TypeError(f"compile_pipe expects a diffusers pipeline (with .components), got {type(pipe).__name__}")
    return dict(comps)


def compilable_components(pipe: Any, text_encoders: bool = True) -> List[str]:
    """Names ``compile_pipe`` would compile in ``pipe`` (``vae.decoder`` style for VAE parts)."""
    out = []
    comps = _components(pipe)
    for name in DENOISERS:
        if isinstance(comps.get(name), torch.nn.Module):
            out.append(name)
    vae = comps.get("vae")
    if isinstance(vae, torch.nn.Module):
        out += [f"vae.{p}" for p in VAE_PARTS if isinstance(getattr(vae, p, None), torch.nn.Module)]
    if text_encoders:
        out += [n for n, m in comps.items() if _is_text_encoder(n) and isinstance(m, torch.nn.Module)]
    return out


def valid_ignore_names(pipe: Any) -> List[str]:
    """What ``ignores`` accepts for this pipeline: its component names and ``vae.decoder``/``vae.encoder``."""
    comps = _components(pipe)
    names = list(comps)
    vae = comps.get("vae")
    if isinstance(vae, torch.nn.Module):
        names += [f"vae.{p}" for p in VAE_PARTS if isinstance(getattr(vae, p, None), torch.nn.Module)]
    return names


def _check_ignores(pipe: Any, ignores: Union[str, Iterable[str], None]) -> set:
    if ignores is None:
        return set()
    if isinstance(ignores, str):
        ignores = [ignores]
    ignores = list(ignores)
    valid = valid_ignore_names(pipe)
    for name in ignores:
        if not isinstance(name, str) or name not in valid:
            raise NexfortConfigError(
                f"compile_pipe: unknown component {name!r} in ignores; this {type(pipe).__name__} has: "
                f"{', '.join(valid)}.")
    skipped = set(ignores)
    if "vae" in skipped:
        skipped |= {f"vae.{p}" for p in VAE_PARTS}
    return skipped


def _spec(mode: Optional[str], options: Any, dynamic: Optional[bool], fullgraph: Optional[bool],
          memory_format: Any, fuse_qkv_projections: bool, with_plugin: bool) -> Dict[str, Any]:
    options = api.parse_options(options)  # the one place compile_pipe reads the options it was given
    if with_plugin and not isinstance(fuse_qkv_projections, bool):
        raise NexfortConfigError("compile_pipe: 'fuse_qkv_projections' must be True or False.")
    if with_plugin:
        nested = options.get("diffusers")
        given = "diffusers.fuse_qkv_projections" in options or (
            isinstance(nested, Mapping) and "fuse_qkv_projections" in nested)
        if not given:  # an explicit option wins over the keyword's default
            options["diffusers.fuse_qkv_projections"] = fuse_qkv_projections
    spec = {"mode": mode, "options": options, "dynamic": dynamic, "fullgraph": fullgraph,
            "memory_format": memory_format}
    return {k: v for k, v in spec.items() if v is not None}


def ensure_plugin() -> bool:
    """Register this package's plugin if entry points did not (autoload off); False if it is blocked."""
    from nexfort.diffusers import plugin

    return api.register_plugin(plugin, plugin.PLUGIN_NAME)  # another object under our name is left alone


def resolve_pipe_config(mode: Optional[str] = None, options: Any = None, *, dynamic: Optional[bool] = None,
                        fullgraph: Optional[bool] = None, memory_format: Any = None,
                        fuse_qkv_projections: bool = True) -> Any:
    """The resolved nexfort configuration ``compile_pipe`` uses (raises ``NexfortConfigError``)."""
    with_plugin = ensure_plugin()
    cfg = api.resolve_config(_spec(mode, options, dynamic, fullgraph, memory_format, fuse_qkv_projections,
                                   with_plugin))
    api.check_features(cfg)
    return cfg


def recommended_mode(device: Any) -> str:
    """The mode ``compile_pipe`` uses when none is given, for a pipeline on ``device`` (see
    :data:`RECOMMENDED_MODES`; ``""``, the empty mode, is plain Inductor through nexfort)."""
    kind = torch.device(device).type if device is not None else "cpu"
    return RECOMMENDED_MODES.get(kind, "")


def pipe_device(pipe: Any) -> Optional[torch.device]:
    """The device of the pipeline's first denoiser (else of any module component), None without one."""
    comps = _components(pipe)
    for name in DENOISERS + tuple(comps):
        module = comps.get(name)
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                return p.device
    return None


def _apply_memory_format(module: torch.nn.Module, cfg: Any) -> None:
    if cfg.memory_format == "channels_last" and any(
            isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules()):
        module.to(memory_format=torch.channels_last)


def _in_place() -> bool:
    """Whether this torch compiles modules in place (``nn.Module.compile``, torch 2.2+)."""
    return callable(getattr(torch.nn.Module, "compile", None))


def _regional_option(cfg: Any) -> Optional[bool]:
    try:
        return cfg.options.diffusers.regional
    except Exception:  # noqa: BLE001 - the diffusers plugin's namespace is absent (plugin blocked)
        return False


def regional(cfg: Any) -> bool:
    """Whether ``cfg`` asks for regional compilation of the denoisers (``options.diffusers.regional``; unset: on
    with the jit flag)."""
    value = _regional_option(cfg)
    if value is None:  # implied by jit: only where the blocks share their compiled graphs (torch 2.5+)
        from nexfort.diffusers.regional import blocks_share_graphs

        return api.flag_on(cfg, "jit") and _in_place() and blocks_share_graphs()
    return bool(value)


def _check_regions(regions: bool) -> None:
    if regions and not _in_place():
        raise NexfortConfigError(f"compile_pipe: options.diffusers.regional needs nn.Module.compile (torch 2.2+); "
                                 f"this is torch {torch.__version__}.")


def compile_module(module: torch.nn.Module, cfg: Any, backend: str = "nexfort",
                   regions: bool = False, inductor_mode: Optional[str] = None,
                   prepared: Optional[List[str]] = None) -> torch.nn.Module:
    """Compile ``module`` in place (``nn.Module.compile``) so that it keeps its type, its ``state_dict`` keys and
    its parameters; where torch lacks ``nn.Module.compile`` return ``torch.compile``'s wrapper (which shares the
    parameters too). ``backend="nexfort"`` is what ``nexfort_compile`` does: memory format and the plugins'
    module transforms (``prepare_module``), then the nexfort backend bound to ``cfg``. ``regions=True`` compiles
    the module's repeated blocks instead of the whole (:mod:`nexfort.diffusers.regional`; the whole module where it
    has none). ``inductor_mode`` is torch.compile's own ``mode`` for ``backend="inductor"``. ``prepared``, where
    given, gets what the module transforms did (one line each: QKV fusion, quantization with its weight memory)."""
    if backend == "nexfort":
        done = api.prepare_module(module, cfg)
        if prepared is not None:
            prepared.extend(done)
        be: Any = api.backend_for(cfg)
    else:
        _apply_memory_format(module, cfg)
        be = "inductor"
    kwargs = {"backend": be, "dynamic": cfg.dynamic, "fullgraph": bool(cfg.fullgraph)}
    if backend == "inductor" and inductor_mode:
        kwargs["mode"] = inductor_mode
    if regions:
        from nexfort.diffusers.regional import compile_regions

        _check_regions(regions)
        n = compile_regions(module, lambda block: block.compile(**kwargs))
        if n:
            logger.info("nexfort: compiled %d repeated blocks of %s (regional)", n, type(module).__name__)
            return module
        (logger.warning if _regional_option(cfg) is True else logger.info)(
            "nexfort: regional compilation: %s has no repeated blocks; compiling it whole", type(module).__name__)
    if _in_place():
        module.compile(**kwargs)
        return module
    return torch.compile(module, **kwargs)  # pragma: no cover (torch < 2.2)


def _check_inductor_mode(backend: str, inductor_mode: Optional[str]) -> None:
    if inductor_mode is None:
        return
    if backend != "inductor":
        raise NexfortConfigError(f"compile_pipe: inductor_mode={inductor_mode!r} is torch.compile's own mode and "
                                 f"applies to backend='inductor' only (backend={backend!r}: use mode=...).")
    valid = sorted({"default", *torch._inductor.list_mode_options()})
    if inductor_mode not in valid:
        raise NexfortConfigError(f"compile_pipe: unknown inductor_mode {str(inductor_mode)[:200]!r}; valid: "
                                 f"{', '.join(valid)}.")


def _without_quant(cfg: Any) -> Any:
    """``cfg`` with the quant flag off (``cfg`` itself where it is off)."""
    return api.with_switches(cfg, quant=False) if api.flag_on(cfg, "quant") else cfg


def compile_pipe(pipe: Any, mode: Optional[str] = None, options: Any = None, *, ignores: Sequence[str] = (),
                 fuse_qkv_projections: bool = True, dynamic: Optional[bool] = None,
                 fullgraph: Optional[bool] = None, memory_format: Any = None, backend: str = "nexfort",
                 text_encoders: bool = False, inductor_mode: Optional[str] = None) -> Any:
    """Compile a diffusers pipeline in place and return it.

    ``mode=None`` (the default) picks the recommended mode for the pipeline's device (:func:`recommended_mode`:
    ``max-optimize:max-autotune:low-precision:cudagraphs`` on CUDA GPUs, measured to pay there; the empty mode,
    plain Inductor through nexfort, elsewhere); ``mode=""`` is the empty mode on any device.

    Compiles the denoiser(s) present (``transformer``, ``unet``, ``controlnet``, ``prior``, ``decoder``), the VAE's
    ``decoder``/``encoder`` (what ``vae.decode``/``vae.encode`` run) and, with ``text_encoders=True``, the text
    encoders. ``mode``/``options``/``dynamic``/``fullgraph``/``memory_format`` are nexfort's configuration keys
    (validated entirely before anything is touched); ``memory_format="channels_last"`` applies to convolutional
    models only. ``ignores`` names components to leave alone (``"vae"``, ``"vae.decoder"``, ``"transformer"``,
    ...). ``fuse_qkv_projections`` lets the diffusers plugin fuse attention projections when ``max-optimize`` is
    on. Modules are compiled in place (``nn.Module.compile``): they keep their parameters, so in-place weight
    changes (``load_state_dict``, LoRA fusing) reach the compiled pipeline without recompiling (QKV projections
    fused by max-optimize share their weights with the unfused layers). ``backend="inductor"`` compiles with plain
    ``torch.compile`` (its default mode, or ``inductor_mode``: ``"reduce-overhead"``,
    ``"max-autotune-no-cudagraphs"``, ...; only ``dynamic``, ``fullgraph`` and ``memory_format`` apply), for
    comparison. With ``max-optimize``, a PixArt denoiser's cross-attention runs over the valid text tokens only
    (exact: :mod:`nexfort.diffusers.text_padding`; ``options.diffusers.trim_text_padding``). The ``quant`` flag
    quantizes the denoisers' linear layers (after QKV fusion); for other
    components use :func:`nexfort.diffusers.quantize_pipe` with ``components=``. With
    ``options.diffusers.regional`` (on by default with the ``jit`` flag on torch 2.5+) the denoisers' repeated
    blocks are compiled instead of the whole denoisers: a cold compile of about one block
    (:mod:`nexfort.diffusers.regional`).

    ``dynamic=True`` (nexfort backend): one compiled graph per model serves every resolution, batch size and
    text length: the plugin makes size-dependent Python branches of diffusers modules branch-free (PatchEmbed's
    position embedding) and each compiled call runs without Dynamo's duck sizing (so a square first size is
    not assumed square forever); attention masks are repeated per head without fixing the batch size
    (:mod:`nexfort.diffusers.masks`), and the VAE's decoder/encoder run one sample at a time (a VAE first called
    with batch 1 would otherwise compile again for the next batch size: Dynamo specialises sizes 0/1). What
    still compiles once more: a denoiser first called with batch 2 (CFG) and later with batch 1, or the reverse.
    Video pipelines (Wan, HunyuanVideo, LTX, CogVideoX, ...) compile the same components; one graph per denoiser
    serves every frame count and resolution, and a VAE that decodes chunk by chunk with a cache (Wan, CogVideoX)
    compiles a fixed number of graphs whatever the frame count (:mod:`nexfort.diffusers.video`).
    A UNet forwards explicit upsample sizes at every resolution (diffusers does so only where the latent is not
    a multiple of 2**(number of upsamplers): a second graph otherwise; the same values).
    A denoiser given latents it cannot take (PixArt/DiT/SD3: not a multiple of the patch size, SD3: larger
    than its position embedding) raises ``UnsupportedResolutionError`` (a ``ValueError``) naming the nearest
    valid sizes, before anything is traced. Integer timesteps reach a compiled denoiser as float32 (exact, and
    what diffusers' timestep embedding computes with), so that changing the scheduler never recompiles it.
    """
    if backend not in BACKENDS:
        raise NexfortConfigError(f"compile_pipe: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}.")
    _check_inductor_mode(backend, inductor_mode)
    if mode is None and backend == "nexfort":
        mode = recommended_mode(pipe_device(pipe))
        logger.info("nexfort: compile_pipe: no mode given; the recommended mode for this device: %r", mode)
    cfg = resolve_pipe_config(mode, options, dynamic=dynamic, fullgraph=fullgraph, memory_format=memory_format,
                              fuse_qkv_projections=fuse_qkv_projections)
    skipped = _check_ignores(pipe, ignores)
    _check_regions(backend == "nexfort" and regional(cfg))  # before anything is touched
    if backend == "inductor" and (cfg.mode or options):
        logger.info("nexfort: backend='inductor' compiles with torch.compile defaults; mode %r and options ignored",
                    cfg.mode)
    if backend == "nexfort" and api.flag_on(cfg, "freezing"):
        warnings.warn("nexfort: 'freezing' is on: weights become constants of the compiled graphs, so weights "
                      "changed after compiling (LoRA fusing, load_state_dict) do not reach this pipeline; call "
                      "uncompile_pipe() and compile_pipe() again after changing them.", stacklevel=2)
    if "vae" not in skipped:
        upcast_vae_once(pipe)
    done: List[Tuple[str, str]] = []
    prepared: Dict[str, List[str]] = {}
    comps = _components(pipe)
    vae_scale = int(getattr(pipe, "vae_scale_factor", None) or 8)
    # video VAEs that decode chunk by chunk with a cache are not split per sample (nexfort.diffusers.video)
    vae_parts = [n.split(".", 1)[1] for n in compilable_components(pipe, False) if n.startswith("vae.")
                 and n not in skipped]
    splits = video.prepare_vae(comps["vae"], vae_parts, backend == "nexfort" and cfg.dynamic is True) \
        if vae_parts else {}
    for name in compilable_components(pipe, text_encoders=bool(text_encoders)):
        if name in skipped:
            continue
        # "vae.decoder" lives on the VAE, the others on the pipeline
        owner, attr = (comps["vae"], name.split(".", 1)[1]) if name.startswith("vae.") else (pipe, name)
        module = getattr(owner, attr)
        # torch 2.2: Inductor misreads nearest upsampling's scale factor under inference mode (detected)
        make_upsample_sizes_explicit(module, config=cfg if backend == "nexfort" else None)
        # the quant flag quantizes the denoisers only (the VAE's and text encoders' few linear layers would trade
        # their accuracy for nothing measurable); quantize_pipe(components=...) reaches the others
        ccfg = cfg if name in DENOISERS or backend != "nexfort" else _without_quant(cfg)
        regions = backend == "nexfort" and name in DENOISERS and regional(cfg)
        compiled = compile_module(module, ccfg, backend, regions=regions, inductor_mode=inductor_mode,
                                  prepared=prepared.setdefault(name, []))
        if compiled is not module:  # pragma: no cover (torch < 2.2)
            setattr(owner, attr, compiled)
        # dynamic shapes without the duck-sizing trap (nexfort only: backend="inductor" stays plain
        # torch.compile) and, for denoisers, a clear error for a resolution the model cannot take
        check = shape_check(compiled, vae_scale) if name in DENOISERS else None
        trim = text_padding_trimmer(module, cfg) if backend == "nexfort" and name in DENOISERS else None
        per_sample = name.startswith("vae.") and splits.get(name[4:], False)
        chunked = name.startswith("vae.") and not splits.get(name[4:], True)  # a cache between chunks
        wrap_compiled_call(compiled, dynamic=backend == "nexfort" and cfg.dynamic is True, check=check,
                           denoiser=name in DENOISERS, per_sample=per_sample, prepare=trim, contiguous=chunked)
        done.append((name, type(comps[name.split(".")[0]]).__name__))
    pipe._nexfort_compiled = {"backend": backend, "mode": cfg.mode, "components": [n for n, _ in done],
                              "prepared": {n: p for n, p in prepared.items() if p}}
    logger.info("nexfort: compile_pipe(%s) compiled %s", type(pipe).__name__, ", ".join(n for n, _ in done))
    return pipe


def uncompile_pipe(pipe: Any) -> Any:
    """Undo ``compile_pipe``'s in-place compilation: the modules run eagerly again, and every patch nexfort made to
    diffusers' modules for it (:mod:`nexfort.diffusers.patches`: position embeddings, attention masks, upsample
    sizes, the fp16 VAE's one-time upcast) is undone, so the modules are diffusers' own again. Model transforms
    stay: fused QKV projections (diffusers' ``unfuse_qkv_projections`` undoes them), the memory format and
    quantized layers. For comparing compilers in one process, or to change what compile_pipe cannot see."""
    comps = _components(pipe)
    for name in compilable_components(pipe, text_encoders=True):
        owner, attr = (comps["vae"], name.split(".", 1)[1]) if name.startswith("vae.") else (pipe, name)
        mod = getattr(owner, attr)
        if isinstance(mod, torch.nn.Module):
            uncompile_regions(mod)  # the module and, after a regional compile, its blocks
        orig = getattr(mod, "_orig_mod", None)  # torch.compile's wrapper (torch < 2.2)
        if isinstance(orig, torch.nn.Module):
            setattr(owner, attr, orig)
    for module in _components(pipe).values():
        if isinstance(module, torch.nn.Module):
            patches.restore(module)  # the module and its submodules (the VAE's decoder, a denoiser's blocks)
    video.restore_vae(comps.get("vae"))
    if "_nexfort_compiled" in pipe.__dict__:
        del pipe.__dict__["_nexfort_compiled"]
    return pipe
