"""The fp8 linears' activation quantization takes in the work of its producer (a pre_grad pass of the ``quant`` plugin).

A quantized linear (:class:`nexfort.passes.quant.Float8Linear`) quantizes its input in one pass
(``torch.ops.nexfort.fp8_quantize_rows``). Where that input is GELU over the previous GEMM's output (fc2 of every
feed-forward), or the concatenation Flux's single blocks feed ``proj_out`` (``cat([attention, gelu(mlp)], -1)``),
Inductor writes the GELU (and the concatenation: 126 MB per Flux block at 1024²) to memory for the quantize op to
read back. This pass hands the GELU and the concatenation to the quantize op itself, which computes them in
registers (``torch.ops.nexfort.fp8_quantize_rows_fused``, :mod:`nexfort.passes.quant.kernels`). The pattern and
its replacement, as plain torch functions:

    def pattern(a, u):                   # u: fc1's output before GELU, a: the attention output (or absent)
        x = torch.cat([a, F.gelu(u, approximate="tanh")], -1)
        return fp8_quantize_rows(x.reshape(-1, x.shape[-1]))

    def replacement(a, u):
        return fp8_quantize_rows_fused(a.reshape(-1, a.shape[-1]), u.reshape(-1, u.shape[-1]), "none", "gelu_tanh")

adaLN's ``layer_norm(x) * (1 + scale) + shift`` (every attention's and feed-forward's input in PixArt, SD3 and Flux)
read only by quantize ops (through reshapes/squeezes) goes the same way: each reader quantizes from ``x`` itself
(``torch.ops.nexfort.fp8_quantize_rows_ln_modulate``, the norm's sums in registers), so the normalized activation is
never written. The readers of one norm (Flux's single-block MLP and QKV, two linears reading one activation) share
one op call, placed before the first of them (AOT autograd's CSE does not merge custom-op calls: checked on a Flux
single block on the CPU, 4 calls before and after AOT); other repeated quantize calls of one activation are merged by
:mod:`nexfort.passes.quant.share`.

The int8 dynamic linears' one-pass op (``torch.ops.nexfort.int8_quantize_rows``, with ``activation_kernel="triton"``)
is rewritten the same way, to ``int8_quantize_rows_fused`` and ``int8_quantize_rows_ln_modulate`` (the kernels' int8
form); a norm read by linears of both kinds is left alone.

A part that is an exact cast of a ``torch._scaled_mm`` output (bf16 -> fp16/fp32, fp16 -> fp32: the fp16 models'
cast after the row-scaled GEMM, which produces bf16) is read before the cast: the op computes in float32, so the
cast's pass over memory goes too, and nothing is rounded that the cast would not have kept.

Left alone (the guard returns None, never raises): a quantize op whose input is neither GELU nor a concatenation
(nothing to take in; an identity dropout between is looked through), a GELU of another approximation, a
concatenation of other than two parts or along another dimension, any intermediate with another user (it must be
written anyway), a LayerNorm with weight or bias, a modulation without the ``1 +``, scale/shift not of shape
``(B, 1, D)``/``(1, 1, D)``, a norm whose input, scale or shift may be written in place (the op reads them where
its first reader is), and nodes without Dynamo's metadata. On whenever ``options.quant.fuse_prologue`` is
(the default): it only matches nexfort's own quantize op, which only a quantized module's graph has. Tested in
tests/passes/test_quant_prologue.py (rewrites counted, output against the unfused graph, near misses).
"""

from __future__ import annotations

import operator
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass
from nexfort.passes._fx import (
    CAT_FUNCTIONS,
    arg,
    binary,
    dropout_source,
    fake,
    is_op,
    last_dim,
    may_be_mutated,
    only_user,
    same_size,
    scalar_constant,
)

NAME = "quant_prologue"
GELU_FUNCTIONS = tuple({F.gelu, torch._C._nn.gelu})
LAYER_NORM_FUNCTIONS = tuple({F.layer_norm, torch.layer_norm})
VIEW_METHODS = ("reshape", "view", "squeeze")
# the casts the op may skip: exact (every value of the source dtype is one of the target's, but for fp16's range,
# which float32 arithmetic does not need)
EXACT_CASTS = {(torch.bfloat16, torch.float16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float32, torch.float32)}


#: (quantize op, its fused form, its adaLN form) per quantized type: the fp8 and the int8 linears' ops
FAMILIES = (("fp8_quantize_rows", "fp8_quantize_rows_fused", "fp8_quantize_rows_ln_modulate"),
            ("int8_quantize_rows", "int8_quantize_rows_fused", "int8_quantize_rows_ln_modulate"))


