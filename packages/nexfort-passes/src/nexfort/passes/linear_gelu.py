"""GELU in the GEMM's epilogue: ``gelu(linear(x, W, b))`` -> ``torch._addmm_activation`` (a plugin).

Two forms of one rewrite: on torch 2.13+ (where it is tested), Inductor's pattern matcher on the ATen graph
(:mod:`nexfort.passes.linear_gelu_matcher`, stage ``post_grad_early``); elsewhere, or with
``options={"linear_gelu.implementation": "fx"}``, the hand-written walk of the torch-level graph below (stage
``pre_grad``).

The feed-forward of every diffusion transformer (PixArt, SD3, Flux: diffusers' ``GELU(approximate="tanh")``)
computes ``fc1`` and then GELU over its output, the largest activation of the block (4 x hidden per token).
Inductor calls cuBLAS for the GEMM (bias in its epilogue) and writes a Triton kernel that reads the GEMM's output
back, applies GELU and writes it again. cuBLASLt can apply GELU in the GEMM's epilogue (``GELU_BIAS``), which
``torch._addmm_activation(b, x, W.t(), use_gelu=True)`` exposes and Inductor keeps as one call. The pattern and
its replacement, as plain torch functions:

    def pattern(x, w, b):
        return F.gelu(F.linear(x, w, b), approximate=APPROXIMATE[x.device.type])

    def replacement(x, w, b):
        y = torch._addmm_activation(b, x.reshape(-1, x.shape[-1]), w.t(), use_gelu=True)
        return y.reshape(*x.shape[:-1], w.shape[0])

``_addmm_activation``'s GELU is the tanh approximation on CUDA and the exact (erf) GELU on the CPU, so the pass
matches ``approximate="tanh"`` on CUDA tensors and ``approximate="none"`` on CPU ones: the result is the same
function either way. Measured on an H100 (``benchmarks/results/archive/2026-11-26f-h100-fp8-gelu-regional/``):
PixArt-α 1024² 34.78 -> 33.42 ms, SD3-medium 45.09 -> 42.73 ms, so max-optimize turns it on for CUDA graphs. On the
CPU it is not measured, so there it runs only when asked for (``options={"linear_gelu.enabled": True}``).

Recognised: ``F.linear``/``torch._C._nn.linear`` or an ``nn.Linear`` call_module node (torch
2.1-2.4), then ``F.gelu`` or an ``nn.GELU`` call_module node.

Left alone (the guard returns False, it never raises): a linear without a bias, a linear output used by anything
else, the other GELU approximation for the device, inputs, weight and bias of different dtypes or devices (autocast
regions), a weight that is not 2-D, a 1-D input, other devices, and nodes without Dynamo's fake-tensor metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass, hookimpl, options_of, unknown_message
from nexfort.passes import linear_gelu_matcher
from nexfort.passes._fx import arg, fake, is_op
from nexfort.passes._options import pass_options

NAME = "linear_gelu"
LINEAR_FUNCTIONS = tuple({F.linear, torch._C._nn.linear})
GELU_FUNCTIONS = tuple({F.gelu, torch._C._nn.gelu})
# the GELU that _addmm_activation(use_gelu=True) computes, per device type
APPROXIMATE = linear_gelu_matcher.APPROXIMATE
DTYPES = linear_gelu_matcher.DTYPES


@dataclasses.dataclass
class LinearGeluOptions:
    """``options.linear_gelu.*``."""

    # None: on with the max-optimize flag (CUDA graphs only: not measured on the CPU); True: on, CPU graphs too;
    # False: off
    enabled: Optional[bool] = None
    # "auto": Inductor's pattern matcher on the ATen graph on torch 2.13+ (linear_gelu_matcher.available():
    # nexfort.passes.linear_gelu_matcher), else the hand-written walk of the torch-level graph; "matcher" or
    # "fx": that form (an error where "matcher" is not available)
    implementation: str = "auto"


IMPLEMENTATIONS = ("auto", "matcher", "fx")


def _module(gm: GraphModule, node: Node) -> Optional[torch.nn.Module]:
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def _gelu_input(gm: GraphModule, node: Node) -> Optional[Tuple[Node, str]]:
    """``(input, approximate)`` if ``node`` is a GELU; else ``None``."""
    if is_op(node, GELU_FUNCTIONS):
        if len(node.args) != 1 or set(node.kwargs) - {"approximate"}:
            return None
        approximate = node.kwargs.get("approximate", "none")
        return (node.args[0], approximate) if isinstance(approximate, str) else None
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        mod = _module(gm, node)
        if type(mod) is torch.nn.GELU:
            return node.args[0], mod.approximate
    return None


def _linear_operands(gm: GraphModule, node: Any) -> Optional[Tuple[Node, Any, Any]]:
    """``(x, weight, bias)`` of a linear call (weight/bias: graph nodes, or a module's parameter names)."""
    if is_op(node, LINEAR_FUNCTIONS):
        if len(node.args) + len(node.kwargs) != 3 or set(node.kwargs) - {"weight", "bias"}:
            return None
        x, w, b = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
        return (x, w, b) if all(isinstance(t, Node) for t in (x, w, b)) else None
    if isinstance(node, Node) and node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        mod = _module(gm, node)
        if type(mod) is torch.nn.Linear and mod.bias is not None and isinstance(node.args[0], Node):
            return node.args[0], f"{node.target}.weight", f"{node.target}.bias"
    return None


class LinearGeluPass(GraphPass):
    """``gelu(linear(x, W, b))`` -> ``torch._addmm_activation(b, x2d, W.t(), use_gelu=True)`` (see the module)."""

    name = NAME
    stage = "pre_grad"
    priority = 60  # after attention (50): independent patterns, a fixed order keeps the graph deterministic

    def apply(self, gm: GraphModule) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            found = self.match(gm, node)
            if found is not None:
                self.replace(gm, node, *found)
                count += 1
        if count:
            gm.graph.lint()
            gm.recompile()
        return count

    def match(self, gm: GraphModule, gelu: Node) -> Optional[Tuple[Node, Node, Any, Any]]:
        g = _gelu_input(gm, gelu)
        if g is None:
            return None
        linear, approximate = g
        if not isinstance(linear, Node) or len(linear.users) != 1:
            return None
        ops = _linear_operands(gm, linear)
        if ops is None:
            return None
        x, w, b = ops
        fx, fy, fg = fake(x), fake(linear), fake(gelu)
        if fx is None or fy is None or fg is None or fx.dim() < 2:
            return None
        if isinstance(w, Node):
            fw, fb = fake(w), fake(b)
        else:
            fw, fb = gm.get_parameter(w), gm.get_parameter(b)
        if fw is None or fb is None or fw.dim() != 2 or fb.dim() != 1:
            return None
        if APPROXIMATE.get(fx.device.type) != approximate:
            return None
        if fx.device.type != "cuda" and not (self.options is not None and self.options.enabled is True):
            return None  # measured to pay on CUDA only: elsewhere on request
        dtypes = {t.dtype for t in (fx, fw, fb, fy, fg)}
        devices = {t.device for t in (fx, fw, fb, fy, fg)}
        if len(dtypes) != 1 or dtypes.pop() not in DTYPES or len(devices) != 1:
            return None
        return linear, x, w, b

    def replace(self, gm: GraphModule, gelu: Node, linear: Node, x: Node, w: Any, b: Any) -> None:
        graph = gm.graph
        with graph.inserting_before(gelu):
            if not isinstance(w, Node):  # an nn.Linear call_module node: read its parameters
                w, b = graph.get_attr(w), graph.get_attr(b)
            k = graph.call_method("size", (x, -1))
            x2 = graph.call_method("reshape", (x, -1, k))
            wt = graph.call_method("t", (w,))
            y = graph.call_function(torch._addmm_activation, (b, x2, wt), {"use_gelu": True})
            lead = [graph.call_method("size", (x, i)) for i in range(fake(x).dim() - 1)]
            out = graph.call_method("reshape", (y, *lead, graph.call_method("size", (wt, 1))))
        out.meta["example_value"] = fake(gelu)
        gelu.replace_all_uses_with(out)
        graph.erase_node(gelu)
        graph.erase_node(linear)


# ------------------------------------------------------------------------------------------------ plugin
@hookimpl
def nexfort_config_schema():
    return {NAME: LinearGeluOptions}


@hookimpl
def nexfort_validate_config(config):
    options = options_of(config, NAME, LinearGeluOptions)
    if str(options.implementation) not in IMPLEMENTATIONS:
        return [unknown_message("linear_gelu.implementation", str(options.implementation), list(IMPLEMENTATIONS))]
    if options.implementation == "matcher" and not linear_gelu_matcher.available():
        return [f"Option 'linear_gelu.implementation' is 'matcher', which needs Inductor's pattern matcher and its "
                f"post_grad_custom_pre_pass hook, used from torch 2.13; this is torch {torch.__version__}: use "
                f"'auto' or 'fx'."]
    return None


@hookimpl
def nexfort_graph_passes(config):
    options, on = pass_options(config, NAME, LinearGeluOptions)
    if not on:
        return None
    if options.implementation == "matcher" or (options.implementation == "auto" and linear_gelu_matcher.available()):
        return [linear_gelu_matcher.LinearGeluMatcherPass(options)]
    return [LinearGeluPass(options)]


@hookimpl
def nexfort_claims_feature(feature, config):
    return True if feature == "max_optimize" else None
