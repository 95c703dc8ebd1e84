"""``linear_gelu`` through Inductor's pattern matcher, on the ATen graph (the form ``linear_gelu`` uses where torch
has the matcher and the ``post_grad_custom_pre_pass`` hook and it is tested: 2.13+; the hand-written walk of the
torch-level graph in :mod:`nexfort.passes.linear_gelu` stays for the others and on request).

The pattern and its replacement, side by side as plain torch functions; the matcher traces both to ATen with
Inductor's own decompositions (``fwd_only``), so the pattern is what AOT autograd makes of ``F.linear`` + ``F.gelu``
(``view -> addmm(bias, x, permute(W)) -> view``, then GELU decomposed into its pointwise ops), whatever the
spelling in the model (``nn.Linear``/``nn.GELU`` modules or functional calls): :func:`pattern` and
:func:`replacement` below. :func:`guard` is the matcher's ``extra_check`` (the checks of the hand-written form; the
matcher itself leaves a match alone whose intermediate results are used elsewhere).
"""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Any, Optional

import torch
import torch.nn.functional as F

from nexfort.core.api import GraphPass, has_inductor_knob

NAME = "linear_gelu"
# the GELU that _addmm_activation(use_gelu=True) computes, per device type (both forms of linear_gelu read it)
APPROXIMATE = {"cuda": "tanh", "cpu": "none"}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_TORCH = (2, 13)


def pattern(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, approximate: str) -> torch.Tensor:
    return F.gelu(F.linear(x, w, b), approximate=approximate)


def replacement(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    y = torch._addmm_activation(b, x.reshape(-1, x.shape[-1]), w.t(), use_gelu=True)
    return y.reshape(*x.shape[:-1], w.shape[0])


def available() -> bool:
    """Whether the matcher form runs on this torch: 2.13+ (where it is tested), with Inductor's
    ``register_replacement`` taking a pre-traced pattern (``search_fn_pattern``), ``gen_pattern``, ``fwd_only``,
    ``PatternMatcherPass`` and the ``post_grad_custom_pre_pass`` hook (the stage ``post_grad_early``)."""
    if not has_inductor_knob("post_grad_custom_pre_pass"):
        return False
    # verified on torch 2.13 (the CI's); on torch 2.4 the pieces exist but its patterns matched nothing
    # (tests/passes/test_linear_gelu_matcher.py, 2026-12-02): older torch keeps the hand-written form
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
        return False
    try:
        from torch._inductor.pattern_matcher import (  # noqa: F401
            PatternMatcherPass,
            fwd_only,
            gen_pattern,
            register_replacement,
        )
    except ImportError:
        return False
    return "search_fn_pattern" in inspect.signature(register_replacement).parameters


def _val(match: Any, name: str) -> Optional[torch.Tensor]:
    node = match.kwargs.get(name)
    value = getattr(node, "meta", {}).get("val")
    return value if isinstance(value, torch.Tensor) else None


def guard(match: Any, approximate: str, cpu: bool) -> bool:
    """The matched ``x``, ``w``, ``b``: the GELU that the fused op computes on their device, one floating dtype and
    one device, a 2-D weight and 1-D bias, an input of rank 2+; CPU graphs only when asked for (``cpu``). Returns
    False instead of raising."""
    try:
        x, w, b = (_val(match, n) for n in ("x", "w", "b"))
        if x is None or w is None or b is None:
            return False
        if APPROXIMATE.get(x.device.type) != approximate or (x.device.type == "cpu" and not cpu):
            return False
        if w.dim() != 2 or b.dim() != 1 or x.dim() < 2:
            return False
        return len({x.dtype, w.dtype, b.dtype}) == 1 and x.dtype in DTYPES and len({x.device, w.device, b.device}) == 1
    except Exception:  # noqa: BLE001 - a guard never raises: anything unexpected leaves the graph alone
        return False


@functools.lru_cache(maxsize=None)
def patterns(cpu: bool) -> Any:
    """The registered patterns (one ``PatternMatcherPass``, built once per value of ``cpu``): the exact and the
    tanh GELU, in float32 and in half precision, each traced from a 2-D input (``addmm`` on ``x`` itself) and a 3-D
    one (``x`` viewed as 2-D and back; the matcher ignores the literal sizes, so any rank of 3 and more and symbolic
    sizes match it)."""
    from torch._inductor.pattern_matcher import PatternMatcherPass, fwd_only, gen_pattern, register_replacement

    matcher = PatternMatcherPass()
    for approximate, dtype in itertools.product(("none", "tanh"), (torch.float32, torch.float16)):
        # float32, and half precision, where the decomposed GELU runs in float32 between two casts (bfloat16's
        # graph is the same: the matcher ignores the dtype arguments)
        check = functools.partial(guard, approximate=approximate, cpu=cpu)
        w, b = torch.empty(8, 4, dtype=dtype), torch.empty(8, dtype=dtype)
        traces = [(torch.empty(3, 4, dtype=dtype), fwd_only), (torch.empty(2, 3, 4, dtype=dtype), fwd_only),
                  (torch.empty(2, 3, 4, dtype=dtype), functools.partial(_reshapes, fwd_only))]
        for x, trace in traces:
            search = _search(approximate)
            # the pattern as first traced (its sizes ignored) also for the check on the match's own shapes:
            # retraced there with symbolic sizes, it would spell them as sym_size calls of x, which a graph whose
            # sizes are Dynamo's symbolic inputs does not have (no match with two dynamic dims)
            pattern_expr = gen_pattern(search, [x, w, b], trace)
            register_replacement(search, replacement, [x, w, b], trace, matcher, check,
                                 search_fn_pattern=pattern_expr)
    return matcher


def _reshapes(fwd_only: Any, fn: Any, args: Any, **kwargs: Any) -> Any:
    """``fwd_only``'s trace with its views as reshapes: Inductor turns every ``aten.view`` of the graph into
    ``aten.reshape`` (``view_to_reshape``) before its post-grad passes, so that is what the early stage sees."""
    gm = fwd_only(fn, args, **kwargs)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    gm.recompile()
    return gm


def _search(approximate: str) -> Any:
    def search(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the matcher reads the names
        return pattern(x, w, b, approximate)

    return search


class LinearGeluMatcherPass(GraphPass):
    """``gelu(linear(x, W, b))`` -> ``_addmm_activation(b, x2d, W.t(), use_gelu=True)`` on the ATen graph, through
    Inductor's pattern matcher (see the module). ``apply`` returns the number of replacements."""

    name = NAME
    stage = "post_grad_early"
    priority = 60

    def apply(self, graph: Any) -> int:
        cpu = bool(self.options is not None and getattr(self.options, "enabled", None) is True)
        return int(patterns(cpu).apply(graph) or 0)
