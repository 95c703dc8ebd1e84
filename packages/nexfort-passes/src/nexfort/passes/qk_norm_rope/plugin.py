"""q/k RMSNorm + rotary embedding as one op (a plugin: the ``qk_norm_rope`` pre_grad pass, ``options.qk_norm_rope``).

Rewrites diffusers' Flux attention prologue, on the torch-level graph Dynamo captured, to
``torch.ops.nexfort.rms_norm_rope`` (:mod:`nexfort.passes.qk_norm_rope.kernels`: one Triton pass on CUDA). The
pattern and its replacement, as plain torch functions (``x``: ``(batch, tokens, heads, head_dim)``):

    def pattern(x, w, cos, sin):          # FluxAttnProcessor: attn.norm_q, then apply_rotary_emb(..., sequence_dim=1)
        y = torch.rms_norm(x, (x.shape[-1],), w, eps)      # or torch.cat([rms_norm(x_txt), rms_norm(x_img)], 1)
        real, imag = y.reshape(*y.shape[:-1], -1, 2).unbind(-1)
        rotated = torch.stack([-imag, real], dim=-1).flatten(3)
        return (y.float() * cos + rotated.float() * sin).to(y.dtype)   # cos, sin: (1, tokens, 1, head_dim)

    def replacement(x, w, cos, sin):
        return rms_norm_rope(x, None, w, None, cos, sin, eps, 1)   # the joint blocks: (x_txt, x_img, w_txt, w_img, ...)

The same processor form serves FLUX.2 (``Flux2Transformer2DModel``) and Chroma, rewritten alike (tested on the
zoo's configurations; HiDream, Qwen-Image and Z-Image, with other rotary forms, are left alone). Older diffusers
(< 0.35) transpose q/k to ``(batch, heads, tokens, head_dim)`` first, concatenate along dim 2 and
rotate with ``cos[None, None]``: the same pattern with ``sequence_dim=2``, rewritten the same way.

Left alone (the guard returns None, never raises): the other rotary forms (``use_real_unbind_dim=-2``'s halves, the
complex form, another sign), ``cos``/``sin`` not broadcast along the tokens of either layout (``(1, tokens, 1,
head_dim)`` or ``(1, 1, tokens, head_dim)``), a concatenation along another dim than the tokens, a
norm over more than the head dim, any other norm (LayerNorm, none), a concatenation of other than two normalized
parts along the tokens, parts whose weights are not both present or both absent, any intermediate with a user
outside the pattern, an output cast to another dtype than the input's, inputs that may be written in place, and nodes
without Dynamo's fake-tensor metadata.

Off by default: the op has not yet been timed on a GPU (the rule for a pass that has not shown it pays); turn it on
with ``options={"qk_norm_rope.enabled": True}``. Tested in tests/passes/test_qk_norm_rope.py (rewrites counted, output
against the unrewritten graph and eager, near misses, the kernel in Triton's interpreter and on the GPU).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, List, Optional, Tuple

import torch
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass, hookimpl, options_of
from nexfort.passes._fx import (
    CAT_FUNCTIONS,
    arg,
    binary,
    fake,
    is_op,
    may_be_mutated,
    only_user,
    same_size,
    scalar_constant,
)
from nexfort.passes.qk_norm_rope import kernels

NAME = "qk_norm_rope"
RMS_NORM_FUNCTIONS = tuple({f for f in (getattr(torch, "rms_norm", None),
                                        getattr(torch.nn.functional, "rms_norm", None)) if f is not None})
FLOAT_METHODS = ("float",)


@dataclasses.dataclass
class QkNormRopeOptions:
    """``options.qk_norm_rope.*``."""

    # off until the op is timed on a GPU: True turns the pass on (CUDA and CPU graphs; on the CPU the op runs its
    # torch-ops form, for tests)
    enabled: bool = False


@dataclasses.dataclass
class Match:
    """What a rewrite reads (``b``/``weight_b``: the second part of a joint block's concatenation)."""

    out: Node
    a: Node
    b: Optional[Node]
    weight_a: Any
    weight_b: Any
    cos: Node
    sin: Node
    eps: float
    sequence_dim: int
    nodes: List[Node]  # the pattern's nodes, erased once the output is replaced


def _to_float(node: Any) -> Optional[Node]:
    """``t`` where ``node`` is ``t.float()`` (or ``t.to(torch.float32)``)."""
    if is_op(node, (), FLOAT_METHODS) and len(node.args) == 1 and not node.kwargs:
        return node.args[0] if isinstance(node.args[0], Node) else None
    if is_op(node, (), ("to",)) and len(node.args) == 2 and not node.kwargs and node.args[1] is torch.float32:
        return node.args[0] if isinstance(node.args[0], Node) else None
    return None


def _product(node: Any) -> Optional[Tuple[Node, Node]]:
    """``(t, factor)`` where ``node`` is ``t.float() * factor``."""
    pair = binary(node, (operator.mul, torch.mul), ("mul",))
    if pair is None or not all(isinstance(p, Node) for p in pair):
        return None
    for first, second in (pair, pair[::-1]):
        t = _to_float(first)
        if t is not None and only_user(first) is node:
            return t, second
    return None


def _rotated_source(node: Node) -> Optional[Tuple[Node, List[Node]]]:
    """``(x, nodes)`` where ``node`` is ``stack([-imag, real], -1).flatten(3)`` of ``real, imag =
    x.reshape(..., -1, 2).unbind(-1)`` (diffusers' ``use_real_unbind_dim=-1``)."""
    if not (is_op(node, (torch.flatten,), ("flatten",)) and len(node.args) == 2 and not node.kwargs and
            scalar_constant(node.args[1]) in (3, -2)):
        return None
    stack = node.args[0]
    if not (is_op(stack, (torch.stack,)) and only_user(stack) is node and len(stack.args) >= 1):
        return None
    dim = arg(stack, 1, "dim", 0)
    parts = stack.args[0]
    if scalar_constant(dim) not in (-1, 4) or set(stack.kwargs) - {"dim"} or not isinstance(parts, (list, tuple)) or \
            len(parts) != 2:
        return None
    neg, real = parts
    if not (is_op(neg, (operator.neg, torch.neg), ("neg",)) and len(neg.args) == 1 and only_user(neg) is stack):
        return None
    imag = neg.args[0]
    got = []
    for item, index in ((real, 0), (imag, 1)):
        if not (is_op(item, (operator.getitem,)) and len(item.args) == 2 and item.args[1] == index and
                isinstance(item.args[0], Node) and only_user(item) in (stack, neg)):
            return None
        got.append(item.args[0])
    unbind = got[0]
    if got[1] is not unbind or not (is_op(unbind, (torch.unbind,), ("unbind",)) and len(unbind.users) == 2):
        return None
    if scalar_constant(arg(unbind, 1, "dim", 0)) not in (-1, 4) or len(unbind.args) + len(unbind.kwargs) != 2:
        return None
    reshape = unbind.args[0]
    if not (is_op(reshape, (torch.reshape,), ("reshape", "view")) and only_user(reshape) is unbind and
            isinstance(reshape.args[0], Node)):
        return None
    x, fr = reshape.args[0], fake(reshape)
    fx = fake(x)
    if fx is None or fr is None or fr.dim() != 5 or fx.dim() != 4 or not same_size(fr.shape[-1], 2) or \
            not all(same_size(fr.shape[i], fx.shape[i]) for i in range(3)):
        return None
    return x, [node, stack, neg, real, imag, unbind, reshape]


def _size(v: Any) -> Any:
    """A size as Dynamo recorded it: an int, or the SymInt of a node that computes one (``x.shape[-1]``)."""
    return v.meta.get("example_value", v.meta.get("val")) if isinstance(v, Node) else v


def _rms_norm(gm: GraphModule, node: Any) -> Optional[Tuple[Node, Any, float]]:
    """``(input, weight, eps)`` of an RMSNorm over the last dim (``weight``: a node, a parameter's name, or None)."""
    f = fake(node)
    if f is None:
        return None
    if is_op(node, RMS_NORM_FUNCTIONS) and 2 <= len(node.args) + len(node.kwargs) <= 4 and \
            set(node.kwargs) <= {"normalized_shape", "weight", "eps"}:
        x, shape = node.args[0], arg(node, 1, "normalized_shape")
        weight, eps = arg(node, 2, "weight"), arg(node, 3, "eps")
    elif isinstance(node, Node) and node.op == "call_module" and len(node.args) == 1 and not node.kwargs and \
            hasattr(torch.nn, "RMSNorm"):
        try:
            mod = gm.get_submodule(node.target)
        except AttributeError:
            return None
        if type(mod) is not torch.nn.RMSNorm:
            return None
        x, shape, eps = node.args[0], mod.normalized_shape, mod.eps
        weight = f"{node.target}.weight" if mod.weight is not None else None
    else:
        return None
    fx = fake(x)
    if not isinstance(x, Node) or fx is None or fx.dim() != 4 or not isinstance(shape, (list, tuple)) or \
            len(shape) != 1 or not same_size(_size(shape[0]), fx.shape[-1]) or f.dtype != fx.dtype:
        return None
    if weight is not None and not isinstance(weight, (Node, str)):
        return None
    if eps is None:
        eps = torch.finfo(fx.dtype).eps
    eps = scalar_constant(eps)
    return (x, weight, float(eps)) if eps is not None else None


def _sequence_dim(fy: torch.Tensor, *rotation: torch.Tensor) -> Optional[int]:
    """The tokens' dim of ``fy`` (1: ``(batch, tokens, heads, head_dim)``, 2: ``(batch, heads, tokens, head_dim)``)
    where ``cos``/``sin`` are broadcast along it as diffusers does (``(1, tokens, 1, head_dim)`` /
    ``(1, 1, tokens, head_dim)``); else ``None``."""
    for dim in kernels.SEQUENCE_DIMS:
        other = 3 - dim
        if all(t.dim() == 4 and t.is_floating_point() and t.device == fy.device and same_size(t.shape[0], 1) and
               same_size(t.shape[other], 1) and same_size(t.shape[dim], fy.shape[dim]) and
               same_size(t.shape[3], fy.shape[3]) for t in rotation):
            return dim
    return None


def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    """A fake tensor of ``t``'s shape and dtype, contiguous, as the op returns it (eager's result of the heads-first
    single form keeps its input's transposed strides)."""
    try:
        return t.new_empty(t.shape)
    except Exception:  # noqa: BLE001 - not a fake tensor of a live mode: the recorded one (shape and dtype agree)
        return t


class QkNormRopePass(GraphPass):
    """RMSNorm of q/k heads (or the joint blocks' concatenation of two) + the rotary embedding -> one op."""

    name = NAME
    stage = "pre_grad"
    priority = 55  # after attention (50), before linear_gelu (60): independent patterns, a fixed order

    def apply(self, gm: GraphModule) -> int:
        if not kernels.REGISTERED:
            return 0
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

    def match(self, gm: GraphModule, out: Node) -> Optional[Match]:
        if not (is_op(out, (), ("to",)) and len(out.args) == 2 and not out.kwargs and
                isinstance(out.args[1], torch.dtype)):
            return None
        add = out.args[0]
        terms = binary(add, (operator.add, torch.add), ("add",))
        if terms is None or only_user(add) is not out:
            return None
        first, second = (_product(t) for t in terms)
        if first is None or second is None:
            return None
        y, cos = first
        rotated, sin = second
        rot = _rotated_source(rotated)
        if rot is None or rot[0] is not y or only_user(rotated) is None:
            return None
        fy, fo, fc, fs = fake(y), fake(out), fake(cos), fake(sin)
        if fy is None or fo is None or fc is None or fs is None or fo.dtype != fy.dtype or \
                fy.dtype not in kernels.DTYPES or fy.shape[-1] % 2 or len(y.users) != 2:
            return None
        sequence_dim = _sequence_dim(fy, fc, fs)
        if sequence_dim is None:
            return None
        parts = self._parts(gm, y, sequence_dim)
        if parts is None:
            return None
        (a, wa, eps_a, norm_a), second_part, cat = parts
        b = wb = None
        nodes = [out, add] + list(terms) + [n for n in (terms[0].args + terms[1].args) if n not in (cos, sin)] + \
            rot[1] + ([cat] if cat is not None else []) + [norm_a]
        if second_part is not None:
            b, wb, eps_b, norm_b = second_part
            if eps_b != eps_a or (wa is None) != (wb is None):
                return None
            nodes.append(norm_b)
        for t in (a, b, cos, sin, wa, wb):
            if isinstance(t, Node) and may_be_mutated(t):
                return None
        return Match(out, a, b, wa, wb, cos, sin, eps_a, sequence_dim, nodes)

    def _parts(self, gm: GraphModule, y: Node, sequence_dim: int):
        """``(first, second, cat)``: the normalized part(s) ``y`` is made of (``second``/``cat``: ``None`` for one)."""
        one = _rms_norm(gm, y)
        if one is not None:
            return (*one, y), None, None
        if not (is_op(y, CAT_FUNCTIONS) and 1 <= len(y.args) <= 2 and set(y.kwargs) <= {"dim"}):
            return None
        items, dim = y.args[0], arg(y, 1, "dim", 0)
        if scalar_constant(dim) not in (sequence_dim, sequence_dim - 4) or not isinstance(items, (list, tuple)) or \
                len(items) != 2:
            return None
        got = []
        for item in items:
            norm = _rms_norm(gm, item)
            if norm is None or only_user(item) is not y:
                return None
            got.append((*norm, item))
        return got[0], got[1], y

    def replace(self, gm: GraphModule, m: Match) -> None:
        graph = gm.graph
        with graph.inserting_before(m.out):
            wa, wb = (graph.get_attr(w) if isinstance(w, str) else w for w in (m.weight_a, m.weight_b))
            node = graph.call_function(torch.ops.nexfort.rms_norm_rope.default,
                                       (m.a, m.b, wa, wb, m.cos, m.sin, m.eps, m.sequence_dim))
        node.meta["example_value"] = _contiguous_like(fake(m.out))
        m.out.replace_all_uses_with(node)
        for n in m.nodes:  # the pattern's nodes, outputs first: each has no user left once its readers are gone
            if not n.users:
                graph.erase_node(n)


# ------------------------------------------------------------------------------------------------ plugin
@hookimpl
def nexfort_config_schema():
    return {NAME: QkNormRopeOptions}


@hookimpl
def nexfort_graph_passes(config):
    options = options_of(config, NAME, QkNormRopeOptions)
    return [QkNormRopePass(options)] if options.enabled else None
