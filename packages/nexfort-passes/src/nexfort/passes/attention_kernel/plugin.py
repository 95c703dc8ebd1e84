"""The ``attention_kernel`` plugin (entry point ``attention_kernel``): SDPA calls -> ``torch.ops.nexfort.attention``.

A pre_grad pass. The pattern and its replacement, as plain torch functions:

    def pattern(q, k, v, scale):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)   # or query=q, key=k, value=v

    def replacement(q, k, v, scale):
        return torch.ops.nexfort.attention(q, k, v, scale)   # SDPA or a faster kernel, chosen per shape

The op (:mod:`.kernels`) times SDPA and each installed kernel on the first call of each shape and keeps the
fastest whose output matches SDPA's, so a rewrite never picks a slower or a wrong kernel, and a shape where SDPA
wins costs one dictionary lookup per call. The pass only rewrites where a kernel beyond SDPA is installed for the
graph's device and dtype (FlashAttention-4 on Hopper/Blackwell: ``pip install --pre "flash-attn-4"``), so
without one the graph is unchanged.

Options (``options.attention_kernel.*``, :class:`AttentionKernelOptions`): ``enabled`` (None: on with
max-optimize), ``kernels`` (the candidates; None: all registered), ``min_speedup`` and ``max_rel_l2`` (what a
kernel must beat SDPA by, and how close its output must be).

An additive ``attn_mask`` (PixArt's cross-attention padding mask, ``(B, H, 1, keys)``) is rewritten too, into
``torch.ops.nexfort.attention(q, k, v, scale, attn_mask=mask)``, where a kernel that takes masks is installed and
may fit the call (:mod:`.short_kv`: up to 128 keys, a floating mask broadcast over the queries); any other mask
stays with SDPA.

Left alone (the guard returns False, it never raises): a mask no installed kernel takes (boolean, per query, or
with no such kernel for the device), ``is_causal``, a non-zero or symbolic ``dropout_p``, ``enable_gqa``, a
symbolic ``scale``, inputs that are not 4-D or need gradients, mixed dtypes or devices, dtypes no installed
kernel takes, and nodes without Dynamo's fake-tensor metadata.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass, NexfortConfigError, hookimpl, shown, unknown_message
from nexfort.passes._fx import arg, fake, is_op
from nexfort.passes._options import pass_options
from nexfort.passes.attention_kernel import kernels as K

NAME = "attention_kernel"
SDPA_FUNCTIONS = tuple({F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention})
# positional order of F.scaled_dot_product_attention after (q, k, v), and the values the pass accepts
_ARGS = (("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None), ("enable_gqa", False))


@dataclasses.dataclass
class AttentionKernelOptions:
    """``options.attention_kernel.*``."""

    # None: on with the max-optimize flag (it rewrites only where a kernel beyond SDPA is installed); True/False
    enabled: Optional[bool] = None
    # the candidates besides SDPA (registered names, e.g. ["fa4"]); None: every registered kernel
    kernels: Optional[List[str]] = None
    # a kernel replaces SDPA for a shape only when SDPA's time / its time is at least this
    min_speedup: float = 1.03
    # ... and its output's relative L2 error against SDPA's is at most this
    max_rel_l2: float = 1e-2


def _problems(options: AttentionKernelOptions) -> List[str]:
    """What is wrong with these options whatever the machine: a threshold that is not a positive / non-negative
    number (NaN included), an unknown kernel name."""
    problems = []
    if not (isinstance(options.min_speedup, (int, float)) and options.min_speedup > 0):  # (NaN > 0 is False)
        problems.append(f"Option 'attention_kernel.min_speedup' must be a number > 0 (SDPA's time / the kernel's "
                        f"that a kernel must reach), got {shown(options.min_speedup)}.")
    if not (isinstance(options.max_rel_l2, (int, float)) and options.max_rel_l2 >= 0):
        problems.append(f"Option 'attention_kernel.max_rel_l2' must be a number >= 0 (the largest relative L2 error "
                        f"against SDPA's output), got {shown(options.max_rel_l2)}.")
    registered = K.registered_kernels()
    for name in options.kernels or ():
        if name not in registered:
            problems.append(unknown_message("attention kernel", str(name), registered,
                                            hint="(options.attention_kernel.kernels)"))
    return problems


def _check(options: AttentionKernelOptions) -> Optional[Tuple[str, ...]]:
    """The candidate names, validated: invalid -> NexfortConfigError; named but not installed -> ImportError."""
    problems = _problems(options)
    if problems:
        raise NexfortConfigError(problems[0] if len(problems) == 1 else "; ".join(problems))
    if options.kernels is None:
        return None
    registered = K.registered_kernels()
    for name in options.kernels:
        kernel = registered[name]
        if not (kernel.available("cuda") or kernel.available("cpu")):
            raise ImportError(f"options.attention_kernel.kernels names {name!r}, which is not installed or has no "
                              f"supported GPU here; install it with: {kernel.install}")
    return tuple(options.kernels)


class AttentionKernelPass(GraphPass):
    """``F.scaled_dot_product_attention(q, k, v, scale=s)`` -> ``torch.ops.nexfort.attention(q, k, v, s)``."""

    name = NAME
    stage = "pre_grad"
    priority = 55  # after attention (50), which turns decomposed attention into SDPA calls this pass then sees

    def __init__(self, options: Optional[AttentionKernelOptions] = None) -> None:
        super().__init__(options or AttentionKernelOptions())
        self.names = _check(self.options)

    def apply(self, gm: GraphModule) -> int:
        count = 0
        self._report(gm)
        for node in list(gm.graph.nodes):
            found = self.match(node)
            if found is not None:
                self.replace(gm, node, *found)
                count += 1
        if count:
            gm.graph.lint()
            gm.recompile()
        return count

    @staticmethod
    def _report(gm: GraphModule) -> None:
        """Say once per process and GPU which attention kernels were found (:func:`.kernels.report_kernels`), on
        the first graph with an SDPA call on that GPU."""
        for node in gm.graph.nodes:
            if is_op(node, SDPA_FUNCTIONS) and (node.args or "query" in node.kwargs):
                fq = fake(arg(node, 0, "query"))
                if fq is not None and fq.device.type == "cuda":
                    K.report_kernels(fq.device)
                    return

    def match(self, node: Node) -> Optional[Tuple[Node, Node, Node, Optional[float], Optional[Node]]]:
        # q, k, v positional or by keyword (diffusers' attention dispatcher, Flux/Wan/Qwen-Image: query=, key=, ...)
        if not is_op(node, SDPA_FUNCTIONS) or len(node.args) > 3 + len(_ARGS):
            return None
        operands = ("query", "key", "value")
        if set(node.kwargs) - {name for name, _ in _ARGS} - set(operands[len(node.args):]):
            return None
        q, k, v = (arg(node, i, name) for i, name in enumerate(operands))
        if not all(isinstance(t, Node) for t in (q, k, v)):
            return None
        values = {name: arg(node, 3 + i, name, default) for i, (name, default) in enumerate(_ARGS)}
        mask = values["attn_mask"]
        if mask is not None and not isinstance(mask, Node):
            return None
        if values["is_causal"] is not False or values["enable_gqa"] is not False:
            return None
        dropout, scale = values["dropout_p"], values["scale"]
        if type(dropout) not in (int, float) or dropout != 0:
            return None
        if scale is not None and type(scale) not in (int, float):
            return None  # a SymFloat or a graph value: keep SDPA
        fq, fk, fv, fo = fake(q), fake(k), fake(v), fake(node)
        if any(t is None for t in (fq, fk, fv, fo)):
            return None
        if any(t.dim() != 4 or t.requires_grad for t in (fq, fk, fv)):
            return None
        if len({t.dtype for t in (fq, fk, fv)}) != 1 or len({t.device for t in (fq, fk, fv)}) != 1:
            return None
        fm = None
        if mask is not None:
            fm = fake(mask)
            if fm is None or fm.requires_grad or fm.device != fq.device or not fm.is_floating_point():
                return None
        if not self._kernel_for(fq, fk, fv, fm):
            return None
        return q, k, v, None if scale is None else float(scale), mask

    def _kernel_for(self, fq, fk, fv, fm=None) -> bool:
        """An installed kernel beyond SDPA takes this device and dtype (and, with a mask, masks) and may fit the
        call by its compile-time check (else a rewrite could only cost time)."""
        registered = K.registered_kernels()
        for name in K.available_kernels(fq.device.type, self.names):
            kernel = registered[name]
            if fq.dtype not in kernel.dtypes or (fm is not None and not kernel.takes_mask):
                continue
            try:
                if kernel.fits is None or kernel.fits(fq, fk, fv, fm):
                    return True
            except Exception:  # noqa: BLE001 - a check that cannot read these sizes: the op checks at run time
                return True
        return False

    def replace(self, gm: GraphModule, node: Node, q: Node, k: Node, v: Node, scale: Optional[float],
                mask: Optional[Node] = None) -> None:
        graph = gm.graph
        kwargs = {"scale": scale, "kernels": K.ALL if self.names is None else ",".join(self.names),
                  "min_speedup": float(self.options.min_speedup), "max_rel_l2": float(self.options.max_rel_l2)}
        if mask is not None:
            kwargs["attn_mask"] = mask  # only then: a mask-less call is the graph it was before masks were read
        with graph.inserting_before(node):
            out = graph.call_function(K.op(), (q, k, v), kwargs)
        out.meta.update(node.meta)
        fq = fake(q)
        mode = getattr(fq, "fake_mode", None)
        if mode is not None:
            with mode:
                out.meta["example_value"] = K.attention_meta(fq, fake(k), fake(v), scale)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


# ------------------------------------------------------------------------------------------------ plugin
# the op exists as soon as the plugin is loaded: code compiled earlier (a warm cache) may call it before any pass runs
K.op()


@hookimpl
def nexfort_config_schema():
    return {NAME: AttentionKernelOptions}


@hookimpl
def nexfort_validate_config(config):
    """The thresholds' ranges and the kernels' names, when the configuration is resolved (their types are checked by
    core against :class:`AttentionKernelOptions`). Whether a named kernel is installed and has a GPU is asked when
    the pass is made, on the machine that compiles."""
    options, _ = pass_options(config, NAME, AttentionKernelOptions)
    return _problems(options) or None


@hookimpl
def nexfort_graph_passes(config):
    options, on = pass_options(config, NAME, AttentionKernelOptions)
    if not on:
        return None
    if options.kernels is not None:
        options = dataclasses.replace(options, kernels=list(options.kernels))
    K.remember_choices_with(config)  # the choices per shape survive a warm start (the config's fact store)
    return [AttentionKernelPass(options)]


@hookimpl
def nexfort_claims_feature(feature, config):
    return True if feature == "max_optimize" else None
