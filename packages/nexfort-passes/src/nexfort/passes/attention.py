"""Decomposed attention -> ``torch.nn.functional.scaled_dot_product_attention`` (a pre_grad pass and a plugin).

Many diffusion models still spell attention out (diffusers' legacy ``AttnProcessor``, older UNets, custom
blocks), which costs a materialised ``L x S`` score matrix and several kernels; SDPA runs it as one fused
(flash / memory-efficient) kernel. The pattern and its replacement, as plain torch functions:

    def pattern(q, k, v, mask, scale):          # any of the spellings listed below
        return torch.softmax(q @ k.transpose(-2, -1) * scale + mask, dim=-1) @ v

    def replacement(q, k, v, mask, scale):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

Recognised on the torch-level graph Dynamo captures:

- ``q @ kT``: ``@``, ``torch.matmul``, ``torch.bmm`` and their method forms; ``kT`` may be any tensor (a
  ``transpose``/``permute`` of the last two dims is undone, anything else gets a ``transpose(-2, -1)``);
  or ``torch.einsum("b i d, b j d -> b i j", q, k)`` (latent-diffusion's ``CrossAttention``; ``...`` batch too),
  and ``einsum("b i j, b j d -> b i d", probs, v)`` for ``probs @ v``;
- ``torch.baddbmm(mask_or_empty, q, kT, beta=0 or 1, alpha=scale)`` (diffusers' ``get_attention_scores``);
- the scale: ``* c``, ``c *``, ``/ c`` (or baddbmm's ``alpha``) with ``c`` a Python number (SDPA's ``scale=``;
  none: ``scale=1.0``) or a symbolic scalar of the graph (``dynamic=True`` makes float module attributes such
  as diffusers' ``attn.scale`` SymFloats: it is folded into q, ``(q * c) @ kT``); then an additive mask
  ``+ mask`` of q's dtype that broadcasts into the scores without enlarging them; in-place forms too;
- ``softmax(dim=-1)`` in its function, ``F.softmax`` and method forms, optionally inside an upcast
  (``.float()``/``.to(dtype)``/``.type_as(q)`` or ``softmax(dtype=torch.float32)``: fp16/bf16 scores may pass
  through float32, nothing else; ``.contiguous()`` too), and dropouts that are the identity (``p == 0`` or eval)
  before ``@ v``. Rank-3 (``(B*H, L, E)``) inputs get a leading batch dim so that the fused 4-D kernels apply.

Left alone (the guard returns False, it never raises): a softmax over another dim, an op between the
pieces that changes the result (a scale applied after the mask, a tensor (not scalar) scale, ``beta``
other than 0/1), an intermediate result used elsewhere (returned attention probabilities), mixed dtypes
(e.g. diffusers' ``upcast_attention``: float32 q/k with a half v), ranks below 3, batch dims that only
broadcast, a live dropout, masks applied with ``masked_fill`` (fully masked rows differ), autocast regions
(the fake dtypes disagree), and every node without Dynamo's fake-tensor metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from nexfort.core.api import GraphPass, hookimpl
from nexfort.passes import _fx
from nexfort.passes._fx import arg, fake, is_op
from nexfort.passes._options import pass_options

NAME = "attention"

SOFTMAX_FUNCTIONS = (torch.softmax, F.softmax, torch.Tensor.softmax)
ADD = ((operator.add, torch.add, operator.iadd), ("add", "add_"))
MUL = ((operator.mul, torch.mul, operator.imul), ("mul", "mul_"))
DIV = ((operator.truediv, torch.div, operator.itruediv), ("div", "div_"))
INPLACE = (operator.iadd, operator.imul, operator.itruediv, "add_", "mul_", "div_")
BADDBMM = ((torch.baddbmm,), ("baddbmm",))
EMPTY_LIKE = (torch.empty, torch.zeros, torch.ones, torch.empty_like, torch.zeros_like)


@dataclasses.dataclass
class AttentionOptions:
    """``options.attention.*``."""

    enabled: Optional[bool] = None  # None: on with the max-optimize flag; True/False: on/off regardless


@dataclasses.dataclass
class _Scores:
    """What the walk back from the softmax found: ``softmax(q @ kT * scale + mask)``."""

    q: Node
    kt: Optional[Node]  # the right operand of q @ kT
    k: Optional[Node] = None  # or the key itself (einsum "b i d, b j d -> b i j")
    scale: float = 1.0
    scale_nodes: List[Tuple[Node, bool]] = dataclasses.field(default_factory=list)  # (symbolic scalar, divides)
    mask: Optional[Node] = None
    nodes: List[Node] = dataclasses.field(default_factory=list)  # from the matmul up to the softmax input
    dead_input: Optional[Node] = None  # baddbmm's ignored input (beta=0)


@functools.lru_cache(maxsize=None)
def sdpa_takes_scale() -> bool:
    """Lazy one-time setup: the running torch's SDPA has ``scale=`` (2.1+; feature-detected, not versioned)."""
    try:
        x = torch.ones(1, 1, 2, 4)
        F.scaled_dot_product_attention(x, x, x, scale=0.5)
        return True
    except (TypeError, RuntimeError, AttributeError):
        return False


