"""The ``quant`` plugin (entry point ``quant``): brings and implements the ``quant`` mode flag.

Owns ``options.quant`` (:class:`QuantOptions`). With the flag on, ``nexfort_compile``/``compile_pipe`` quantize the
module's linear layers with ``quantize_`` before compiling (after the other plugins' module transforms, so fused
projections are quantized as fused). ``torch.compile(m, backend="nexfort")`` sees graphs, not the module: there
the flag warns once that nothing was quantized, and says what to use instead.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence

from nexfort.core.api import ModeFlag, hookimpl

NAMESPACE = "quant"
logger = logging.getLogger("nexfort")
_applied: "dict[int, weakref.ref]" = {}  # id -> config whose module this plugin quantized (by identity)
_warned = set()


@dataclass
class QuantOptions:
    """``options.quant.*``."""

    # the method (nexfort.passes.quant.config_for): "fp8" (float8 weights and activations, Hopper/Ada GPUs)
    # fp8_e4m3_e4m3_dynamic (alias fp8), fp8_e4m3_e4m3_dynamic_per_tensor, fp8_e4m3_e4m3_weightonly, int8_dynamic,
    # int8_weightonly: nexfort.passes.quant.supported_types(device) lists the ones a device runs
    type: str = "fp8"
    # layers with fewer input or output features are left alone
    min_features: int = 256
    # layers whose qualified name contains one of these strings are left alone (e.g. "proj_out")
    exclude: List[str] = field(default_factory=list)
    # fp8 dynamic types on CUDA: "triton" (one-pass activation quantization), "inductor" (torch ops fused by
    # Inductor into the producing kernel), "auto" (triton where available); on the CPU "triton" is the same op with
    # its torch-ops implementation (as the GPU's graph, for tests), "auto" the torch ops. int8_dynamic: "auto" is
    # "inductor" (measured), "triton" its one-pass op (opt-in; H200, PixArt-a 1024^2: 42.04 -> 40.04 ms, before
    # the int8 prologue)
    activation_kernel: str = "auto"
    # int8_dynamic: the GEMM. "auto"/"int_mm": torch._int_mm, then the rescale as torch ops (the measured default);
    # "triton": torch.ops.nexfort.int8_scaled_mm, the rescale and bias in the GEMM's epilogue (opt-in, not yet timed
    # on a GPU: benchmarks/gpu/int8_gemm.py)
    gemm_kernel: str = "auto"
    # fp8 dynamic types on CUDA: the fp8 GEMM's fast accumulation (torch._scaled_mm use_fast_accum; torchao's
    # inference default); False: full-precision accumulation, slower
    fast_accum: bool = True
    # who quantizes: "nexfort" (its own layers and kernels) or "torchao" (torchao's config for the same type on the
    # same layers: nexfort.passes.quant.torchao_engine; pip install torchao)
    engine: str = "nexfort"
    # fp8 dynamic types (and int8_dynamic with activation_kernel "triton"): hand GELU, Flux's concatenation and
    # adaLN's norm + modulation before a quantized linear to its activation quantization (one pass instead of two:
    # nexfort.passes.quant.prologue); False: leave the graph as Inductor fuses it
    fuse_prologue: bool = True


#: The mode flag this plugin brings (and implements).
QUANT = ModeFlag(
    name="quant",
    description="quant: quantize the linear layers' weights and activations before compiling (options quant.type: "
                "\"fp8\"; quant.min_features, quant.exclude). Needs the module, so it works through nexfort_compile() "
                "and compile_pipe().",
)


def _on(config: Any) -> bool:
    try:
        return bool(config.flags.quant)
    except Exception:  # noqa: BLE001
        return False


@hookimpl
def nexfort_config_schema() -> Optional[Mapping[str, type]]:
    return {NAMESPACE: QuantOptions}


@hookimpl
def nexfort_validate_config(config: Any) -> Optional[List[str]]:
    """``quant.type`` names a registered method, ``quant.min_features`` is >= 0, ``quant.exclude`` has no empty
    name (which would exclude every layer). Their types are checked by core against :class:`QuantOptions`."""
    from nexfort.core.api import shown
    from nexfort.passes.quant import api

    opts = config.options.get(NAMESPACE)
    if opts is None:
        return None
    problems = []
    if str(opts.type) not in api._BY_NAME:
        problems.append(api.unknown_type_message(str(opts.type)[:200]) + " (options.quant.type)")
    if int(opts.min_features) < 0:
        problems.append(f"Option 'quant.min_features' must be >= 0 (layers with fewer input or output features are "
                        f"left alone), got {shown(opts.min_features)}.")
    from nexfort.passes.quant.fp8 import ACTIVATION_KERNELS
    from nexfort.passes.quant.torchao_engine import ENGINES

    if str(opts.engine) not in ENGINES:
        problems.append(f"Option 'quant.engine' must be one of {', '.join(ENGINES)}, got {shown(opts.engine)}.")

    if str(opts.activation_kernel) not in ACTIVATION_KERNELS:
        problems.append(f"Option 'quant.activation_kernel' must be one of {', '.join(ACTIVATION_KERNELS)}, got "
                        f"{shown(opts.activation_kernel)}.")
    elif str(opts.activation_kernel) != "auto" and str(opts.type) in api._BY_NAME and not hasattr(
            api._BY_NAME[str(opts.type)], "activation_kernel"):
        problems.append(f"Option 'quant.activation_kernel' applies to the dynamic types (fp8, int8_dynamic); "
                        f"quant.type {shown(opts.type)} has no activation kernel to choose (leave it 'auto').")
    from nexfort.passes.quant.int8 import GEMM_KERNELS, Int8DynamicConfig, Int8WeightOnlyConfig

    if str(opts.gemm_kernel) not in GEMM_KERNELS:
        problems.append(f"Option 'quant.gemm_kernel' must be one of {', '.join(GEMM_KERNELS)}, got "
                        f"{shown(opts.gemm_kernel)}.")
    elif str(opts.gemm_kernel) != "auto" and str(opts.type) in api._BY_NAME and (
            not issubclass(api._BY_NAME[str(opts.type)], Int8DynamicConfig)
            or issubclass(api._BY_NAME[str(opts.type)], Int8WeightOnlyConfig)):
        problems.append(f"Option 'quant.gemm_kernel' applies to quant.type 'int8_dynamic'; quant.type "
                        f"{shown(opts.type)} has no int8 GEMM to choose (leave it 'auto').")
    if str(opts.engine) == "torchao":
        for key, value, default in (("activation_kernel", str(opts.activation_kernel), "auto"),
                                    ("gemm_kernel", str(opts.gemm_kernel), "auto"),
                                    ("fast_accum", bool(opts.fast_accum), True)):
            if value != default:
                problems.append(f"Option 'quant.{key}' chooses nexfort's own kernels; with quant.engine 'torchao' "
                                f"torchao's run and it would be ignored (leave it {shown(default)}), got "
                                f"{shown(value)}.")
    from nexfort.passes.quant.fp8 import Float8DynamicConfig, Float8WeightOnlyConfig

    qcls = api._BY_NAME.get(str(opts.type))
    if not bool(opts.fast_accum) and qcls is not None and (
            not issubclass(qcls, Float8DynamicConfig) or issubclass(qcls, Float8WeightOnlyConfig)):
        problems.append(f"Option 'quant.fast_accum' applies to the fp8 dynamic types; quant.type {shown(opts.type)} "
                        f"has no fp8 GEMM accumulation to choose (leave it true).")
    if any(str(name) == "" for name in opts.exclude):
        problems.append(f"Option 'quant.exclude' has an empty name, which every layer's name contains (it would "
                        f"exclude all of them): {shown(list(opts.exclude))}.")
    return problems or None


@hookimpl
def nexfort_graph_passes(config: Any) -> Optional[Sequence[Any]]:
    """The prologue pass (:mod:`nexfort.passes.quant.prologue`) while ``quant.fuse_prologue`` is on, and the pass that
    merges repeated quantize calls of one activation (:mod:`nexfort.passes.quant.share`): both match only nexfort's
    quantize ops, so they change the graphs of quantized modules alone, with or without the flag."""
    from nexfort.core.api import options_of

    opts = options_of(config, NAMESPACE, QuantOptions)
    from nexfort.passes.quant import kernels

    if not kernels.REGISTERED:
        return None
    from nexfort.passes.quant.prologue import QuantProloguePass
    from nexfort.passes.quant.share import QuantSharePass

    return ([QuantProloguePass(opts)] if bool(opts.fuse_prologue) else []) + [QuantSharePass(opts)]


@hookimpl
def nexfort_mode_flags() -> Sequence[ModeFlag]:
    return [QUANT]


@hookimpl
def nexfort_quantization() -> Any:
    """This package's quantization API (:mod:`nexfort.passes.quant`) for the plugins that quantize pipelines."""
    from nexfort.passes import quant

    return quant


