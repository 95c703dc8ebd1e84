"""LoRA on a compiled pipeline without recompiling: fuse into the weights in place, keep the module structure.

diffusers' own calls on a compiled pipeline work and give eager's result, but change what Dynamo traced, so
each of these compiles the denoiser once more (measured with Dynamo's counters, ``tests/diffusers/test_lora.py``):

- ``load_lora_weights``: PEFT wraps the target ``nn.Linear`` layers in ``LoraLayer`` modules (new modules, new
  ops in the graph);
- ``set_adapters`` with new weights: each ``LoraLayer``'s ``scaling`` is a Python float that Dynamo bakes into
  the graph (a guard on its value);
- ``fuse_lora`` / ``unfuse_lora``: the ``merged`` flag of every ``LoraLayer`` selects another branch of its
  forward (the graphs of both states stay cached: going back and forth costs one compilation per state);
- swapping to another adapter name: a new key of the ``lora_A``/``lora_B`` module dicts.

:func:`fuse_lora` / :func:`unfuse_lora` here never recompile: the LoRA is loaded, fused into the base weights
(``fuse_lora``) and the PEFT layers are removed again (``unload_lora_weights``), so the denoiser keeps its
original modules (and their parameters' ``requires_grad``, which PEFT turns off and Dynamo guards on) and
only weight *values* change, which a compiled graph reads at every call (weights are graph
inputs, not constants, unless ``freezing`` is on). The weights a LoRA touches are saved first, so
:func:`unfuse_lora` restores them exactly and a swap is ``fuse_lora(pipe, other)`` (it unfuses the previous
one). QKV projections fused by ``max-optimize`` (``to_qkv``/``to_kv``, whose rows ``to_q``/``to_k``/``to_v`` are views
of) are refreshed in place from the fused weights, so the LoRA reaches them too.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from nexfort.diffusers.fused import fused_groups

#: pipeline components a LoRA may touch (those present are used)
LORA_COMPONENTS = ("transformer", "unet", "text_encoder", "text_encoder_2", "text_encoder_3")


def _is_lora_layer(m: Any) -> bool:
    return any(c.__name__ == "BaseTunerLayer" for c in type(m).__mro__)


def _components(pipe: Any) -> Dict[str, torch.nn.Module]:
    return {n: getattr(pipe, n) for n in LORA_COMPONENTS if isinstance(getattr(pipe, n, None), torch.nn.Module)}


def _lora_targets(pipe: Any) -> List[Tuple[str, str, torch.nn.Parameter]]:
    """``(component, parameter name, parameter)`` of the base layers that PEFT's LoRA layers wrap."""
    out = []
    for cname, comp in _components(pipe).items():
        for mname, m in comp.named_modules():
            if not _is_lora_layer(m):
                continue
            base = m.get_base_layer() if hasattr(m, "get_base_layer") else getattr(m, "base_layer", None)
            if base is None:
                continue
            for pname, p in base.named_parameters(recurse=False):
                out.append((cname, f"{mname}.{pname}", p))
    return out


def refresh_fused_projections(module: torch.nn.Module) -> int:
    """Copy ``to_q``/``to_k``/``to_v`` (and ``add_*_proj``) into the fused ``to_qkv``/``to_kv``/``to_added_qkv``
    that ``fuse_qkv_projections()`` made, in place (same tensors: no recompilation). Returns how many. (Where
    :func:`nexfort.diffusers.fused.share_fused_weights` made them views of the fused weights, PEFT may still have
    replaced a weight tensor instead of updating it.)"""
    n = 0
    with torch.no_grad():
        for fused, layers in fused_groups(module):
            fused.weight.copy_(torch.cat([x.weight for x in layers]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([x.bias for x in layers]))
            n += 1
    return n


def _is_quantized(module: Any) -> bool:
    """A quantized linear layer of nexfort-passes (any type: fp8, int8; by class name, so this package needs no
    import of nexfort-passes)."""
    return any(c.__name__ == "QuantizedLinear" and c.__module__.startswith("nexfort.passes")
               for c in type(module).__mro__)


def fuse_lora(pipe: Any, weights: Any, *, lora_scale: float = 1.0, adapter_name: str = "nexfort_lora",
              components: Optional[Sequence[str]] = None, **load_kwargs: Any) -> List[str]:
    """Load the LoRA ``weights`` (anything ``pipe.load_lora_weights`` takes), fuse it at ``lora_scale`` into
    the weights in place and remove the PEFT layers: a compiled pipeline does not recompile. A LoRA fused by an
    earlier call is unfused first (a swap). Returns the names of the parameters changed."""
    if not callable(getattr(pipe, "load_lora_weights", None)):
        raise TypeError(f"{type(pipe).__name__} cannot load LoRA weights (no load_lora_weights)")
    quantized = [n for n, comp in _components(pipe).items()
                 if any(_is_quantized(m) for m in comp.modules())]
    if quantized:
        raise RuntimeError(f"nexfort.diffusers.fuse_lora: {', '.join(quantized)} is quantized (quantize_pipe or the "
                           "quant flag): LoRA weights cannot be fused into quantized layers; fuse the LoRA first, "
                           "then quantize")
    unfuse_lora(pipe)
    if any(_is_lora_layer(m) for comp in _components(pipe).values() for m in comp.modules()):
        raise RuntimeError("nexfort.diffusers.fuse_lora: the pipeline already has PEFT LoRA layers (loaded with "
                           "load_lora_weights): unload_lora_weights() first, or use diffusers' API alone")
    # PEFT freezes the base parameters (requires_grad=False): a compiled graph guards on that flag
    grad_flags = [(p, p.requires_grad) for comp in _components(pipe).values() for p in comp.parameters()]
    pipe.load_lora_weights(weights, adapter_name=adapter_name, **load_kwargs)
    try:
        targets = _lora_targets(pipe)
        saved = [(c, n, p, p.detach().clone()) for c, n, p in targets]
        kw: Dict[str, Any] = {"lora_scale": lora_scale, "adapter_names": [adapter_name]}
        if components is not None:
            kw["components"] = list(components)
        pipe.fuse_lora(**kw)
    finally:
        pipe.unload_lora_weights()  # back to the original modules, the fused values stay in their weights
        for p, flag in grad_flags:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
    for comp in _components(pipe).values():
        refresh_fused_projections(comp)
    pipe._nexfort_lora = saved
    return [f"{c}.{n}" for c, n, _, _ in saved]


def unfuse_lora(pipe: Any) -> bool:
    """Restore the weights that :func:`fuse_lora` changed (in place, exactly). False when nothing was fused."""
    saved = pipe.__dict__.pop("_nexfort_lora", None)
    if not saved:
        return False
    with torch.no_grad():
        for _, _, p, old in saved:
            p.copy_(old)
    for comp in _components(pipe).values():
        refresh_fused_projections(comp)
    return True
