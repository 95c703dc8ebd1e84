"""Selective quantization: quantize the layers that quantize best, keep the worst ``100 - top_percentage`` % in high
precision.

    sel = select_layers(model, config, calibration, top_percentage=90)   # measures; changes nothing
    sel.save("sel.json")
    quantize_(model, config, filter_fn=sel.filter_fn())                  # or quantize_selected(model, config, sel)
    sel = Selection.load("sel.json", model, config)                      # checks the file is this model's

On the calibration inputs (a callable ``calibration(model)`` that runs the model, or an iterable of inputs: a dict
of keyword arguments, a tuple of positional ones, or a tensor), each candidate layer's output is compared with the
output of its quantized copy on the same input: the relative L2 error ``||q(x) - f(x)|| / ||f(x)||`` over all the
calibration calls. Layers that share a weight storage (a fused projection and the row views of it that
``fuse_qkv_projections`` leaves) are chosen together, with the largest error among them. Of the ``n`` groups, the
``floor(n * (100 - top_percentage) / 100)`` with the largest errors are kept in high precision. A group the
calibration never ran is kept too, and logged (``Selection.unmeasured``).

The file (JSON): ``format``, ``version``, ``type`` (canonical), ``top_percentage``, ``model`` (``class``: the
model's class name, ``layers``: every ``nn.Linear``'s qualified name -> ``[out_features, in_features]``,
``sha256`` of both), ``errors`` (candidate -> rel L2, ``null`` where not measured), ``quantize``, ``keep``,
``unmeasured`` (layer names). Loading it for another model class, another type, or a model whose linear layers
differ (missing, extra or reshaped) is a :class:`QuantizationError` that names them; nothing is ignored silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch

from nexfort.passes.quant import api
from nexfort.passes.quant.api import QuantConfig, QuantizationError, QuantResult, candidates, quantize_

logger = logging.getLogger("nexfort")
FORMAT, VERSION = "nexfort.quant.selection", 1
Calibration = Union[Callable[[Any], Any], Iterable[Any]]


def check_top_percentage(top_percentage: Any) -> float:
    """``top_percentage`` as a float in (0, 100], or a :class:`QuantizationError`."""
    if isinstance(top_percentage, bool) or not isinstance(top_percentage, (int, float)) or not (
            0 < float(top_percentage) <= 100):
        raise QuantizationError(f"top_percentage must be a number in (0, 100] (the percentage of the candidate "
                                f"layers to quantize; 100: all), got {top_percentage!r}.")
    return float(top_percentage)


def fingerprint(model: torch.nn.Module) -> Dict[str, Any]:
    """The model's class name and every ``nn.Linear``'s qualified name and ``[out, in]`` shape, with their hash."""
    layers = {fqn: [int(m.out_features), int(m.in_features)] for fqn, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    text = type(model).__name__ + ";" + ";".join(f"{k}:{v[0]}x{v[1]}" for k, v in sorted(layers.items()))
    return {"class": type(model).__name__, "layers": layers, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def _groups(layers: List[Any]) -> List[List[str]]:
    """The candidate layers grouped by the weight storage they share (sorted names, groups in model order)."""
    by_storage: Dict[Any, List[str]] = {}
    for fqn, m in layers:
        w = m.weight
        key = (w.device, w.untyped_storage().data_ptr()) if w.device.type != "meta" else fqn
        by_storage.setdefault(key, []).append(fqn)
    return [sorted(g) for g in by_storage.values()]


def _run_calibration(model: torch.nn.Module, calibration: Calibration) -> int:
    if callable(calibration):
        calibration(model)
        return 1
    if isinstance(calibration, (torch.Tensor, dict)):
        calibration = [calibration]
    n = 0
    for item in calibration:
        if isinstance(item, dict):
            model(**item)
        elif isinstance(item, (tuple, list)):
            model(*item)
        else:
            model(item)
        n += 1
    if n == 0:
        raise QuantizationError("selective quantization: the calibration inputs are empty; give a callable that "
                                "runs the model or a list of inputs (dicts of keyword arguments, tuples, tensors).")
    return n


def measure_errors(model: torch.nn.Module, config: QuantConfig, calibration: Calibration,
                   filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> Dict[str, Optional[float]]:
    """Each candidate layer's relative L2 output error quantized vs float on ``calibration`` (``None``: the layer
    never ran). The model is not changed; each layer's quantized copy lives only while it is measured."""
    config.check(model)
    layers = candidates(model, config, filter_fn)
    handler = api._HANDLERS[type(config)]
    sums: Dict[str, List[float]] = {}
    hooks = []

    def hook_for(fqn: str, linear: torch.nn.Linear) -> Callable[..., None]:
        holder: Dict[str, torch.nn.Module] = {}

        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if "q" not in holder:
                box = torch.nn.Module()
                box.add_module("layer", linear)
                handler(box, [("layer", linear)], config)
                holder["q"] = box.layer
            q = holder["q"](inputs[0]).double()
            ref = output.detach().double()
            num = float((q - ref).pow(2).sum()) if torch.isfinite(q).all() else math.inf
            acc = sums.setdefault(fqn, [0.0, 0.0])
            acc[0] += num
            acc[1] += float(ref.pow(2).sum())

        return hook

    try:
        for fqn, m in layers:
            hooks.append(m.register_forward_hook(hook_for(fqn, m)))
        with torch.no_grad():
            _run_calibration(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    return {fqn: (math.sqrt(sums[fqn][0] / max(sums[fqn][1], 1e-30)) if fqn in sums else None)
            for fqn, _ in layers}


def _choose(groups: List[List[str]], errors: Dict[str, Optional[float]], top_percentage: float) -> Dict[str, List]:
    measured, unmeasured = [], []
    for g in groups:
        errs = [errors[n] for n in g if errors.get(n) is not None]
        (measured if errs else unmeasured).append((max(errs) if errs else None, g))
    measured.sort(key=lambda eg: (eg[0], eg[1][0]))
    n_keep = int(math.floor(len(measured) * (100.0 - top_percentage) / 100.0 + 1e-9))
    quant = measured[:len(measured) - n_keep]
    keep = measured[len(measured) - n_keep:]
    flat = lambda groups_: sorted(n for _, g in groups_ for n in g)  # noqa: E731
    return {"quantize": flat(quant), "keep": flat(keep) + flat(unmeasured), "unmeasured": flat(unmeasured)}


@dataclass
class Selection:
    """Which candidate layers to quantize with ``type`` (and their measured errors), for the model ``model``."""

    type: str
    top_percentage: float
    errors: Dict[str, Optional[float]]
    quantize: List[str]
    keep: List[str]
    unmeasured: List[str] = field(default_factory=list)
    model: Dict[str, Any] = field(default_factory=dict)

    def filter_fn(self) -> Callable[[torch.nn.Module, str], bool]:
        """A ``filter_fn`` for :func:`quantize_` that quantizes the chosen layers only."""
        chosen = frozenset(self.quantize)
        return lambda linear, fqn: fqn in chosen

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "type": self.type, "top_percentage": self.top_percentage,
                "model": self.model, "errors": self.errors, "quantize": self.quantize, "keep": self.keep,
                "unmeasured": self.unmeasured}

    def save(self, path: Union[str, os.PathLike]) -> None:
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def check(self, model: torch.nn.Module, config: QuantConfig,
              filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None, where: str = "selection") -> None:
        """Raise :class:`QuantizationError` unless this selection was made for ``model`` and ``config``'s type."""
        self.check_model(config, fingerprint(model), where)
        names = {fqn for fqn, _ in candidates(model, config, filter_fn)}
        unknown = sorted(names - set(self.errors))
        if unknown:
            raise QuantizationError(f"{where} does not cover the layers {_names(unknown)} (measured with other "
                                    "options: min_features, ignores?); measure again with these options.")

    def check_model(self, config: QuantConfig, fp: Dict[str, Any], where: str = "selection") -> None:
        """The type and fingerprint part of :meth:`check` (``fp``: :func:`fingerprint` of the model, or what it will
        be: ``layers`` alone is enough)."""
        if self.type != config.name:
            raise QuantizationError(f"{where} was measured for quantization type {self.type!r}, not {config.name!r}: "
                                    "measure again for this type (select_layers).")
        saved = self.model or {}
        if saved.get("class") != fp["class"]:
            raise QuantizationError(f"{where} is for a {saved.get('class')!r} model, not this {fp['class']!r}.")
        old, new = saved.get("layers", {}), fp["layers"]
        missing = sorted(set(old) - set(new))
        extra = sorted(set(new) - set(old))
        reshaped = sorted(k for k in set(old) & set(new) if list(old[k]) != list(new[k]))
        if missing or extra or reshaped:
            parts = [f"{label} {_names(v)}" for label, v in (("missing from this model:", missing),
                     ("not in the file:", extra), ("with other shapes:", reshaped)) if v]
            raise QuantizationError(f"{where} is for another {fp['class']} (its linear layers differ: "
                                    f"{'; '.join(parts)}); measure again for this model.")

    @classmethod
    def read(cls, path: Union[str, os.PathLike]) -> "Selection":
        """The selection saved at ``path``, unchecked (:meth:`load` checks it)."""
        where = f"Selection file {os.fspath(path)!r}"
        if not os.path.exists(path):
            raise QuantizationError(f"{where} does not exist; measure with calibration inputs to make it.")
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError) as e:
            raise QuantizationError(f"{where} cannot be read as JSON: {e}.") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise QuantizationError(f"{where} is not a nexfort quantization selection (format {FORMAT!r} version "
                                    f"{VERSION}).")
        try:
            return cls(type=str(d["type"]), top_percentage=float(d["top_percentage"]), errors=dict(d["errors"]),
                       quantize=list(d["quantize"]), keep=list(d["keep"]), unmeasured=list(d.get("unmeasured", [])),
                       model=dict(d["model"]))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizationError(f"{where} lacks or garbles the entry {e}.") from e

    @classmethod
    def load(cls, path: Union[str, os.PathLike], model: torch.nn.Module, config: QuantConfig,
             filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> "Selection":
        """The selection saved at ``path``, checked against ``model`` and ``config`` (:meth:`check`)."""
        sel = cls.read(path)
        sel.check(model, config, filter_fn, f"Selection file {os.fspath(path)!r}")
        return sel

    def reselect(self, model: torch.nn.Module, config: QuantConfig, top_percentage: float,
                 filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> "Selection":
        """This selection's errors with another ``top_percentage`` (no new measurement)."""
        p = check_top_percentage(top_percentage)
        layers = candidates(model, config, filter_fn)
        chosen = _choose(_groups(layers), {f: self.errors.get(f) for f, _ in layers}, p)
        return Selection(self.type, p, dict(self.errors), model=dict(self.model), **chosen)


def _names(names: List[str], n: int = 6) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(map(repr, names[:n])) + more


def select_layers(model: torch.nn.Module, config: QuantConfig, calibration: Calibration, top_percentage: float = 100,
                  filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> Selection:
    """Measure (:func:`measure_errors`) and choose the layers to quantize; the model is not changed."""
    p = check_top_percentage(top_percentage)
    errors = measure_errors(model, config, calibration, filter_fn)
    layers = candidates(model, config, filter_fn)
    chosen = _choose(_groups(layers), errors, p)
    sel = Selection(config.name, p, errors, model=fingerprint(model), **chosen)
    if sel.unmeasured:
        logger.warning("nexfort: selective quantization: the calibration never ran %s: kept in high precision",
                       _names(sel.unmeasured))
    return sel


def quantize_selected(model: torch.nn.Module, config: QuantConfig, selection: Selection,
                      filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> QuantResult:
    """Check ``selection`` against ``model`` and quantize the layers it chose (``filter_fn`` may leave more
    alone); the result's ``kept`` lists the candidates left in high precision."""
    selection.check(model, config, filter_fn)
    chosen = selection.filter_fn()
    keep = filter_fn
    done = quantize_(model, config, lambda m, fqn: chosen(m, fqn) and (keep is None or keep(m, fqn)))
    return QuantResult(done.layers, done.type, done.weight_bytes_before, done.weight_bytes_after,
                       kept=[n for n in selection.keep if n in selection.errors])
