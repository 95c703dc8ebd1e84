"""The structured schema of nexfort's configuration: dataclasses are the schema and the defaults.

The YAML of the configuration tree (``nexfort/core/conf``) only picks values (``mode/<flag>.yaml``: what each of
core's mode flags turns on). Plugins add their own namespaces under ``options`` through the
``nexfort_config_schema`` hook and their own flags through ``nexfort_mode_flags``; ``config.flags`` has one switch
per flag (:func:`nexfort.core.flags.flags_schema`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

MEMORY_FORMATS = ("preserve", "channels_last", "contiguous")
ON_ERROR = ("fallback", "raise")


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


CORE_NAMESPACES: Dict[str, Any] = {
    "inductor": None,  # free-form: keys of torch._inductor.config, validated against the running torch
    "triton": None,  # free-form: keys of torch._inductor.config.triton
    "overrides": OverridesOptions,
    "compiler": CompilerOptions,
}


def build_schema(plugin_namespaces: Mapping[str, type], flags: Optional[type] = None) -> type:
    """The root dataclass for these plugin namespaces (core's fields first) and the mode flags' switches
    (``flags``: a dataclass of bools; default: every loaded flag's, :func:`nexfort.core.flags.flags_schema`)."""
    if flags is None:
        from nexfort.core.flags import flags_schema

        flags = flags_schema()
    opt_fields = [
        ("inductor", Dict[str, Any], field(default_factory=dict)),
        ("triton", Dict[str, Any], field(default_factory=dict)),
        ("overrides", OverridesOptions, field(default_factory=OverridesOptions)),
        ("compiler", CompilerOptions, field(default_factory=CompilerOptions)),
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
            ("flags", flags, field(default_factory=flags)),
            ("options", options_cls, field(default_factory=options_cls)),
        ],
    )


#: The configuration object handed to plugins: a read-only ``omegaconf.DictConfig`` with the schema above
#: (``config.flags.max_optimize``, ``config.options.inductor``, ``config.options.<plugin namespace>.<knob>``).
NexfortConfig = Any