@hookimpl(trylast=True)
def nexfort_transform_module(module: Any, config: Any) -> Optional[str]:
    if not _on(config):
        return None
    from nexfort.passes.quant import config_for, excluding, quantize_

    opts = config.options.get(NAMESPACE)
    kwargs = {"min_features": int(opts.min_features)}
    if str(opts.activation_kernel) != "auto":
        kwargs["activation_kernel"] = str(opts.activation_kernel)
    if not bool(opts.fast_accum):
        kwargs["fast_accum"] = False
    if str(opts.gemm_kernel) != "auto":
        kwargs["gemm_kernel"] = str(opts.gemm_kernel)
    qcfg = config_for(str(opts.type), **kwargs)
    if str(opts.engine) == "torchao":
        from nexfort.passes.quant.torchao_engine import quantize_with_torchao

        n = quantize_with_torchao(module, qcfg, filter_fn=excluding(opts.exclude))
    else:
        n = quantize_(module, qcfg, filter_fn=excluding(opts.exclude))
    try:
        _applied[id(config)] = weakref.ref(config, lambda _, key=id(config): _applied.pop(key, None))
    except TypeError:  # a config that cannot be weakly referenced: the warning below may then show once
        pass
    return f"quantized {n.summary()}"  # "N linear layers in TYPE: weights X MiB -> Y MiB"


@hookimpl
def nexfort_pre_compile(gm: Any, example_inputs: Any, config: Any) -> None:
    ref = _applied.get(id(config))
    if not _on(config) or (ref is not None and ref() is config) or "graph" in _warned:
        return
    _warned.add("graph")
    warnings.warn("nexfort: mode flag 'quant' is on, but torch.compile(backend='nexfort') compiles graphs and "
                  "cannot quantize the module: nothing was quantized. Use nexfort.compilers.nexfort_compile(model, "
                  "mode=...), nexfort.diffusers.compile_pipe(pipe, mode=...), or quantize first: "
                  "nexfort.passes.quant.quantize_(model, Float8DynamicConfig()).", stacklevel=2)
