"""A linear layer over a concatenation, as one GEMM per part (a plugin: the ``cat_linear`` pre_grad pass).

Flux's single blocks (and FLUX.2's, Chroma's, HunyuanVideo's) end with ``proj_out(cat([attention, mlp], dim=-1))``.
Both parts come from extern kernels (the attention kernel, the GELU-epilogue GEMM), which Inductor cannot make write
into the concatenation's buffer: it copies them there (FLUX.1-dev 1024²: 4608 x 15360 bf16, 141 MB read and 141 MB
written per single block, 38 blocks), and the GEMM then reads the copy. Multiplying each part by its columns of the
weight reads the parts where they are. The pattern and its replacement, as plain torch functions:

    def pattern(a, b, w, bias):
        return F.linear(torch.cat([a, b], dim=-1), w, bias)

    def replacement(a, b, w, bias):
        return F.linear(a, w.narrow(1, 0, a.shape[-1]), bias) + F.linear(b, w.narrow(1, a.shape[-1], b.shape[-1]))

The weight's column slices are views (cuBLAS reads them with the full row as leading dimension: no copy), the
first GEMM adds the bias, the sum is a pointwise op Inductor fuses with what follows (Flux: the gate and the
residual). Two to eight parts. Not bit-exact: each part's product is rounded to the output dtype before the sum
(one more rounding of a partial sum, ~2^-9 relative in bf16), within the lossless modes' 1e-2 rel L2.

Recognised: ``F.linear``/``torch._C._nn.linear`` (bias or none) or an ``nn.Linear`` call_module node (torch
2.1-2.4), over ``torch.cat``/``concat``/``concatenate`` along the last dim. Left alone (the guard returns None,
never raises): a concatenation with another user, along another dim, of one part or more than eight, parts of
different dtypes or devices than the weight, a part or weight width that is not a fixed number, a weight that is
not 2-D or whose width is not the parts' total, non-float dtypes, and nodes without Dynamo's fake-tensor metadata.

Off by default until timed on a GPU (predicted: -1.5 to -2.5 ms per FLUX.1-dev 1024² forward in the lossless modes;
under ``quant`` the fp8 ``proj_out`` is handled by the quant prologue instead): ``options={"cat_linear.enabled":
True}``. Tested in tests/passes/test_cat_linear.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass, hookimpl, options_of
from nexfort.passes._fx import CAT_FUNCTIONS, FLOAT_DTYPES, arg, fake, is_op, scalar_constant

NAME = "cat_linear"
LINEAR_FUNCTIONS = tuple({F.linear, torch._C._nn.linear})
MAX_PARTS = 8


@dataclasses.dataclass
class CatLinearOptions:
    """``options.cat_linear.*``."""

    # off until timed on a GPU: True turns the pass on (CUDA and CPU graphs)
    enabled: bool = False


@dataclasses.dataclass
class Match:
    linear: Node
    cat: Node
    parts: List[Node]
    widths: List[int]
    weight: Any  # a graph node, or an nn.Linear call_module's parameter name
    bias: Any  # a graph node, a parameter name, or None


def _module(gm: GraphModule, node: Node) -> Optional[torch.nn.Module]:
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def _linear_operands(gm: GraphModule, node: Node) -> Optional[Tuple[Any, Any, Any]]:
    """``(x, weight, bias)`` of a linear call (weight/bias: graph nodes or a module's parameter names; bias may be
    ``None``), else ``None``."""
    if is_op(node, LINEAR_FUNCTIONS):
        if not 2 <= len(node.args) + len(node.kwargs) <= 3 or set(node.kwargs) - {"input", "weight", "bias"}:
            return None
        x, w, b = arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias")
        ok = isinstance(x, Node) and isinstance(w, Node) and (b is None or isinstance(b, Node))
        return (x, w, b) if ok else None
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        mod = _module(gm, node)
        if type(mod) is torch.nn.Linear and isinstance(node.args[0], Node):
            return node.args[0], f"{node.target}.weight", None if mod.bias is None else f"{node.target}.bias"
    return None


def _static_int(value: Any) -> Optional[int]:
    """``value`` as an int if it is one, or a SymInt whose value is known (torch 2.1's Dynamo keeps a specialized
    input width as a SymInt of a constant); else ``None``."""
    if isinstance(value, torch.SymInt):
        known = getattr(value.node, "maybe_as_int", lambda: None)()
        return None if known is None else int(known)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class CatLinearPass(GraphPass):
    """``linear(cat(parts, -1), W, b)`` -> ``linear(parts[0], W[:, :d0], b) + linear(parts[1], W[:, d0:]) + ...``."""

    name = NAME
    stage = "pre_grad"
    priority = 58  # before linear_gelu (60): independent patterns, a fixed order keeps the graph deterministic

    def apply(self, gm: GraphModule) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            found = self.match(gm, node)
            if found is not None:
                self.replace(gm, found)
                count += 1
        if count:
            gm.graph.lint()
            gm.recompile()
        return count

    def match(self, gm: GraphModule, linear: Node) -> Optional[Match]:
        ops = _linear_operands(gm, linear)
        if ops is None:
            return None
        cat, w, b = ops
        if not is_op(cat, CAT_FUNCTIONS) or not 1 <= len(cat.args) <= 2 or set(cat.kwargs) - {"dim"} or \
                len(cat.users) != 1:
            return None
        parts, dim = cat.args[0], scalar_constant(arg(cat, 1, "dim", 0))
        if not isinstance(parts, (list, tuple)) or not 2 <= len(parts) <= MAX_PARTS or \
                not all(isinstance(p, Node) for p in parts):
            return None
        fakes = [fake(p) for p in parts]
        fw = fake(w) if isinstance(w, Node) else gm.get_parameter(w)
        fb = None if b is None else fake(b) if isinstance(b, Node) else gm.get_parameter(b)
        fy = fake(linear)
        if any(t is None for t in fakes) or fw is None or fy is None or (b is not None and fb is None):
            return None
        rank = fakes[0].dim()
        if rank < 1 or dim not in (-1, rank - 1) or any(t.dim() != rank for t in fakes) or fw.dim() != 2:
            return None
        widths = [_static_int(t.shape[-1]) for t in fakes]
        in_features = _static_int(fw.shape[1])
        if any(v is None or v < 1 for v in widths) or in_features != sum(widths):
            return None
        tensors = fakes + [fw] + ([] if fb is None else [fb])
        if len({t.dtype for t in tensors}) != 1 or fw.dtype not in FLOAT_DTYPES or \
                len({t.device for t in tensors}) != 1:
            return None
        return Match(linear, cat, list(parts), widths, w, b)

    def replace(self, gm: GraphModule, m: Match) -> None:
        graph = gm.graph
        with graph.inserting_before(m.linear):
            w, b = m.weight, m.bias
            if not isinstance(w, Node):  # an nn.Linear call_module node: read its parameters
                w = graph.get_attr(w)
                b = None if b is None else graph.get_attr(b)
            out, offset = None, 0
            for i, (part, width) in enumerate(zip(m.parts, m.widths)):
                cols = graph.call_function(torch.narrow, (w, 1, offset, width))
                offset += width
                y = graph.call_function(F.linear, (part, cols, b if i == 0 else None))
                out = y if out is None else graph.call_function(torch.add, (out, y))
        out.meta["example_value"] = fake(m.linear)
        m.linear.replace_all_uses_with(out)
        graph.erase_node(m.linear)
        graph.erase_node(m.cat)


# ------------------------------------------------------------------------------------------------ plugin
@hookimpl
def nexfort_config_schema():
    return {NAME: CatLinearOptions}


@hookimpl
def nexfort_graph_passes(config):
    options = options_of(config, NAME, CatLinearOptions)
    return [CatLinearPass(options)] if options.enabled else None
