"""Small helpers to read Dynamo-captured (torch-level) FX graphs, shared by nexfort's pre_grad passes.

Dynamo spells one torch op several ways (``operator.matmul``, ``torch.matmul``, the ``matmul`` method; on
torch 2.1-2.4 some modules stay ``call_module`` nodes). Every helper here answers "is this node that op,
and what are its arguments" and returns ``None``/``False`` for anything it does not recognise, so a pass
built on them leaves unknown graphs alone instead of raising.
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Optional, Sequence

import torch
from torch.fx import Node

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
CAT_FUNCTIONS = tuple({torch.cat, getattr(torch, "concat", torch.cat), getattr(torch, "concatenate", torch.cat)})


def fake(node: Any) -> Optional[torch.Tensor]:
    """The fake tensor Dynamo recorded for ``node`` (``meta["example_value"]``; ``meta["val"]`` elsewhere)."""
    if not isinstance(node, Node):
        return None
    for key in ("example_value", "val"):
        v = node.meta.get(key)
        if isinstance(v, torch.Tensor):
            return v
    return None


def is_op(node: Any, functions: Iterable[Any] = (), methods: Iterable[str] = ()) -> bool:
    """``node`` calls one of ``functions`` (call_function) or one of ``methods`` (call_method)."""
    if not isinstance(node, Node):
        return False
    if node.op == "call_function":
        return any(node.target is f for f in functions)
    if node.op == "call_method":
        return node.target in tuple(methods)
    return False


def binary(node: Any, functions: Iterable[Any], methods: Iterable[str]) -> Optional[tuple]:
    """``(lhs, rhs)`` where ``node`` calls one of ``functions``/``methods`` with two positional arguments and no
    keywords; else ``None``."""
    if is_op(node, functions, methods) and len(node.args) == 2 and not node.kwargs:
        return node.args[0], node.args[1]
    return None


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` / keyword ``name`` of a call (for call_method, index 0 is ``self``)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def only_user(node: Node) -> Optional[Node]:
    """The single user of ``node`` (``None`` when it has none or several)."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def same_size(a: Any, b: Any) -> bool:
    """True only when two sizes are provably equal (ints, or SymInts known equal without adding a guard)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        from torch.fx.experimental.symbolic_shapes import statically_known_true
    except ImportError:  # torch 2.1-2.2: compare the sizes' symbolic expressions (equal expressions: equal sizes)
        return _same_expr(a, b)
    try:
        return bool(statically_known_true(a == b))
    except Exception:  # noqa: BLE001 - unknown symbolic expression: not provably equal
        return False


def _size_expr(x: Any) -> Any:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        import sympy

        return sympy.Integer(x)
    return getattr(getattr(x, "node", None), "expr", None)  # a SymInt's sympy expression (no guard added)


def _same_expr(a: Any, b: Any) -> bool:
    if a is b:
        return True
    ea, eb = _size_expr(a), _size_expr(b)
    try:
        return ea is not None and eb is not None and bool(ea == eb)
    except Exception:  # noqa: BLE001
        return False


def same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(same_size(x, y) for x, y in zip(a, b))


def broadcasts_into(small: Sequence[Any], big: Sequence[Any]) -> bool:
    """``small`` broadcasts to ``big`` without enlarging it (each trailing-aligned size is 1 or equal)."""
    if len(small) > len(big):
        return False
    for s, b in zip(reversed(small), reversed(big)):
        if not (same_size(s, 1) or same_size(s, b)):
            return False
    return True


def last_dim(dim: Any, rank: int) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim in (-1, rank - 1)


def is_last_two_transpose(node: Any) -> Optional[Node]:
    """If ``node`` swaps the last two dims of a tensor (``transpose(-2, -1)``, ``mT``-like ``permute``), that
    tensor; else ``None``."""
    if not isinstance(node, Node):
        return None
    src = arg(node, 0, "input")
    t = fake(src)
    if t is None or node.kwargs and set(node.kwargs) - {"dim0", "dim1", "dims"}:
        return None
    rank = t.dim()
    if is_op(node, (torch.transpose,), ("transpose",)):
        d0, d1 = arg(node, 1, "dim0"), arg(node, 2, "dim1")
        if not (isinstance(d0, int) and isinstance(d1, int)) or rank < 2:
            return None
        if {d0 % rank, d1 % rank} == {rank - 2, rank - 1}:
            return src
        return None
    if is_op(node, (torch.permute,), ("permute",)):
        dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = tuple(dims[0])
        if len(dims) != rank or not all(isinstance(d, int) for d in dims):
            return None
        want = list(range(rank - 2)) + [rank - 1, rank - 2]
        return src if [d % rank for d in dims] == want else None
    return None


def scalar_constant(value: Any) -> Optional[float]:
    """A Python int/float constant as float (bool, tensors, SymFloats and graph nodes give ``None``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if f == f and abs(f) != float("inf") else None


def is_scalar_node(node: Any) -> bool:
    """A graph node producing a Python-scalar (SymFloat/SymInt, e.g. ``x.item()`` under ``dynamic=True``)."""
    if not isinstance(node, Node):
        return False
    v = node.meta.get("example_value", node.meta.get("val"))
    return isinstance(v, (torch.SymFloat, torch.SymInt, float, int)) and not isinstance(v, bool)


MATMUL_FUNCTIONS = (operator.matmul, torch.matmul, torch.bmm)
MATMUL_METHODS = ("matmul", "bmm", "__matmul__")
EINSUM_FUNCTIONS = tuple({torch.einsum, torch.functional.einsum})


def matmul_operands(node: Any) -> Optional[tuple]:
    """``(a, b, b_transposed)`` when ``node`` computes ``a @ b`` (``b_transposed``: ``a @ b.mT``) with ``@``,
    ``torch.matmul``, ``torch.bmm``, or a batched-matmul ``torch.einsum`` (``"b i d, b j d -> b i j"``, as in
    latent-diffusion's ``CrossAttention``), without extra arguments; else ``None``."""
    if is_op(node, EINSUM_FUNCTIONS, ()):
        return _einsum_operands(node)
    if not is_op(node, MATMUL_FUNCTIONS, MATMUL_METHODS):
        return None
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if not (isinstance(a, Node) and isinstance(b, Node)):
        return None
    return a, b, False


def _einsum_operands(node: Node) -> Optional[tuple]:
    if len(node.args) != 3 or node.kwargs:
        return None
    eq, a, b = node.args
    if not (isinstance(eq, str) and isinstance(a, Node) and isinstance(b, Node)) or "->" not in eq:
        return None
    lhs, out = eq.replace(" ", "").split("->", 1)
    terms = lhs.split(",") + [out]
    if len(terms) != 3 or any(t.count("...") > 1 for t in terms):
        return None
    if any("..." in t for t in terms):  # a leading ellipsis in all three: one batch "letter"
        if not all(t.startswith("...") for t in terms):
            return None
        terms = ["#" + t[3:] for t in terms]
    sa, sb, so = terms
    if any(len(set(t)) != len(t) or len(t) < 2 or "." in t for t in terms) or not len(sa) == len(sb) == len(so):
        return None
    batch, (i, x), o = sa[:-2], sa[-2:], so[-1]
    if sb[:-2] != batch or so[:-2] != batch or so[-2] != i or len(set(batch + i + x + o)) != len(batch) + 3:
        return None
    if sb[-2:] == x + o:
        return a, b, False
    if sb[-2:] == o + x:
        return a, b, True
    return None


def cast_source(node: Any, allowed: Sequence[torch.dtype]) -> Optional[Node]:
    """If ``node`` is a pure dtype cast (``x.float()``, ``x.half()``, ``x.bfloat16()``, ``x.to(dtype)``,
    ``x.type(dtype)``, ``x.type_as(y)``) or ``x.contiguous()``, whose result dtype is in ``allowed`` (and device
    that of ``x``), its input ``x``; else ``None``."""
    if not isinstance(node, Node) or node.op != "call_method":
        return None
    src = node.args[0] if node.args else None
    out, inp = fake(node), fake(src)
    if out is None or inp is None or out.dtype not in allowed or out.device != inp.device:
        return None
    if node.target in ("float", "half", "bfloat16", "contiguous"):
        allowed_kwargs = {"memory_format"} if node.target == "contiguous" else set()
        ok = len(node.args) == 1 and not set(node.kwargs) - allowed_kwargs
    elif node.target == "type_as":
        ok = len(node.args) == 2 and isinstance(node.args[1], Node) and not node.kwargs
    elif node.target in ("to", "type"):
        rest, kw = node.args[1:], dict(node.kwargs)
        dtypes = [a for a in rest if isinstance(a, torch.dtype)] + ([kw.pop("dtype")] if "dtype" in kw else [])
        ok = len(dtypes) == 1 and len(rest) + ("dtype" in node.kwargs) == 1 and not kw
    else:
        ok = False
    return src if ok else None


def dropout_source(node: Any, gm: Optional[torch.fx.GraphModule] = None) -> Optional[Node]:
    """If ``node`` is a dropout that is the identity (``p == 0`` or not training), its input; else ``None``."""
    if not isinstance(node, Node):
        return None
    if is_op(node, (torch.nn.functional.dropout, torch.dropout), ()):
        functional = node.target is torch.nn.functional.dropout
        p = arg(node, 1, "p", 0.5)
        training = arg(node, 2, "training", True) if functional else arg(node, 2, "train")
        inplace = arg(node, 3, "inplace", False) if functional else False
        if inplace is not False or not isinstance(training, bool):
            return None
        if training is False:  # eval dropout is the identity whatever p is (p may be a SymFloat)
            return arg(node, 0, "input")
        return arg(node, 0, "input") if scalar_constant(p) == 0 else None
    if node.op == "call_module" and gm is not None:  # torch 2.1-2.4 may keep nn.Dropout as a module
        try:
            mod = gm.get_submodule(node.target)
        except AttributeError:
            return None
        if type(mod) is torch.nn.Dropout and not mod.inplace and (mod.p == 0 or not mod.training):
            return node.args[0] if len(node.args) == 1 and not node.kwargs else None
    return None


INPLACE_FUNCTIONS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ipow, operator.iand,
                     operator.ior, operator.ixor, operator.setitem)
