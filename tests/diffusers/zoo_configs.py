"""The zoo's configurations (tests/diffusers/test_zoo.py): small constructor kwargs and input specs of diffusers'
denoiser classes, the CI subset, and a reasoned skip for each exported denoiser class without a config.

``zoo_configs.json`` was generated from diffusers' own model tests (huggingface/diffusers ``tests/models/**``,
commit 58eb52c080, 0.40.0.dev0: each tester's ``get_init_dict``/``get_dummy_inputs`` or
``prepare_init_args_and_inputs_for_common``): the constructor kwargs verbatim, each input as a spec from which
fresh random values of the same shape, dtype and range are drawn (``build_inputs``):
``{"t": "randn"|"uniform"|"randint"|"bool"|"lit"|"dict"|"list", "shape": [...], "dtype": ..., "lo"/"hi"}``
(a ``lit`` with ``"tuples": true`` is a list of tuples; a ``dict``'s digit keys are ints).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo_configs.json")) as _f:
    CONFIGS: Dict[str, Dict[str, Any]] = json.load(_f)

# The CI subset: (class, entry point) pairs that tests/diffusers/test_zoo.py runs by default (NEXFORT_ZOO=all, that
# is `nox -s zoo`, runs every class through both). An image DiT with cross-attention through both entry points (the
# second reuses the first's compiled kernels from Inductor's cache), Flux (its own fusing processor) and a video DiT
# (Wan) through nexfort_compile (the module transforms: where the zoo found the failures). Measured on 2 shared
# CPU cores (load ~6, TORCHINDUCTOR_COMPILE_THREADS=1, 2026-12-01): PixArt 60 s + 15 s, Flux 97 s, Wan 102 s;
# SD3 (142 s), CogVideoX (148 s), UNet2DModel (238 s), LTX2 (~240 s) and the 3D UNets (~490 s, see test_zoo.py)
# compile too long for CI and run in the nox session.
CI_SUBSET = (
    ("PixArtTransformer2DModel", "nexfort_compile"), ("PixArtTransformer2DModel", "torch.compile"),
    ("FluxTransformer2DModel", "nexfort_compile"), ("WanTransformer3DModel", "nexfort_compile"),
)

_NEWER = ("newer than the diffusers test tree the configs come from (0.40.0.dev0 has no such class); no "
          "config written for it yet")
_PIPE_ONLY = ("diffusers' tests build it only inside pipeline tests (no model-level init dict and inputs to take); "
              "no config written for it yet")
_UNTESTED = "diffusers' test tree (0.40.0.dev0) builds it nowhere; no config written for it yet"
_CONTAINER = "a container that runs other ControlNets (each of which the zoo covers or skips on its own)"
_ADAPTER = "an adapter that a UNet consumes (no denoiser forward of its own)"

# exported denoiser classes that have no config, with the reason
SKIPS: Dict[str, str] = {
    "MultiControlNetModel": _CONTAINER, "FluxMultiControlNetModel": _CONTAINER,
    "SD3MultiControlNetModel": _CONTAINER, "HunyuanDiT2DMultiControlNetModel": _CONTAINER,
    "QwenImageMultiControlNetModel": _CONTAINER,
    "MotionAdapter": _ADAPTER, "ControlNetXSAdapter": _ADAPTER,
    "BriaFibo2Transformer2DModel": _NEWER,
    "Flux3Transformer2DModel": _NEWER,
    "Kandinsky6SRTransformer3DModel": _NEWER,
    "Kandinsky6Transformer3DModel": _NEWER,
    "QwenImage21Transformer2DModel": _NEWER,
    "RFD4ProteinaTransformer": _NEWER,
    "SanaWMLTX2RefinerTransformer3DModel": _NEWER,
    "SanaWMTransformer3DModel": _NEWER,
    "ControlNetModel": _PIPE_ONLY,
    "DreamLiteUNetModel": _PIPE_ONLY,
    "FluxControlNetModel": _PIPE_ONLY,
    "HunyuanDiT2DControlNetModel": _PIPE_ONLY,
    "HunyuanImageTransformer2DModel": _PIPE_ONLY,
    "I2VGenXLUNet": _PIPE_ONLY,
    "Kandinsky3UNet": _PIPE_ONLY,
    "Kandinsky5Transformer3DModel": _PIPE_ONLY,
    "MiniMaxMusic3RVQDepthDecoder": _PIPE_ONLY,
    "QwenImageControlNetModel": _PIPE_ONLY,
    "SD3ControlNetModel": _PIPE_ONLY,
    "SanaControlNetModel": _PIPE_ONLY,
    "SparseControlNetModel": _PIPE_ONLY,
    "StableAudioDiTModel": _PIPE_ONLY,
    "StableCascadeUNet": _PIPE_ONLY,
    "Transformer2DModel": _PIPE_ONLY,
    "ControlNetUnionModel": _UNTESTED,
    "DreamLiteTransformer2DModel": _UNTESTED,
    "T5FilmDecoder": _UNTESTED,
    "UVit2DModel": _UNTESTED,
    "ZImageControlNetModel": _UNTESTED,
}


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
    if kind == "lit":  # "tuples": a list of tuples, which JSON writes as a list of lists (QwenImage's img_shapes)
        return [tuple(v) for v in spec["v"]] if spec.get("tuples") else spec["v"]
    if kind == "dict":  # JSON keys are strings: an integer key (OmniGen's per-batch input_image_sizes) back as int
        return {(int(k) if k.isdigit() else k): _value(v, g) for k, v in spec["v"].items()}
    if kind == "list":
        return [_value(v, g) for v in spec["v"]]
    return _tensor(spec, g)


def build_inputs(name: str, seed: int) -> Dict[str, Any]:
    """Fresh random inputs of the shapes of diffusers' test for ``name`` (never zeros)."""
    g = torch.Generator().manual_seed(seed)
    return {k: _value(v, g) for k, v in CONFIGS[name]["inputs"].items()}