def _walk_scores(node: Any, have_mask: bool = False, have_scale: bool = False) -> Optional[_Scores]:
    """Walk back from the softmax's input through casts, ``+ mask``, ``* scale`` to ``q @ kT``.

    Every node on the way must have this chain as its only user; the mask must be added after the scale.
    """
    if not isinstance(node, Node) or len(node.users) != 1:
        return None
    src = _fx.cast_source(node, _fx.FLOAT_DTYPES)
    if src is not None:
        found = _walk_scores(src, have_mask, have_scale)
    elif is_op(node, *ADD) and not have_mask and not have_scale:
        found = None
        if len(node.args) == 2 and not node.kwargs:
            for s, m in _operand_orders(node):
                found = _walk_scores(s, True, False) if isinstance(m, Node) else None
                if found is not None:
                    found.mask = m
                    break
    elif is_op(node, *MUL) or is_op(node, *DIV):
        found = None
        div = is_op(node, *DIV)
        if len(node.args) == 2 and not node.kwargs and not have_scale:
            for s, c in _operand_orders(node, commutative=not div):
                const = _fx.scalar_constant(c)
                symbolic = const is None and _fx.is_scalar_node(c)
                if not isinstance(s, Node) or not (symbolic or const):
                    continue
                found = _walk_scores(s, have_mask, True)
                if found is not None and symbolic:
                    found.scale_nodes.append((c, div))
                elif found is not None:
                    found.scale = found.scale / const if div else found.scale * const
                if found is not None:
                    break
    elif is_op(node, *BADDBMM):
        found = _baddbmm(node, have_mask, have_scale)
    else:
        ops = _fx.matmul_operands(node)
        if ops is None:
            found = None
        else:  # einsum "b i d, b j d -> b i j" names the key itself
            found = _Scores(q=ops[0], kt=None, k=ops[1]) if ops[2] else _Scores(q=ops[0], kt=ops[1])
    if found is not None:
        found.nodes.append(node)
    return found


def _softmax(gm: GraphModule, node: Node) -> Optional[tuple]:
    """``(input, dim, dtype)`` of a softmax: function, method, or an ``nn.Softmax`` call_module (torch 2.1-2.4)."""
    if node.op == "call_module":
        try:
            mod = gm.get_submodule(node.target)
        except AttributeError:
            return None
        if type(mod) is not torch.nn.Softmax or len(node.args) != 1 or node.kwargs:
            return None
        return node.args[0], mod.dim, None
    if not is_op(node, SOFTMAX_FUNCTIONS, ("softmax",)):
        return None
    max_args = 4 if node.target is F.softmax else 3  # F.softmax(input, dim, _stacklevel, dtype)
    if set(node.kwargs) - {"input", "dim", "dtype", "_stacklevel"} or len(node.args) > max_args:
        return None
    dtype = node.kwargs.get("dtype", node.args[max_args - 1] if len(node.args) == max_args else None)
    return arg(node, 0, "input"), arg(node, 1, "dim"), dtype