def op_targets(name: str) -> Tuple[Any, ...]:
    """The call targets ``torch.ops.nexfort.<name>`` has in a graph (its packet and its overload; none where this
    torch lacks the op)."""
    ns = getattr(torch.ops, "nexfort", None)
    packet = getattr(ns, name, None) if ns is not None else None
    if packet is None:
        return ()
    return tuple(t for t in (packet, getattr(packet, "default", None)) if t is not None)


def _reshape_source(node: Any) -> Optional[Node]:
    """If ``node`` is ``t.reshape(...)``/``t.view(...)``, ``t``; else ``None``."""
    if is_op(node, (torch.reshape,), ("reshape", "view")) and node.args and isinstance(node.args[0], Node):
        return node.args[0]
    return None


def _gelu_source(node: Any) -> Optional[Node]:
    """The input of a tanh-approximated GELU (a function call, or an ``nn.GELU`` module on torch 2.1-2.4)."""
    if is_op(node, GELU_FUNCTIONS):
        if len(node.args) == 1 and set(node.kwargs) <= {"approximate"} and \
                node.kwargs.get("approximate", "none") == "tanh":
            return node.args[0]
        return None
    if isinstance(node, Node) and node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        try:
            mod = node.graph.owning_module.get_submodule(node.target)
        except AttributeError:
            return None
        if type(mod) is torch.nn.GELU and mod.approximate == "tanh":
            return node.args[0]
    return None


def _before_cast(node: Node) -> Node:
    """``node``, or where ``node`` is ``reshape(cast(g))`` / ``cast(g)`` of a ``torch._scaled_mm`` output ``g`` with
    an exact cast and no other users in between, ``g`` (the op reads the GEMM's own output)."""
    src = _reshape_source(node)
    inner = src if src is not None and only_user(src) is node else node
    if not (inner.op == "call_method" and inner.target == "to" and inner.args and isinstance(inner.args[0], Node)):
        return node
    mm = inner.args[0]
    if inner is not node and only_user(inner) is None:
        return node
    f_in, f_out = fake(mm), fake(inner)
    if mm.op != "call_function" or mm.target is not getattr(torch, "_scaled_mm", None) or f_in is None or \
            f_out is None or (f_in.dtype, f_out.dtype) not in EXACT_CASTS or f_in.device != f_out.device:
        return node
    if len(inner.args) != 2 or inner.kwargs or inner.args[1] != f_out.dtype or only_user(mm) is not inner:
        return node
    return mm


def _one_plus(node: Any) -> Optional[Node]:
    """``s`` where ``node`` is ``1 + s`` or ``s + 1``."""
    ops = binary(node, (operator.add, torch.add), ("add", "__add__", "__radd__"))
    if ops is None:
        return None
    a, b = ops
    if scalar_constant(a) == 1 and isinstance(b, Node):
        return b
    if scalar_constant(b) == 1 and isinstance(a, Node):
        return a
    return None


def _layer_norm(node: Any) -> Optional[Tuple[Node, float]]:
    """``(x, eps)`` of a LayerNorm over the last dimension without weight and bias (adaLN's)."""
    if is_op(node, LAYER_NORM_FUNCTIONS):
        x, shape = arg(node, 0, "input"), arg(node, 1, "normalized_shape")
        weight, bias, eps = arg(node, 2, "weight"), arg(node, 3, "bias"), arg(node, 4, "eps", 1e-5)
        fx_ = fake(x)
        if fx_ is None or weight is not None or bias is not None or scalar_constant(eps) is None or \
                not isinstance(shape, (tuple, list)) or len(shape) != 1 or not same_size(shape[0], fx_.shape[-1]):
            return None
        return x, float(eps)
    if isinstance(node, Node) and node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        try:
            mod = node.graph.owning_module.get_submodule(node.target)
        except AttributeError:
            return None
        if type(mod) is torch.nn.LayerNorm and not mod.elementwise_affine and len(mod.normalized_shape) == 1:
            return node.args[0], float(mod.eps)
    return None


