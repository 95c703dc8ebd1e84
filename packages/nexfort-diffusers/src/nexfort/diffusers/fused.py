"""QKV projections fused where the result is provably eager's, without a second copy of their weights.

:func:`fuse_projections` (what max-optimize and ``quantize_pipe`` call) fuses the projections of an attention module
only where the processor that reads the fused layers computes exactly what the module's processor did; every other
module is left alone (one debug log line per model says which and why). diffusers' ``fuse_qkv_projections()`` does
not do that: it fuses every attention module and installs its fused processor model-wide, and
``FusedJointAttnProcessor2_0`` (SD3) skips the q/k norms (``qk_norm="rms_norm"``: 1.1e-2 rel L2 off eager) and
fails on a layer called without a context (SD3's dual-attention ``attn2``). The allow-list, per attention module:
- diffusers' ``Attention`` with ``AttnProcessor2_0`` or ``JointAttnProcessor2_0``: nexfort's copies of those
  processors that read the fused layers (:mod:`nexfort.diffusers.fused_attention`); every optional step that is on
  for the module (norms, spatial/group norm, residual, context projections) must be one the original processor's
  code reads and the copy reads too, so another diffusers version's processor that lacks one is left alone;
- a module whose processor reads the fused layers itself (``FluxAttnProcessor``: its fused and unfused paths differ
  only in the projections) when its projections have the equal widths that its ``chunk(3)`` assumes;
and the projections to fuse must be plain ``nn.Linear`` layers (not PEFT or quantized ones) with one input size,
dtype, device and bias layout. The fused layers are ``to_qkv`` (self-attention), ``to_kv`` (cross-attention) and
``to_added_qkv`` (the context projections of joint attention), as in diffusers.

diffusers' fused layers hold copies of the ``to_q``/``to_k``/``to_v`` (``add_*_proj``) weights and keep the
originals: the projection weights are held twice (SD3-medium: +0.65 GB, +12 % peak memory over eager, measured on
an H200). :func:`share_fused_weights` makes each original parameter a view of its rows of the fused weight, so the
memory of the originals is freed and an in-place update of either (a fused LoRA) is seen by both.
Importing this module stays cheap: torch is imported by the functions that need it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

#: (fused layer, the layers whose output rows it concatenates, in order): diffusers' ``fuse_projections``
FUSED_GROUPS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("to_qkv", ("to_q", "to_k", "to_v")),
    ("to_kv", ("to_k", "to_v")),
    ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
)
QKV, KV, ADDED = (g for _, g in FUSED_GROUPS)

#: attributes of an attention module that switch on a step of its processor, and when they do
OPTIONAL_STEPS: Dict[str, Any] = {
    "spatial_norm": lambda v: v is not None, "group_norm": lambda v: v is not None, "norm_cross": bool,
    "norm_q": lambda v: v is not None, "norm_k": lambda v: v is not None,
    "norm_added_q": lambda v: v is not None, "norm_added_k": lambda v: v is not None,
    "residual_connection": bool, "rescale_output_factor": lambda v: v is not None and v != 1.0,
    "to_add_out": lambda v: v is not None,
}
#: the optional steps nexfort's processors take (nexfort.diffusers.fused_attention)
COPY_READS = {
    "FusedAttnProcessor": frozenset({"spatial_norm", "group_norm", "norm_cross", "norm_q", "norm_k",
                                     "residual_connection", "rescale_output_factor"}),
    "FusedJointAttnProcessor": frozenset({"norm_q", "norm_k", "norm_added_q", "norm_added_k", "to_add_out"}),
}
#: diffusers' processor -> nexfort's copy reading the fused layers
COPIES = {"AttnProcessor2_0": "FusedAttnProcessor", "JointAttnProcessor2_0": "FusedJointAttnProcessor"}
#: processors that read ``to_qkv``/``to_added_qkv`` themselves once ``fused_projections`` is set: (module, class)
SELF_FUSING = (("diffusers.models.transformers.transformer_flux", "FluxAttnProcessor"),)


def qkv_fused(module: Any) -> bool:
    """Whether the QKV projections of ``module`` have been fused already (by :func:`fuse_projections` or
    diffusers' ``fuse_qkv_projections()``)."""
    return getattr(module, "original_attn_processors", None) is not None


@dataclass
class FusionPlan:
    """What :func:`fuse_projections` does to one attention module."""

    name: str
    module: Any
    groups: List[Tuple[str, Tuple[str, ...]]]  # (fused layer, the layers it concatenates)
    processor: Optional[str]  # nexfort's processor to install (None: the module's own reads the fused layers)


def _code_names(fn: Any) -> Optional[frozenset]:
    """The attribute/global names and string constants ``fn``'s code reads (None: not a Python function)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return frozenset(code.co_names) | frozenset(c for c in code.co_consts if isinstance(c, str))


def _linears_unfusable(m: Any, names: Tuple[str, ...], equal_widths: bool) -> Optional[str]:
    """Why the layers ``names`` of ``m`` cannot be one ``nn.Linear`` computing their concatenated outputs exactly
    (None: they can)."""
    import torch

    layers = [getattr(m, n, None) for n in names]
    if not all(isinstance(x, torch.nn.Linear) and type(x).forward is torch.nn.Linear.forward
               and type(x.weight.data) is torch.Tensor for x in layers):
        return f"{'/'.join(names)} are not all plain nn.Linear layers"
    w = layers[0].weight
    if any(x.in_features != layers[0].in_features or x.weight.dtype != w.dtype or x.weight.device != w.device
           or (x.bias is None) != (layers[0].bias is None) for x in layers):
        return f"{'/'.join(names)} differ in input size, dtype, device or bias"
    if equal_widths and len({x.out_features for x in layers}) != 1:
        return f"{'/'.join(names)} differ in width (the processor splits their fused output in equal parts)"
    return None


def copy_of(m: Any) -> Tuple[Optional[str], str]:
    """``(name, "")``: the processor of :mod:`nexfort.diffusers.fused_attention` (a key of :data:`COPY_READS`)
    that computes exactly what the processor of the attention module ``m`` does, reading fused projections where
    there are any; ``(None, why)`` where there is none. A processor of nexfort's own (one of those, or a subclass
    such as the sequence-parallel ones, :mod:`nexfort.diffusers.parallel_attention`) names itself
    (``_nexfort_copy``)."""
    proc_cls = type(getattr(m, "processor", None))
    own = getattr(proc_cls, "_nexfort_copy", None)
    if own in COPY_READS:
        return own, ""
    ap = sys.modules.get("diffusers.models.attention_processor")
    copy = COPIES.get(proc_cls.__name__)
    if not (copy and ap is not None and type(m) is getattr(ap, "Attention", None)
            and proc_cls is getattr(ap, proc_cls.__name__, None)):
        return None, f"no fused counterpart known to compute what {proc_cls.__name__} does"
    orig_reads = _code_names(vars(proc_cls).get("__call__"))
    if orig_reads is None:
        return None, f"{proc_cls.__name__} has no __call__ of its own in Python"
    differ = sorted(a for a, on in OPTIONAL_STEPS.items()
                    if on(getattr(m, a, None)) and (a in orig_reads) != (a in COPY_READS[copy]))
    if differ:
        return None, f"{proc_cls.__name__} here and {copy} differ in {', '.join(differ)}"
    return copy, ""


def _plan_module(name: str, m: Any) -> Tuple[Optional[FusionPlan], str]:
    proc_cls = type(getattr(m, "processor", None))
    ap = sys.modules.get("diffusers.models.attention_processor")
    if getattr(proc_cls, "_nexfort_copy", None) in COPY_READS or (
            COPIES.get(proc_cls.__name__) and ap is not None and type(m) is getattr(ap, "Attention", None)
            and proc_cls is getattr(ap, proc_cls.__name__, None)):
        copy, why = copy_of(m)
        if copy is None:
            return None, why
        if getattr(proc_cls, "_nexfort_copy", None) == copy:
            copy = None  # nexfort's own processor (sequence-parallel): it reads the fused layers itself, and stays
        groups = [("to_kv", KV) if getattr(m, "is_cross_attention", False) else ("to_qkv", QKV)]
        if all(getattr(m, n, None) is not None for n in ADDED) and not _linears_unfusable(m, ADDED, False):
            groups.append(("to_added_qkv", ADDED))  # else the copy reads add_*_proj one by one
        why = _linears_unfusable(m, groups[0][1], False)
        return (None, why) if why else (FusionPlan(name, m, groups, copy), "")
    if any(proc_cls is getattr(sys.modules.get(mod), cls, None) for mod, cls in SELF_FUSING):
        if not getattr(m, "_supports_qkv_fusion", True) or getattr(m, "is_cross_attention", False):
            return None, f"{type(m).__name__} does not support fused projections"
        if "_get_qkv_projections" not in (_code_names(proc_cls.__call__) or ()):
            return None, f"{proc_cls.__name__} here does not choose its projections by fused_projections"
        groups = [("to_qkv", QKV)]
        if getattr(m, "added_kv_proj_dim", None) is not None:
            groups.append(("to_added_qkv", ADDED))
        why = next((w for _, names in groups if (w := _linears_unfusable(m, names, True))), None)
        return (None, why) if why else (FusionPlan(name, m, groups, None), "")
    return None, f"no fused counterpart known to compute what {proc_cls.__name__} does"


def plan_fusion(module: Any) -> Tuple[List[FusionPlan], Dict[str, List[str]]]:
    """The attention modules of ``module`` whose projections :func:`fuse_projections` fuses, and the others: the
    names of the modules left alone, per reason. Reads the modules only."""
    plans: List[FusionPlan] = []
    left: Dict[str, List[str]] = {}
    for name, m in module.named_modules():
        if getattr(m, "processor", None) is None or not callable(getattr(m, "set_processor", None)) \
                or getattr(m, "fused_projections", False):
            continue
        try:
            plan, why = _plan_module(name, m)
        except Exception as e:  # noqa: BLE001 - a module this does not know is left alone, whatever it is
            plan, why = None, f"{type(e).__name__}: {e}"
        if plan is None:
            left.setdefault(why, []).append(name)
        else:
            plans.append(plan)
    return plans, left


def _fuse_module(plan: FusionPlan, processors: Dict[str, Any]) -> None:
    """Build the fused layers of ``plan``, set ``fused_projections`` and install the processor; on a failure the
    module is put back as it was and the error raised."""
    import torch

    m = plan.module
    made: List[str] = []
    try:
        with torch.no_grad():
            for fused_name, names in plan.groups:
                layers = [getattr(m, n) for n in names]
                w, b = layers[0].weight, layers[0].bias
                fused = torch.nn.Linear(w.shape[1], sum(x.out_features for x in layers), bias=b is not None,
                                        device="meta")  # no initialisation: its parameters are set next
                fused.weight = torch.nn.Parameter(torch.cat([x.weight for x in layers]), requires_grad=w.requires_grad)
                if b is not None:
                    fused.bias = torch.nn.Parameter(torch.cat([x.bias for x in layers]), requires_grad=b.requires_grad)
                setattr(m, fused_name, fused)
                made.append(fused_name)
        if plan.processor is not None:
            m.set_processor(processors[plan.processor])
        m.fused_projections = True
    except Exception:
        for fused_name in made:
            delattr(m, fused_name)
        raise


def fuse_projections(module: Any) -> Optional[str]:
    """Fuse the QKV projections of the attention modules of a diffusers model that supports it
    (``fuse_qkv_projections``) where that computes exactly what the module did (see the module's doc), and free
    the unfused copies (:func:`share_fused_weights`); what was done, or why nothing was (None: nothing to do, or
    done already). Never raises for a model it does not know: what it cannot prove equal it leaves alone."""
    if not callable(getattr(module, "fuse_qkv_projections", None)) or qkv_fused(module):
        return None
    model = type(module).__name__
    plans, left = plan_fusion(module)
    alone = "; ".join(f"{len(names)} x {why} (e.g. {names[0]})" for why, names in left.items())
    if not plans:
        logger.debug("nexfort: %s: QKV projections left unfused: %s", model, alone or "no attention module")
        return f"QKV projections left unfused ({alone})" if alone else None
    from nexfort.diffusers import fused_attention

    try:
        module.original_attn_processors = module.attn_processors  # unfuse_qkv_projections() restores them
    except Exception:  # noqa: BLE001 - a model without attn_processors: nothing to restore from
        module.original_attn_processors = {}
    processors = {name: getattr(fused_attention, name)() for name in COPY_READS}  # one of each, shared
    done = 0
    for plan in plans:
        try:
            _fuse_module(plan, processors)
            done += 1
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for the fused copy: that module stays unfused
            left.setdefault(f"fusing failed ({type(e).__name__}: {e})", []).append(plan.name)
    alone = "; ".join(f"{len(names)} x {why} (e.g. {names[0]})" for why, names in left.items())
    if not done:
        module.original_attn_processors = None
        logger.debug("nexfort: %s: QKV projections left unfused: %s", model, alone)
        return f"QKV projections left unfused ({alone})"
    shared = share_fused_weights(module)
    msg = f"fused QKV projections of {done} attention modules ({shared} unfused copies freed)"
    if alone:
        logger.debug("nexfort: %s: QKV projections of %d attention modules left unfused: %s",
                     model, sum(map(len, left.values())), alone)
        msg += f"; left alone: {alone}"
    return msg


def fused_groups(module: Any) -> List[Tuple[Any, List[Any]]]:
    """``(fused, parts)`` linear layers of every attention module under ``module`` with fused projections, where
    the fused layer's rows are exactly the parts' (same input size, dtype, device and bias layout)."""
    import torch

    out = []
    for m in module.modules():
        if not getattr(m, "fused_projections", False):
            continue
        for fused_name, names in FUSED_GROUPS:
            fused = getattr(m, fused_name, None)
            parts = [getattr(m, n, None) for n in names]
            if not isinstance(fused, torch.nn.Linear) or not all(isinstance(p, torch.nn.Linear) for p in parts):
                continue
            w = fused.weight
            if (w.shape[0] != sum(p.weight.shape[0] for p in parts)
                    or any(p.weight.shape[1:] != w.shape[1:] or p.weight.dtype != w.dtype
                           or p.weight.device != w.device for p in parts)
                    or any((p.bias is None) != (fused.bias is None) for p in parts)):
                continue
            out.append((fused, parts))
    return out


def share_fused_weights(module: Any) -> int:
    """Make the parameters of the layers a fused projection concatenates views of the fused parameters (their
    values are checked equal first; a group whose values differ is left alone). Returns the groups shared."""
    import torch

    n = 0
    with torch.no_grad():
        for fused, parts in fused_groups(module):
            plan = []  # (layer, attribute, its parameter, the view of the fused parameter that replaces it)
            for attr in ("weight", "bias"):
                whole, row = getattr(fused, attr), 0
                if whole is None:  # no biases (fused_groups checked the parts have none either)
                    continue
                for p in parts:
                    old = getattr(p, attr)
                    plan.append((p, attr, old, whole.data[row:row + old.shape[0]]))
                    row += old.shape[0]
            if not all(torch.equal(old, view) for _, _, old, view in plan):
                continue
            for p, attr, old, view in plan:
                if old.data_ptr() != view.data_ptr():
                    setattr(p, attr, torch.nn.Parameter(view, requires_grad=old.requires_grad))
            n += 1
    return n