def _operand_orders(node: Node, commutative: bool = True) -> list:
    """``(chain, other)`` candidates of a binary op; an in-place op (``s += m``) must mutate the chain."""
    a, b = node.args
    if commutative and node.target not in INPLACE:
        return [(a, b), (b, a)]
    return [(a, b)]


def _baddbmm(node: Node, have_mask: bool, have_scale: bool) -> Optional[_Scores]:
    """``baddbmm(input, q, kT, beta=b, alpha=a)`` = ``b * input + a * (q @ kT)``: b=0 (input ignored) or b=1
    (input is the mask, so no scale or mask may follow)."""
    if len(node.args) != 3 or set(node.kwargs) - {"beta", "alpha"}:
        return None
    inp, q, kt = node.args
    beta, alpha = _fx.scalar_constant(node.kwargs.get("beta", 1)), node.kwargs.get("alpha", 1)
    symbolic = _fx.scalar_constant(alpha) is None and _fx.is_scalar_node(alpha)
    if _fx.scalar_constant(alpha) is None and not symbolic:
        return None
    if not all(isinstance(n, Node) for n in (inp, q, kt)) or beta not in (0.0, 1.0):
        return None
    if beta == 1.0 and (have_mask or have_scale):
        return None
    found = _Scores(q=q, kt=kt, mask=inp if beta == 1.0 else None, dead_input=None if beta == 1.0 else inp)
    if symbolic:  # dynamic=True: Dynamo turns float module attributes (diffusers' attn.scale) into SymFloats
        found.scale_nodes.append((alpha, False))
    else:
        found.scale = float(alpha)
    return found


