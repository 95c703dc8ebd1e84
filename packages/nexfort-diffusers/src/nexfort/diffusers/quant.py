"""``quantize_pipe``: quantize a diffusers pipeline's denoiser(s) in place (the ``quantize_`` of the plugin that
provides quantization, nexfort-passes' quant plugin, through the ``nexfort_quantization`` hook).

    quantize_pipe(pipe, "int8_dynamic")            # the transformer/UNet's linear layers in int8
    quantize_pipe(pipe, "fp8", top_percentage=90, calibration=[{"prompt": "a cat"}],
                  selection_file="sel.json")     # the 10 % of layers that quantize worst stay in high precision
    compile_pipe(pipe, mode="max-optimize:max-autotune:low-precision")

Same result as the ``quant`` mode flag of ``compile_pipe``; as a separate step it can run before saving, on a
pipeline compiled otherwise, or on some components only. The QKV projections are fused first (as max-optimize
does, without a second copy of the weights: :mod:`nexfort.diffusers.fused`) so the fused layers are quantized once.
Quantizing is one-way: fuse LoRA weights before, not after.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, Optional

import torch

from nexfort.diffusers.fused import fuse_projections, plan_fusion
from nexfort.diffusers.pipe import DENOISERS, _components

logger = logging.getLogger("nexfort")


def _quant_api() -> Any:
    """The quantization API an installed plugin provides (``nexfort_quantization``: nexfort-passes' quant plugin),
    so that this package imports no other plugin."""
    from nexfort.core.api import plugin_manager

    quant = plugin_manager().hook.nexfort_quantization()
    if quant is None:
        raise ImportError("quantize_pipe needs a nexfort plugin that quantizes (nexfort_quantization), and none is "
                          "loaded: pip install nexfort-passes (or check NEXFORT_DISABLE_PLUGIN_AUTOLOAD / "
                          "NEXFORT_DISABLED_PLUGINS).")
    return quant


def quantize_pipe(pipe: Any, quant_type: str = "fp8", *, ignores: Iterable[str] = (),
                  top_percentage: Optional[float] = None, calibration: Any = None,
                  selection_file: Optional[str] = None, components: Optional[Iterable[str]] = None,
                  min_features: int = 256, fuse_qkv_projections: bool = True, method: Optional[str] = None,
                  exclude: Optional[Iterable[str]] = None) -> Dict[str, int]:
    """Quantize the linear layers of ``components`` (default: the pipeline's denoisers) with the type
    ``quant_type`` (``nexfort.passes.quant.supported_types()``; ``method`` is its former name); layers whose name
    contains a string of ``ignores`` (former name ``exclude``) or with fewer than ``min_features`` input or output
    features are left alone.

    Selective quantization: with ``top_percentage`` < 100 and ``calibration`` (a callable ``calibration(pipe)``
    that runs the pipeline, or a list of keyword-argument dicts for ``pipe(**kwargs)``), each candidate layer's
    output error is measured and the worst ``100 - top_percentage`` % stay in high precision; the choice is saved
    to ``selection_file`` where given (one file per component: ``<selection_file>`` for a single component, else
    ``<stem>.<component>.json``). With ``selection_file`` and no ``calibration``, the saved choice is loaded (and
    checked to be this model's); ``top_percentage`` then re-chooses from its errors where given.

    Everything is checked before anything changes. Returns the number of layers quantized per component (each a
    ``QuantResult``: also its layer names, the layers kept and the weight memory before and after, which is
    logged)."""
    quant = _quant_api()
    if method is not None:
        quant_type = method
    if exclude is not None:
        ignores = list(ignores) + list(exclude)
    config = quant.config_for(quant_type, min_features=min_features)  # an unknown type fails here
    selective = top_percentage is not None or selection_file is not None or calibration is not None
    if top_percentage is not None:
        top_percentage = quant.check_top_percentage(top_percentage)
    if selective and calibration is None and selection_file is None and top_percentage != 100.0:
        raise quant.QuantizationError(
            f"quantize_pipe: top_percentage={top_percentage:g} needs calibration inputs (a callable that runs the "
            "pipeline, or a list of its keyword arguments) or a selection_file saved by an earlier calibration.")
    comps = _components(pipe)
    modules = {n: m for n, m in comps.items() if isinstance(m, torch.nn.Module)}
    names = [n for n in DENOISERS if n in modules] if components is None else list(components)
    bad = [n for n in names if n not in modules]
    if bad or not names:
        raise ValueError(f"quantize_pipe: {', '.join(map(repr, bad)) or 'nothing'} to quantize in "
                         f"{pipe.__class__.__name__}; valid components: "
                         f"{', '.join(modules)}.")
    keep = quant.excluding(ignores)
    for name in names:
        config.check(modules[name])
    files = _selection_files(selection_file, names)
    saved: Dict[str, Any] = {}
    if selection_file is not None and calibration is None:
        for name in names:  # a missing file or another model's fails before anything changes (fusing included)
            saved[name] = quant.Selection.read(files[name])
            fp = _fused_fingerprint(quant, modules[name]) if fuse_qkv_projections else quant.fingerprint(
                modules[name])
            saved[name].check_model(config, fp, f"Selection file {files[name]!r}")
    if fuse_qkv_projections:
        for name in names:
            fuse_projections(modules[name])
    selections: Dict[str, Any] = {}
    if calibration is not None:
        selections = _measure(quant, pipe, modules, names, config, calibration, top_percentage or 100.0, keep)
        for name, sel in selections.items():
            if files:
                sel.save(files[name])
    elif selection_file is not None:
        for name in names:  # check all before quantizing any
            sel = saved[name]
            sel.check(modules[name], config, keep, f"Selection file {files[name]!r}")
            if top_percentage is not None and top_percentage != sel.top_percentage:
                sel = sel.reselect(modules[name], config, top_percentage, keep)
            selections[name] = sel
    done: Dict[str, int] = {}
    for name in names:
        module = modules[name]
        if name in selections:
            done[name] = quant.quantize_selected(module, config, selections[name], filter_fn=keep)
        else:
            done[name] = quant.quantize_(module, config, filter_fn=keep)
    logger.info("nexfort: quantize_pipe(%s, %r) quantized %s", pipe.__class__.__name__, config.name,
                "; ".join(f"{n}: {k.summary() if hasattr(k, 'summary') else k}" for n, k in done.items()))
    return done


def _fused_fingerprint(quant: Any, module: Any) -> Dict[str, Any]:
    """The fingerprint ``module`` will have once :func:`fuse_projections` has fused it (read only)."""
    fp = quant.fingerprint(module)
    layers = fp["layers"]
    plans, _ = plan_fusion(module)
    for plan in plans:
        pre = f"{plan.name}." if plan.name else ""
        for fused, parts in plan.groups:
            shapes = [layers[pre + p] for p in parts]
            layers[pre + fused] = [sum(s[0] for s in shapes), shapes[0][1]]
    return fp


def _selection_files(selection_file: Optional[str], names: Any) -> Dict[str, str]:
    if selection_file is None:
        return {}
    if len(names) == 1:
        return {names[0]: os.fspath(selection_file)}
    stem, ext = os.path.splitext(os.fspath(selection_file))
    return {n: f"{stem}.{n}{ext or '.json'}" for n in names}


def _measure(quant: Any, pipe: Any, modules: Dict[str, Any], names: Any, config: Any, calibration: Any,
             top_percentage: float, keep: Any) -> Dict[str, Any]:
    """One calibration run of the pipeline measures every component at once (its hooks are on all of them)."""
    if not callable(calibration):
        items = list(calibration)
        calibration = (lambda p, items=items: [p(**kw) for kw in items]) if items else None
    if calibration is None:
        raise quant.QuantizationError("quantize_pipe: the calibration inputs are empty.")
    if len(names) == 1:
        name = names[0]
        return {name: quant.select_layers(modules[name], config, lambda _m: calibration(pipe), top_percentage,
                                          keep)}
    # several components: wrap them in one module so that a single pipeline run measures all
    holder = torch.nn.Module()
    for name in names:
        holder.add_module(name, modules[name])
    sel = quant.select_layers(holder, config, lambda _m: calibration(pipe), top_percentage, keep)
    out = {}
    for name in names:
        pre = name + "."
        sub = {k[len(pre):]: v for k, v in sel.errors.items() if k.startswith(pre)}
        base = quant.Selection(sel.type, top_percentage, sub, [], [], model=quant.fingerprint(modules[name]))
        out[name] = base.reselect(modules[name], config, top_percentage, keep)
    return out