def _ln_modulate(node: Any) -> Optional[Tuple[Node, Node, Node, float, List[Node]]]:
    """``(x, scale, shift, eps, nodes)`` where ``node`` is ``layer_norm(x) * (1 + scale) + shift`` (either operand
    order; ``x`` of shape ``(B, N, D)``, ``scale``/``shift`` ``(B, 1, D)`` or ``(1, 1, D)``); ``nodes``: the
    intermediates, each used only by the next."""
    add = binary(node, (operator.add, torch.add), ("add", "__add__"))
    if add is None:
        return None
    for m, shift in (add, add[::-1]):
        mul = binary(m, (operator.mul, torch.mul), ("mul", "__mul__"))
        if mul is None or only_user(m) is not node or not isinstance(shift, Node):
            continue
        for ln, one_plus in (mul, mul[::-1]):
            found, scale = _layer_norm(ln), _one_plus(one_plus)
            if found is None or scale is None or only_user(ln) is not m or only_user(one_plus) is not m:
                continue
            x, eps = found
            fx_, fs, fh = fake(x), fake(scale), fake(shift)
            if fx_ is None or fs is None or fh is None or fx_.dim() != 3:
                continue
            ok = all(t.dim() == 3 and same_size(t.shape[1], 1) and same_size(t.shape[2], fx_.shape[2]) and
                     (same_size(t.shape[0], fx_.shape[0]) or same_size(t.shape[0], 1)) and t.is_floating_point() and
                     t.device == fx_.device for t in (fs, fh))
            fo = fake(node)  # the modulation broadcasts nothing into x: its rows are x's rows
            ok = ok and fo is not None and fo.dim() == 3 and all(same_size(a, b) for a, b in zip(fo.shape, fx_.shape))
            if ok and fx_.is_floating_point():
                return x, scale, shift, eps, [node, m, ln, one_plus]
    return None


def _quantize_users(node: Node, quantize: Tuple[Any, ...], depth: int = 0) -> Optional[List[Tuple[Node, List[Node]]]]:
    """Every quantize op that reads ``node`` through views (reshape/view/squeeze), with the views between; ``None``
    when ``node`` has any other user (it must then be written anyway)."""
    found = []
    for user in node.users:
        if user.op == "call_function" and user.target in quantize and user.args == (node,) and not user.kwargs:
            found.append((user, []))
        elif depth < 3 and is_op(user, (torch.reshape,), VIEW_METHODS) and user.args[0] is node:
            below = _quantize_users(user, quantize, depth + 1)
            if below is None:
                return None
            found.extend((q, [user] + views) for q, views in below)
        else:
            return None
    return found