class AttentionPass(GraphPass):
    """Rewrite decomposed attention into ``scaled_dot_product_attention`` (see the module docstring)."""

    name = NAME
    stage = "pre_grad"
    priority = 50  # before passes that might fuse the projections around attention

    def source_files(self):
        return sorted(set(super().source_files()) | {os.path.abspath(_fx.__file__)})

    def apply(self, gm: GraphModule) -> int:
        if not sdpa_takes_scale():
            return 0
        count = 0
        for node in [n for n in gm.graph.nodes if _softmax(gm, n) is not None]:
            match = self.match(gm, node)  # matches never overlap: each holds one softmax, single-use chains
            if match is not None:
                self.replace(gm, *match)
                count += 1
        return count

    # ------------------------------------------------------------------------------------------ guard
    def match(self, gm: GraphModule, softmax: Node) -> Optional[tuple]:
        """``(scores, softmax, post, final, v)`` when ``softmax`` sits in an attention we can prove equal to
        SDPA; ``None`` (leave it alone) otherwise."""
        inp, dim, sm_dtype = _softmax(gm, softmax)
        t = fake(inp)
        if t is None or not _fx.last_dim(dim, t.dim()):
            return None
        # forward: identity dropouts and casts, then "probs @ v"
        post: List[Node] = []
        cur = softmax
        while True:
            user = _fx.only_user(cur)
            if user is None:
                return None
            if _fx.cast_source(user, _fx.FLOAT_DTYPES) is cur or _fx.dropout_source(user, gm) is cur:
                post.append(user)
                cur = user
                continue
            ops = _fx.matmul_operands(user)
            if ops is None or ops[0] is not cur or ops[1] is cur or ops[2]:
                return None
            final, v = user, ops[1]
            break
        scores = _walk_scores(inp)
        if scores is None or not self._check(scores, softmax, post, final, v, sm_dtype):
            return None
        return scores, softmax, post, final, v

    def _check(self, s: _Scores, softmax: Node, post: List[Node], final: Node, v: Node, sm_dtype: Any) -> bool:
        key = s.k if s.k is not None else s.kt
        fq, fk, fv, fout, fscores = fake(s.q), fake(key), fake(v), fake(final), fake(s.nodes[0])
        if any(x is None for x in (fq, fk, fv, fout, fscores)):
            return False
        dtype, rank = fq.dtype, fq.dim()
        if dtype not in _fx.FLOAT_DTYPES or not (fk.dtype == fv.dtype == fout.dtype == dtype):
            return False
        if rank < 3 or fk.dim() != rank or fv.dim() != rank or fscores.dim() != rank:
            return False
        batch = fq.shape[:-2]
        if not (_fx.same_shape(fk.shape[:-2], batch) and _fx.same_shape(fv.shape[:-2], batch)):
            return False
        if not (fq.device == fk.device == fv.device):
            return False
        # fp16/bf16 scores may be upcast to float32 for the softmax; no other dtype may appear on the way
        allowed = {dtype, torch.float32} if dtype in (torch.float16, torch.bfloat16) else {dtype}
        chain = s.nodes + [softmax] + post
        for n in chain:
            fn = fake(n)
            if fn is None or fn.dtype not in allowed or not _fx.same_shape(fn.shape, fscores.shape):
                return False
        if sm_dtype is not None and sm_dtype not in allowed:
            return False
        inner = set(chain) | {final}
        if any(x in inner for x in (s.q, key, v, s.mask)):
            return False
        if s.mask is not None:
            fm = fake(s.mask)
            if fm is None or fm.dtype != dtype or fm.device != fq.device:
                return False
            if not _fx.broadcasts_into(fm.shape, fscores.shape):
                return False
        return True

    # ---------------------------------------------------------------------------------------- rewrite
    def replace(self, gm: GraphModule, s: _Scores, softmax: Node, post: List[Node], final: Node, v: Node) -> None:
        graph = gm.graph
        rank = fake(s.q).dim()
        mask = s.mask
        with graph.inserting_before(final):
            k = s.k if s.k is not None else _fx.is_last_two_transpose(s.kt)
            if k is None:
                k = graph.call_method("transpose", (s.kt, -2, -1))
            q = s.q
            if s.scale_nodes:  # q @ kT * c == (q * c) @ kT; SDPA's scale= only takes a Python float
                factor = None
                for n, div in s.scale_nodes:
                    term = graph.call_function(operator.truediv, (1.0, n)) if div else n
                    factor = term if factor is None else graph.call_function(operator.mul, (factor, term))
                q = graph.call_function(operator.mul, (q, factor))
            if rank == 3:  # (B*H, L, E): add a batch dim so that the fused (4-D) SDPA kernels apply
                q, k, v = (graph.call_method("unsqueeze", (x, 0)) for x in (q, k, v))
                if mask is not None and fake(mask).dim() == 3:
                    mask = graph.call_method("unsqueeze", (mask, 0))
            kwargs = {"attn_mask": mask, "dropout_p": 0.0, "is_causal": False, "scale": float(s.scale)}
            out = graph.call_function(F.scaled_dot_product_attention, (q, k, v), kwargs)
            if rank == 3:
                out = graph.call_method("squeeze", (out, 0))
        out.meta["example_value"] = fake(final)
        final.replace_all_uses_with(out)
        for n in [final] + post[::-1] + [softmax] + s.nodes[::-1]:
            graph.erase_node(n)
        if s.kt is not None and not s.kt.users and _fx.is_last_two_transpose(s.kt) is not None:
            graph.erase_node(s.kt)
        dead = s.dead_input
        if dead is not None and not dead.users and dead.op == "call_function" and dead.target in EMPTY_LIKE:
            graph.erase_node(dead)


# ------------------------------------------------------------------------------------------------ plugin
@hookimpl
def nexfort_config_schema():
    return {NAME: AttentionOptions}


@hookimpl
def nexfort_graph_passes(config):
    options, on = pass_options(config, NAME, AttentionOptions)
    return [AttentionPass(options)] if on else None


@hookimpl
def nexfort_claims_feature(feature, config):
    return True if feature == "max_optimize" else None
