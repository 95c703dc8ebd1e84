"""Quantize calls of one activation share one result (a pre_grad pass of the ``quant`` plugin, ``quant_share``).

Every quantized linear quantizes its own input (:class:`nexfort.passes.quant.Float8Linear`, ``Int8DynamicLinear``
with ``activation_kernel="triton"``), so linears that read one activation quantize it once each: Flux's single
blocks (``proj_mlp`` and the fused QKV read one normalized activation), PixArt's 28 cross-attention K/V projections
(one text embedding, block after block). AOT autograd's CSE does not merge custom-op calls (checked on a Flux single
block on the CPU), so this pass does: calls of the same nexfort quantize op with the same arguments, an input
compared up to a ``reshape(-1, D)`` of one tensor (the same rows), become the first of them. The ops are pure (their
outputs depend on their arguments alone), so one result serves every reader. Left alone: calls on other rows of a
tensor (``reshape(-1, 2 * D)``: other rows), on other tensors, on a tensor that may be written in place
(``add_``, ``+=``, ``x[i] = ...``: the two reads may differ), with keyword arguments or unhashable ones. The pattern
and its replacement:

    def pattern(x):                       # two readers of x, each quantizing it
        return fp8_quantize_rows(x.reshape(-1, D)), fp8_quantize_rows(x.reshape(-1, D))

    def replacement(x):
        q = fp8_quantize_rows(x.reshape(-1, D))
        return q, q

Tested in tests/passes/test_quant_prologue.py (merged calls counted, output against the unmerged graph, near misses).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass
from nexfort.passes._fx import fake, is_op, may_be_mutated, same_size, scalar_constant
from nexfort.passes.quant.prologue import FAMILIES, op_targets

NAME = "quant_share"
#: nexfort's quantize ops whose repeated calls are merged: every op of the prologue's families
OP_NAMES = tuple(name for family in FAMILIES for name in family)


def _ops() -> Tuple[Any, ...]:
    return tuple(t for name in OP_NAMES for t in op_targets(name))


def _rows_of(node: Any) -> Any:
    """What ``node`` quantizes row by row: ``t`` where ``node`` is ``t.reshape(-1, D)``/``view`` with ``D`` ``t``'s
    last size (the same rows); else ``node`` itself."""
    if not (is_op(node, (torch.reshape,), ("reshape", "view")) and len(node.args) == 3 and not node.kwargs):
        return node
    src = node.args[0]
    fs, fn = fake(src), fake(node)
    if not isinstance(src, Node) or scalar_constant(node.args[1]) != -1 or fs is None or fn is None or \
            fn.dim() != 2 or fs.dim() < 1 or not same_size(fs.shape[-1], fn.shape[-1]):
        return node
    return src


def _key(node: Node) -> Any:
    """Calls with equal keys compute the same result (``None``: not compared)."""
    if node.kwargs:
        return None
    key = (node.target, tuple(_rows_of(a) if isinstance(a, Node) else a for a in node.args))
    if any(isinstance(a, Node) and may_be_mutated(a) for a in key[1]):
        return None  # written in place somewhere: the two reads may see different values
    try:
        hash(key)
    except TypeError:
        return None
    return key


def share_quantize_calls(gm: GraphModule, ops: Tuple[Any, ...]) -> int:
    """Merge the calls of ``ops`` in ``gm`` that quantize the same rows into the first of them (which comes before
    the others in the graph, its inputs too); return how many calls went."""
    seen: Dict[Any, Node] = {}
    merged = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        key = _key(node)
        if key is None:
            continue
        first = seen.setdefault(key, node)
        if first is node:
            continue
        inputs = [a for a in node.args if isinstance(a, Node)]
        node.replace_all_uses_with(first)
        gm.graph.erase_node(node)
        for a in inputs:  # the merged call's own reshape, unused now
            if not a.users and a.op == "call_method" and a.target in ("reshape", "view"):
                gm.graph.erase_node(a)
        merged += 1
    return merged


class QuantSharePass(GraphPass):
    """Repeated quantize calls of one activation -> one call (see the module)."""

    name = NAME
    stage = "pre_grad"
    priority = 75  # after quant_prologue (70): the fused forms it makes are merged too

    def apply(self, gm: GraphModule) -> int:
        ops = _ops()
        count = share_quantize_calls(gm, ops) if ops else 0
        if count:
            gm.graph.lint()
            gm.recompile()
        return count