#: ops that return a view (or views) of their first argument
VIEW_OPS = ("reshape", "view", "squeeze", "unsqueeze", "transpose", "permute", "flatten", "unflatten", "expand",
            "chunk", "split", "unbind", "narrow", "t", "contiguous", "view_as", "reshape_as", "__getitem__", "getitem",
            "select", "slice", "as_strided", "detach", "movedim", "swapaxes")


def may_be_mutated(node: Node, depth: int = 0) -> bool:
    """Whether ``node``'s tensor (or a view of it, a few views deep) may be written in place anywhere in the graph:
    a method ending in ``_`` (``add_``, ``copy_``), an in-place operator (``+=``, ``x[i] = ...``), or an ``out=``.
    True where unsure (too deep), so a pass that moves or merges a read of ``node`` leaves it alone."""
    if depth > 4:
        return True
    for user in node.users:
        if user.op == "call_method" and isinstance(user.target, str) and user.target.endswith("_") and \
                not user.target.endswith("__") and user.args and user.args[0] is node:
            return True
        if user.op == "call_function" and any(user.target is f for f in INPLACE_FUNCTIONS) and \
                user.args and user.args[0] is node:
            return True
        if "out" in user.kwargs:
            return True
        name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        is_view = name in VIEW_OPS and user.args and user.args[0] is node
        if is_view and may_be_mutated(user, depth + 1):
            return True
    return False
