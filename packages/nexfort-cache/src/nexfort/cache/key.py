"""The key of a compiled graph: everything that can change what Inductor produces for it.

:func:`key_parts` gathers the parts (each one a JSON-able value), :func:`digest` hashes them. A change in any
part is a different key, so a miss, never a wrong hit. The key only *selects* which artifact bundle to load:
Inductor's and AOTAutograd's own cache keys are checked again when the loaded artifacts are used, so even a
key that missed something could cost a recompilation, never a wrong result.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any, Dict, List, Sequence

import torch

KEY_VERSION = 3  # 2: entries carry the autotuning results of the first call; 3: and its Triton kernels
NEXFORT_DISTRIBUTIONS = ("nexfort-core", "nexfort-passes", "nexfort-cache", "nexfort-diffusers")


def _dim(d: Any) -> Any:
    """An int dim as itself; a symbolic one as its expression (``"s0"``): which dims are dynamic is keyed."""
    if isinstance(d, torch.SymInt):
        return "sym:" + str(d.node.expr) if hasattr(d, "node") else "sym:" + str(d)
    return int(d)


def describe_input(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        desc: Dict[str, Any] = {
            "shape": [_dim(d) for d in x.shape],
            "dtype": str(x.dtype),
            "device": str(x.device.type),
            "requires_grad": bool(x.requires_grad),
        }
        try:
            desc["stride"] = [_dim(s) for s in x.stride()]
        except (RuntimeError, NotImplementedError):  # sparse / nested tensors have no strides
            desc["stride"] = None
        if x.is_quantized:
            desc["qscheme"] = str(x.qscheme())
        return desc
    if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return {"sym": type(x).__name__, "expr": str(x.node.expr) if hasattr(x, "node") else str(x)}
    if isinstance(x, (int, float, bool, str)) or x is None:
        return {"const": repr(x)}
    return {"type": type(x).__qualname__}


def describe_inputs(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> List[Any]:
    """Each input, with the dims Dynamo traced as symbolic (the placeholder's fake value) shown as such
    (``"sym:s77"``) instead of this call's sizes."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = []
    for i, x in enumerate(example_inputs):
        desc = describe_input(x)
        traced = placeholders[i].meta.get("example_value") if i < len(placeholders) else None
        if isinstance(x, torch.Tensor) and isinstance(traced, torch.Tensor):
            for field, dims in (("shape", list(traced.shape)), ("stride", _strides(traced))):
                if desc.get(field) is not None and dims is not None and len(dims) == len(desc[field]):
                    desc[field] = [_dim(t) if isinstance(t, torch.SymInt) else d for t, d in zip(dims, desc[field])]
        out.append(desc)
    return out


def describe_attributes(gm: torch.fx.GraphModule) -> Dict[str, Any]:
    """The tensors the graph reads with ``get_attr`` (parameters that Dynamo did not lift into inputs)."""
    out: Dict[str, Any] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        obj: Any = gm
        try:
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
        except AttributeError:
            out[str(node.target)] = None
            continue
        out[str(node.target)] = describe_input(obj) if isinstance(obj, torch.Tensor) else type(obj).__qualname__
    return out


def _strides(t: torch.Tensor) -> Any:
    try:
        return list(t.stride())
    except (RuntimeError, NotImplementedError):
        return None


def _config_text(config: Any) -> str:
    """The resolved configuration, minus where the cache lives (two machines with different cache directories
    compile the same code)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            data = OmegaConf.to_container(config, resolve=True)
            opts = data.get("options", {})
            opts.pop("cache", None)
            opts.pop("cache_store", None)
            return json.dumps(data, sort_keys=True, default=repr)
    except ImportError:  # pragma: no cover
        pass
    return repr(config)


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return ""
    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def environment() -> Dict[str, Any]:
    """Versions and hardware that the compiled code depends on (read at call time)."""
    env: Dict[str, Any] = {
        "torch": torch.__version__,
        "triton": _dist_version("triton") or _dist_version("pytorch-triton"),
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "nexfort": {d: _dist_version(d) for d in NEXFORT_DISTRIBUTIONS},
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    get_cap = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    env["cpu_capability"] = get_cap() if get_cap else None
    return env


def devices(example_inputs: Sequence[Any]) -> List[str]:
    """The GPU model of every CUDA device the inputs live on."""
    names = set()
    for x in example_inputs:
        if isinstance(x, torch.Tensor) and x.device.type == "cuda":
            idx = x.device.index if x.device.index is not None else torch.cuda.current_device()
            names.add(f"{torch.cuda.get_device_name(idx)} sm{''.join(map(str, torch.cuda.get_device_capability(idx)))}")
    return sorted(names)


def key_parts(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config: Any,
              pass_fingerprint: Sequence[str] = ()) -> Dict[str, Any]:
    """What the key is made of. ``pass_fingerprint``: the passes the graph is compiled with, as core hands it to
    ``nexfort_pre_compile`` (``"<stage>:<name>:<uuid>"`` each, sorted; empty: none)."""
    return {
        "key_version": KEY_VERSION,
        "graph": gm.code,
        "inputs": describe_inputs(gm, example_inputs),
        "attributes": describe_attributes(gm),
        "grad_enabled": torch.is_grad_enabled(),
        "config": _config_text(config),
        "passes": sorted(pass_fingerprint),
        "environment": environment(),
        "gpus": devices(example_inputs),
    }


def digest(parts: Dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config: Any,
              pass_fingerprint: Sequence[str] = ()) -> str:
    return digest(key_parts(gm, example_inputs, config, pass_fingerprint))
