"""The zoo's configurations (tests/diffusers/test_zoo.py): small constructor kwargs and input specs of diffusers'
denoiser classes, the CI subset, and a reasoned skip for each exported denoiser class without a config.

``zoo_configs.json`` was generated from diffusers' own model tests (huggingface/diffusers ``tests/models/**``,
commit 58eb52c080, 0.40.0.dev0: each tester's ``get_init_dict``/``get_dummy_inputs`` or
``prepare_init_args_and_inputs_for_common``): the constructor kwargs verbatim, each input as a spec from which
fresh random values of the same shape, dtype and range are drawn (``build_inputs``):
``{"t": "randn"|"uniform"|"randint"|"bool"|"lit"|"dict"|"list", "shape": [...], "dtype": ..., "lo"/"hi"}``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_configs.json")) as _f:
    CONFIGS: Dict[str, Dict[str, Any]] = json.load(_f)

# The CI subset (tests/diffusers/test_zoo.py runs these by default; NEXFORT_ZOO=all, `nox -s zoo`, runs every
# class): image DiTs with joint / cross attention and qk-norm, a video DiT, an audio DiT, a 2D UNet and a 3D UNet.
CI_SUBSET = (
    "PixArtTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel",
    "CogVideoXTransformer3DModel", "LTX2VideoTransformer3DModel", "UNet2DModel", "UNet3DConditionModel",
)

_NO_MODEL_TEST = ("diffusers' tests build it only inside a pipeline test (no model-level init dict and inputs to "
                  "take); the zoo has no config for it yet")
_CONTAINER = "a container that runs other ControlNets (each of which the zoo covers or skips on its own)"
_ADAPTER = "an adapter that a UNet consumes (no denoiser forward of its own)"

# exported denoiser classes that have no config, with the reason
SKIPS: Dict[str, str] = {
    "MultiControlNetModel": _CONTAINER, "FluxMultiControlNetModel": _CONTAINER,
    "SD3MultiControlNetModel": _CONTAINER, "HunyuanDiT2DMultiControlNetModel": _CONTAINER,
    "QwenImageMultiControlNetModel": _CONTAINER,
    "MotionAdapter": _ADAPTER, "ControlNetXSAdapter": _ADAPTER,
}


def skip_reason(name: str) -> str:
    return SKIPS.get(name, _NO_MODEL_TEST)


def _tensor(spec: Dict[str, Any], g: torch.Generator) -> torch.Tensor:
    shape, kind = spec["shape"], spec["t"]
    if kind == "bool":  # attention masks: all-True where diffusers' test used all-True (no fully masked row)
        return torch.ones(shape, dtype=torch.bool) if spec["all"] else torch.rand(shape, generator=g) > 0.3
    dtype = getattr(torch, spec["dtype"])
    if kind == "randn":
        return torch.randn(shape, generator=g).to(dtype)
    if kind == "uniform":
        lo, hi = spec["lo"], spec["hi"]
        return (lo + (hi - lo) * torch.rand(shape, generator=g)).to(dtype)
    if kind == "randint":
        return torch.randint(spec["lo"], max(spec["hi"], spec["lo"] + 1), shape, generator=g).to(dtype)
    raise ValueError(f"unknown input spec {spec}")


def _value(spec: Dict[str, Any], g: torch.Generator) -> Any:
    kind = spec["t"]
    if kind == "lit":
        return spec["v"]
    if kind == "dict":
        return {k: _value(v, g) for k, v in spec["v"].items()}
    if kind == "list":
        return [_value(v, g) for v in spec["v"]]
    return _tensor(spec, g)


def build_inputs(name: str, seed: int) -> Dict[str, Any]:
    """Fresh random inputs of the shapes of diffusers' test for ``name`` (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    return {k: _value(v, g) for k, v in CONFIGS[name]["inputs"].items()}