class QuantProloguePass(GraphPass):
    """``fp8_quantize_rows(reshape(gelu(u) | cat([a, b])))`` -> ``fp8_quantize_rows_fused(...)`` (see the module;
    the int8 ops likewise)."""

    name = NAME
    stage = "pre_grad"
    priority = 70  # after linear_gelu (60), whose GELUs are fp16 GEMM epilogues and never reach this op

    def apply(self, gm: GraphModule) -> int:
        count = 0
        for family in FAMILIES:  # fp8, then int8 (each norm's readers all of one family)
            quantize, fused, ln = (op_targets(name) for name in family)
            if quantize and fused and ln:
                count += self._apply(gm, quantize, fused[-1], ln[-1])
        return count

    def _apply(self, gm: GraphModule, quantize: Tuple[Any, ...], fused: Any, ln: Any) -> int:
        count = 0
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in quantize:
                found = self.match(node)
                if found is not None:
                    self.replace(gm, node, *found, op=fused)
                    count += 1
        for node in list(gm.graph.nodes):  # adaLN's norm + modulation, read by quantize ops only
            if node.op == "call_function":
                found = _ln_modulate(node)
                if found is not None and any(may_be_mutated(t) for t in found[:3]):
                    found = None  # x, scale or shift written in place: the op would read them later than the norm
                users = _quantize_users(node, quantize) if found is not None else None
                width = fake(found[0]).shape[-1] if users else None
                if users and all(fake(q.args[0]) is not None and same_size(fake(q.args[0]).shape[-1], width)
                                 for q, _ in users):  # each reads rows of the norm's width, not regrouped
                    self.replace_ln(gm, users, *found, op=ln)
                    count += len(users)
        if count:
            gm.graph.lint()
            gm.recompile()
        return count

    def match(self, q: Node) -> Optional[Tuple[List[Tuple[Node, str]], List[Node]]]:
        """``(parts, replaced)``: the parts (node, activation) to quantize side by side, and the nodes between them
        and the op (unused after the rewrite but for other users)."""
        if len(q.args) != 1 or q.kwargs or not isinstance(q.args[0], Node):
            return None
        x = q.args[0]
        fx_ = fake(x)
        if fx_ is None or fx_.dim() != 2:
            return None
        t = _reshape_source(x)
        ft0 = fake(t) if t is not None else None
        if t is None or only_user(t) is not x or ft0 is None or not same_size(ft0.shape[-1], fx_.shape[-1]):
            t = x  # the producer's output is 2-D already (or the reshape regroups the rows' columns: not a match)
        dropped = []
        while True:  # an identity dropout between (eval mode, p=0: diffusers' FeedForward has one before fc2)
            d = dropout_source(t, t.graph.owning_module)
            if not isinstance(d, Node) or only_user(d) is not t:
                break
            dropped.append(t)
            t = d
        ft = fake(t)
        if ft is None or ft.dim() < 2:
            return None
        parts: List[Tuple[Node, str]] = []
        if is_op(t, CAT_FUNCTIONS):
            tensors = arg(t, 0, "tensors")
            dim = arg(t, 1, "dim", 0)
            if not isinstance(tensors, (list, tuple)) or len(tensors) != 2 or not isinstance(dim, int) or \
                    not last_dim(dim, ft.dim()) or len(t.args) + len(t.kwargs) > 2:
                return None
            for p in tensors:
                fp = fake(p)
                if fp is None or fp.dim() != ft.dim():
                    return None
                g = _gelu_source(p)
                parts.append((g, "gelu_tanh") if g is not None and only_user(p) is t else (p, "none"))
        else:
            g = _gelu_source(t)
            if g is None:
                return None  # nothing to take in
            parts.append((g, "gelu_tanh"))
        if t is not x and only_user(t) is not (dropped[-1] if dropped else x):
            return None
        for p, _ in parts:
            fp = fake(p)
            if not isinstance(p, Node) or fp is None or fp.device != fx_.device or not fp.is_floating_point():
                return None
        replaced = [x, t, *dropped] + ([p for p in arg(t, 0, "tensors") if isinstance(p, Node)]
                                       if is_op(t, CAT_FUNCTIONS) else [])
        out = []
        for p, act in parts:
            src = _before_cast(p)
            if src is not p:  # the reshape/cast between the GEMM's output and the part
                chain, n = [], p
                while n is not src:
                    chain.append(n)
                    n = n.args[0]
                replaced += chain
            out.append((src, act))
        return out, replaced

    def replace_ln(self, gm: GraphModule, users: List[Tuple[Node, List[Node]]], x: Node, scale: Node, shift: Node,
                   eps: float, nodes: List[Node], op: Any) -> None:
        """One ``op`` call for every reader (each reads the same rows: the width guard), before the first of them."""
        graph = gm.graph
        dead = list(nodes)
        order = {n: i for i, n in enumerate(graph.nodes)}
        first = min((q for q, _ in users), key=lambda q: order[q])
        with graph.inserting_before(first):
            d, tokens = graph.call_method("size", (x, -1)), graph.call_method("size", (x, 1))
            x2 = graph.call_method("reshape", (x, -1, d))
            sc2, sh2 = graph.call_method("reshape", (scale, -1, d)), graph.call_method("reshape", (shift, -1, d))
            new = graph.call_function(op, (x2, sc2, sh2, tokens, eps))
        new.meta.update({k: v for k, v in first.meta.items() if k in ("example_value", "val", "stack_trace")})
        for q, views in users:
            q.replace_all_uses_with(new)
            graph.erase_node(q)
            dead += views
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(set(dead), key=lambda n: -order.get(n, -1)):
            if n in order and not n.users:
                graph.erase_node(n)

    def replace(self, gm: GraphModule, q: Node, parts: List[Tuple[Node, str]], replaced: List[Node],
                op: Any) -> None:
        graph = gm.graph
        with graph.inserting_before(q):
            flat = []
            for p, _ in parts:
                flat.append(graph.call_method("reshape", (p, -1, graph.call_method("size", (p, -1)))))
            a, b = flat[0], (flat[1] if len(flat) > 1 else None)
            acts = [act for _, act in parts] + ["none"] * (2 - len(parts))
            new = graph.call_function(op, (a, b, acts[0], acts[1]))
        new.meta.update({k: v for k, v in q.meta.items() if k in ("example_value", "val", "stack_trace")})
        q.replace_all_uses_with(new)
        graph.erase_node(q)
        order = {n: i for i, n in enumerate(graph.nodes)}
        for n in sorted(set(replaced), key=lambda n: -order.get(n, -1)):  # users before their inputs
            if n in order and not n.users:
                graph.erase_node(n)
