"""The structured schema of nexfort's configuration: dataclasses are the schema and the defaults.

The YAML under ``conf/`` only picks values (``conf/mode/<flag>.yaml``: what each mode flag turns on).
Plugins add their own namespaces under ``options`` through the ``nexfort_config_schema`` hook.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

MEMORY_FORMATS = ("preserve", "channels_last", "contiguous")
ON_ERROR = ("fallback", "raise")


@dataclass
class Flags:
    """What the mode flags turned on (read by core and by the plugins that implement them)."""

    max_optimize: bool = False
    max_autotune: bool = False
    low_precision: bool = False
    cudagraphs: bool = False
    freezing: bool = False
    benchmark: bool = False
    cache_all: bool = False
    jit: bool = False
    disable_runtime_fusion: bool = False
    quant: bool = False


@dataclass
class OverridesOptions:
    """torch's global backend flags, set when a graph is compiled (``None`` leaves a flag as it is)."""

    conv_benchmark: Optional[bool] = None  # torch.backends.cudnn.benchmark
    conv_allow_tf32: Optional[bool] = None  # torch.backends.cudnn.allow_tf32
    matmul_allow_tf32: Optional[bool] = None  # torch.backends.cuda.matmul.allow_tf32
    matmul_allow_fp16_reduction: Optional[bool] = None  # ...allow_fp16_reduced_precision_reduction
    matmul_allow_bf16_reduction: Optional[bool] = None  # ...allow_bf16_reduced_precision_reduction
    matmul_allow_fp16_accumulation: Optional[bool] = None  # ...allow_fp16_accumulation (torch 2.7+)


@dataclass
class CompilerOptions:
    """How the backend itself behaves."""

    on_error: str = "fallback"  # "fallback": run a graph that fails to compile eagerly, with one warning
    warn_once: bool = True


@dataclass
class CacheOptions:
    """nexfort's compiled-artifact cache (implemented by the nexfort-cache plugin)."""

    enabled: bool = False
    dir: Optional[str] = None


CORE_NAMESPACES: Dict[str, Any] = {
    "inductor": None,  # free-form: keys of torch._inductor.config, validated against the running torch
    "triton": None,  # free-form: keys of torch._inductor.config.triton
    "overrides": OverridesOptions,
    "compiler": CompilerOptions,
    "cache": CacheOptions,
}


def build_schema(plugin_namespaces: Mapping[str, type]) -> type:
    """The root dataclass for these plugin namespaces (core's fields first)."""
    opt_fields = [
        ("inductor", Dict[str, Any], field(default_factory=dict)),
        ("triton", Dict[str, Any], field(default_factory=dict)),
        ("overrides", OverridesOptions, field(default_factory=OverridesOptions)),
        ("compiler", CompilerOptions, field(default_factory=CompilerOptions)),
        ("cache", CacheOptions, field(default_factory=CacheOptions)),
    ]
    for ns, cls in plugin_namespaces.items():
        opt_fields.append((ns, cls, field(default_factory=cls)))
    options_cls = dataclasses.make_dataclass("Options", opt_fields)
    return dataclasses.make_dataclass(
        "NexfortConfig",
        [
            ("mode", str, field(default="")),
            ("dynamic", Optional[bool], field(default=None)),
            ("fullgraph", bool, field(default=False)),
            ("memory_format", str, field(default="preserve")),
            ("flags", Flags, field(default_factory=Flags)),
            ("options", options_cls, field(default_factory=options_cls)),
        ],
    )


#: The configuration object handed to plugins: a read-only ``omegaconf.DictConfig`` with the schema above
#: (``config.flags.max_optimize``, ``config.options.inductor``, ``config.options.<plugin namespace>.<knob>``).
NexfortConfig = Any
