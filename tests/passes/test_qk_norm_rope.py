"""The ``qk_norm_rope`` pass (nexfort.passes.qk_norm_rope.plugin) and its op ``torch.ops.nexfort.rms_norm_rope``.

The CPU runs the op's torch-ops form; Triton's interpreter runs the kernel itself where installed (float32/float16:
the interpreter truncates to bfloat16 where the GPU rounds); the GPU tests check the kernel at Flux's sizes. Each pass
test checks that the pass fired (or not, for the near misses), the rewritten graph's output against the unrewritten
one's, and the model's against eager.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nexfort.passes.qk_norm_rope import kernels
from nexfort.passes.qk_norm_rope.plugin import QkNormRopeOptions, QkNormRopePass
from tests.helpers import NO_INTERPRETER, rel_l2, run_interpreted

pytestmark = pytest.mark.skipif(not kernels.REGISTERED or not hasattr(torch, "rms_norm"),
                                reason=f"torch {torch.__version__} has no torch.library.custom_op or torch.rms_norm "
                                       f"(torch 2.4+)")

OP = "nexfort.rms_norm_rope.default"


def run_pass(fn, *args, dynamic=None):
    """Compile ``fn`` with a backend that applies the pass and runs the rewritten graph eagerly; returns the output,
    the rewrite count and the op calls in the rewritten graphs."""
    counts, calls = [], []

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        counts.append(QkNormRopePass(QkNormRopeOptions(enabled=True))(work))
        calls.append(sum(str(n.target) == OP for n in work.graph.nodes))
        return work.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(fn, backend=backend, dynamic=dynamic)(*args)
    return out, sum(counts), sum(calls)


def rope(x, cos, sin, sequence_dim=1):
    """diffusers' ``apply_rotary_emb(x, (cos, sin), sequence_dim=...)`` (``use_real_unbind_dim=-1``), as it is
    written."""
    if sequence_dim == 1:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[None, None, :, :], sin[None, None, :, :]
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def flux_prologue(q, eq, w, ew, cos, sin):
    """The joint blocks' form: two normalized parts concatenated along the tokens, then rotated."""
    x = torch.cat([torch.rms_norm(eq, (eq.shape[-1],), ew, 1e-6), torch.rms_norm(q, (q.shape[-1],), w, 1e-6)], dim=1)
    return rope(x, cos, sin)


def single_prologue(q, w, cos, sin):
    return rope(torch.rms_norm(q, (q.shape[-1],), w, 1e-6), cos, sin)


def inputs(dtype=torch.float32, tokens=12, text=5, heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, tokens, heads, dim, generator=g).to(dtype)
    eq = torch.randn(2, text, heads, dim, generator=g).to(dtype)
    w, ew = (torch.randn(dim, generator=g).to(dtype) for _ in range(2))
    cos, sin = (torch.randn(tokens + text, dim, generator=g) for _ in range(2))
    return q, eq, w, ew, cos, sin


# ------------------------------------------------------------------------------------------------ the op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_is_diffusers_math(dtype):
    """The op's torch-ops form gives what diffusers' own functions give (bit for bit: the same functions), in the
    layout this diffusers' Flux uses and, where its ``apply_rotary_emb`` takes ``sequence_dim``, the other."""
    pytest.importorskip("diffusers")
    import inspect

    from diffusers.models.embeddings import apply_rotary_emb

    q, eq, w, ew, cos, sin = inputs(dtype)
    norm, enorm = torch.nn.RMSNorm(16, eps=1e-6).to(dtype), torch.nn.RMSNorm(16, eps=1e-6).to(dtype)
    new_api = "sequence_dim" in inspect.signature(apply_rotary_emb).parameters
    with torch.no_grad():
        norm.weight.copy_(w)
        enorm.weight.copy_(ew)
        if new_api:
            want = apply_rotary_emb(torch.cat([enorm(eq), norm(q)], dim=1), (cos, sin), sequence_dim=1)
            got = torch.ops.nexfort.rms_norm_rope(eq, q, ew, w, cos, sin, 1e-6, 1)
            single = torch.ops.nexfort.rms_norm_rope(q, None, w, None, cos[5:], sin[5:], 1e-6, 1)
            assert got.dtype == dtype and got.shape == (2, 17, 2, 16) and got.is_contiguous()
            assert torch.equal(got, want)
            assert torch.equal(single, apply_rotary_emb(norm(q), (cos[5:], sin[5:]), sequence_dim=1))
        qt, eqt = q.transpose(1, 2), eq.transpose(1, 2)  # older diffusers: (batch, heads, tokens, head_dim)
        want = apply_rotary_emb(torch.cat([enorm(eqt), norm(qt)], dim=2), (cos, sin))
        got = torch.ops.nexfort.rms_norm_rope(eqt, qt, ew, w, cos, sin, 1e-6, 2)
    assert got.shape == (2, 2, 17, 16) and got.is_contiguous() and torch.equal(got, want)


@pytest.mark.parametrize("bad, message", [
    (lambda q, eq, w, ew, c, s: (q[0], None, w, None, c[5:], s[5:]), "a must be (batch, tokens, heads, head_dim)"),
    (lambda q, eq, w, ew, c, s: (q[..., :15], None, None, None, c[5:, :15], s[5:, :15]), "even head_dim"),
    (lambda q, eq, w, ew, c, s: (eq, q[:, :, :1], ew, w, c, s), "b must be (batch, tokens, heads, head_dim)"),
    (lambda q, eq, w, ew, c, s: (eq, q, ew, None, c, s), "a weight for every part or for none"),
    (lambda q, eq, w, ew, c, s: (q, None, w[:8], None, c[5:], s[5:]), "weight_a must be (16,)"),
    (lambda q, eq, w, ew, c, s: (q, None, w, None, c, s), "cos must hold 12 rows of 16"),
])
def test_op_errors_name_the_bad_argument(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        torch.ops.nexfort.rms_norm_rope(*bad(*inputs()), 1e-6, 1)
    with pytest.raises(ValueError, match="sequence_dim must be 1"):
        torch.ops.nexfort.rms_norm_rope(*inputs()[:1], None, None, None, *inputs(tokens=7)[4:], 1e-6, 3)


# ------------------------------------------------------------------------------------------------ the pass
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fires_on_both_forms_and_matches(dtype):
    args = inputs(dtype)
    with torch.no_grad():
        ref_joint, ref_single = flux_prologue(*args), single_prologue(args[0], args[2], args[4][5:], args[5][5:])
    out, count, calls = run_pass(flux_prologue, *args)
    assert count == 1 and calls == 1 and torch.equal(out, ref_joint)
    out, count, calls = run_pass(single_prologue, args[0], args[2], args[4][5:], args[5][5:])
    assert count == 1 and calls == 1 and torch.equal(out, ref_single)


def test_dynamic_tokens():
    """With dynamic shapes the rewrite is made on symbolic sizes and serves other token counts."""
    for tokens in (12, 20):
        args = inputs(tokens=tokens)
        out, count, calls = run_pass(flux_prologue, *args, dynamic=True)
        assert count == 1 and calls == 1 and rel_l2(out, flux_prologue(*args)) < 1e-6


def _halves(q, w, cos, sin):  # use_real_unbind_dim=-2 (Stable Audio, CogView4): halves, not pairs
    x = torch.rms_norm(q, (q.shape[-1],), w, 1e-6)
    real, imag = x.reshape(*x.shape[:-1], 2, -1).unbind(-2)
    rotated = torch.cat([-imag, real], dim=-1)
    return (x.float() * cos[None, :, None] + rotated.float() * sin[None, :, None]).to(x.dtype)


def _other_sign(q, w, cos, sin):
    x = torch.rms_norm(q, (q.shape[-1],), w, 1e-6)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([imag, -real], dim=-1).flatten(3)
    return (x.float() * cos[None, :, None] + rotated.float() * sin[None, :, None]).to(x.dtype)


def heads_first_prologue(q, eq, w, ew, cos, sin):
    """Older diffusers' Flux (< 0.35): q/k transposed to (batch, heads, tokens, head_dim) before the norm, the parts
    concatenated along dim 2, ``cos[None, None]``."""
    q, eq = q.transpose(1, 2), eq.transpose(1, 2)
    x = torch.cat([torch.rms_norm(eq, (16,), ew, 1e-6), torch.rms_norm(q, (16,), w, 1e-6)], dim=2)
    return rope(x, cos, sin, sequence_dim=2)


def test_heads_first_layout_of_older_diffusers():
    args = inputs(torch.bfloat16)
    with torch.no_grad():
        ref = heads_first_prologue(*args)
    out, count, calls = run_pass(heads_first_prologue, *args)
    assert count == 1 and calls == 1 and out.shape == (2, 2, 17, 16) and torch.equal(out, ref)


def _layer_norm(q, w, cos, sin):
    return rope(F.layer_norm(q, (q.shape[-1],), w, None, 1e-6), cos, sin)


def _two_dims(q, w, cos, sin):
    return rope(torch.rms_norm(q, q.shape[-2:], None, 1e-6), cos, sin)


def _norm_read_twice(q, w, cos, sin):
    x = torch.rms_norm(q, (q.shape[-1],), w, 1e-6)
    return rope(x, cos, sin), x.sum()


def _other_dtype(q, w, cos, sin):
    x = torch.rms_norm(q, (q.shape[-1],), w, 1e-6)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos[None, :, None] + rotated.float() * sin[None, :, None]).to(torch.float16)


def _cat_heads_heads_first(q, w, cos, sin):  # (batch, heads, tokens, head_dim) parts concatenated along the heads
    qt = q.transpose(1, 2)
    x = torch.cat([torch.rms_norm(qt[:, :1], (16,), w, 1e-6), torch.rms_norm(qt[:, 1:], (16,), w, 1e-6)], dim=1)
    return rope(x, cos, sin, sequence_dim=2)


def _cat_other_dim(q, w, cos, sin):
    x = torch.cat([torch.rms_norm(q, (16,), w, 1e-6), torch.rms_norm(q, (16,), w, 1e-6)], dim=2)
    return rope(x, cos, sin)


def _one_weight(q, w, cos, sin):
    x = torch.cat([torch.rms_norm(q[:, :4], (16,), w, 1e-6), torch.rms_norm(q[:, 4:], (16,), None, 1e-6)], dim=1)
    return rope(x, cos, sin)


def _written_in_place(q, w, cos, sin):
    out = single_prologue(q, w, cos, sin)
    q.add_(1)
    return out


NEAR_MISSES = {"halves": _halves, "other_sign": _other_sign, "cat_heads_heads_first": _cat_heads_heads_first,
               "layer_norm": _layer_norm, "two_dims": _two_dims, "norm_read_twice": _norm_read_twice,
               "other_dtype": _other_dtype, "cat_other_dim": _cat_other_dim, "one_weight": _one_weight,
               "written_in_place": _written_in_place}


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_near_misses_are_left_alone(name):
    q, _, w, _, cos, sin = inputs()
    fn = NEAR_MISSES[name]
    with torch.no_grad():
        ref = fn(q.clone(), w, cos[5:], sin[5:])
    out, count, calls = run_pass(fn, q.clone(), w, cos[5:], sin[5:])
    assert count == 0 and calls == 0
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert torch.equal(o, r)


def _tiny_flux():
    pytest.importorskip("diffusers")
    try:
        from diffusers import FluxTransformer2DModel
    except ImportError:
        pytest.skip("this diffusers has no Flux transformer")
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 6, 6]).eval()


def _flux_inputs(tokens=16, text=8, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, tokens, 4, generator=g).to(device, dtype),
                encoder_hidden_states=torch.randn(1, text, 32, generator=g).to(device, dtype),
                pooled_projections=torch.randn(1, 32, generator=g).to(device, dtype),
                timestep=torch.tensor([1.0], device=device, dtype=dtype),
                img_ids=torch.randn(tokens, 3, generator=g).to(device),
                txt_ids=torch.randn(text, 3, generator=g).to(device),
                return_dict=False)


def _expected_rewrites(m):
    """4 (q and k of one joint and one single block) where this diffusers' Flux normalizes q/k with
    ``torch.nn.RMSNorm`` (0.35+); 0 where it uses diffusers' own RMSNorm (decomposed ops, rounded before the weight:
    another function, which the pass leaves alone)."""
    return 4 if type(m.transformer_blocks[0].attn.norm_q) is getattr(torch.nn, "RMSNorm", None) else 0


def test_flux_transformer_through_the_backend(counters):
    """Every q/k of a diffusers Flux transformer (the joint block's concatenation, the single block's) is rewritten
    when the option is on, and none when it is off (the default); the output is eager's."""
    m = _tiny_flux()
    inp = _flux_inputs()
    with torch.no_grad():
        ref = m(**inp)[0]
        torch._dynamo.reset()
        off = torch.compile(m, backend="nexfort", options={"mode": "max-optimize"})(**inp)[0]
        assert counters["pass"]["qk_norm_rope"] == 0
        torch._dynamo.reset()
        on = torch.compile(m, backend="nexfort", options={"mode": "max-optimize",
                                                          "options": {"qk_norm_rope.enabled": True}})(**inp)[0]
    assert counters["pass"]["qk_norm_rope"] == _expected_rewrites(m)
    assert rel_l2(on, ref) < 1e-5 and rel_l2(off, ref) < 1e-5


def test_option_type_is_checked():
    from nexfort.core.api import NexfortConfigError, resolve_config

    with pytest.raises(NexfortConfigError, match="qk_norm_rope.enabled"):
        resolve_config(mode="max-optimize", options={"qk_norm_rope.enabled": "sometimes"})
    assert resolve_config(mode="max-optimize").options.qk_norm_rope.enabled is False  # off unless asked


# ------------------------------------------------------------------------------------------------ the kernel
_INTERPRETED = """
import json, torch
from nexfort.passes.qk_norm_rope import kernels
res = []
for dtype, joint, weight, strided, sd in ((torch.float32, True, True, True, 1), (torch.float32, False, True, False, 1),
                                          (torch.float16, True, False, False, 1), (torch.float16, False, True, True, 1),
                                          (torch.float32, True, True, True, 2)):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 9, 3 * 3 * 32, generator=g).to(dtype)
    b = qkv[..., 96:192].unflatten(-1, (3, 32)) if strided else torch.randn(2, 9, 3, 32, generator=g).to(dtype)
    a = torch.randn(2, 4, 3, 32, generator=g).to(dtype) if joint else None
    if sd == 2:  # (batch, heads, tokens, head_dim) views
        a, b = a.transpose(1, 2), b.transpose(1, 2)
    wa, wb = (torch.randn(32, generator=g).to(dtype) if weight else None for _ in range(2))
    tokens = 9 + (4 if joint else 0)
    cos, sin = (torch.randn(tokens, 32, generator=g)[None, :, None] for _ in range(2))
    args = (b, None, wb, None, cos, sin, 1e-6, sd) if a is None else (a, b, wa, wb, cos, sin, 1e-6, sd)
    out, ref = kernels._launch(*args), kernels.reference(*args)
    res.append({"shape": list(out.shape), "contiguous": out.is_contiguous(),
                "rel": float((out.float() - ref.float()).norm() / ref.float().norm()),
                "max": float((out.float() - ref.float()).abs().max())})
print(json.dumps(res))
"""


@pytest.mark.skipif(NO_INTERPRETER is not None, reason=str(NO_INTERPRETER))
def test_kernel_in_the_interpreter_matches_the_reference():
    rows = run_interpreted(_INTERPRETED)
    assert [r["shape"] for r in rows] == [[2, 13, 3, 32], [2, 9, 3, 32], [2, 13, 3, 32], [2, 9, 3, 32],
                                          [2, 3, 13, 32]]
    assert all(r["contiguous"] for r in rows)
    for r in rows[:2] + rows[4:]:  # float32: the norm's sum in another order
        assert r["rel"] < 1e-6, r
    for r in rows[2:4]:  # float16: an element whose norm output sits on a rounding boundary may differ by an ulp
        assert r["rel"] < 2e-3 and r["max"] < 0.05, r


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernel)")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("joint", [True, False])
def test_gpu_kernel_matches_reference_at_flux_sizes(dtype, joint):
    """Flux.1-dev at 1024²: 24 heads of 128, 4096 image tokens (+ 512 text tokens in the joint blocks); q a view of
    a fused QKV projection's output."""
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(1, 4096, 3 * 3072, device="cuda", generator=g).to(dtype)
    b = qkv[..., :3072].unflatten(-1, (24, 128))
    a = torch.randn(1, 512, 24, 128, device="cuda", generator=g).to(dtype) if joint else None
    wa, wb = (torch.rand(128, device="cuda", generator=g).to(dtype) + 0.5 for _ in range(2))
    tokens = 4096 + (512 if joint else 0)
    cos, sin = (torch.randn(tokens, 128, device="cuda", generator=g) for _ in range(2))
    args = (b, None, wb, None, cos, sin, 1e-6, 1) if a is None else (a, b, wa, wb, cos, sin, 1e-6, 1)
    out, ref = torch.ops.nexfort.rms_norm_rope(*args), kernels.reference(*args)
    assert out.shape == ref.shape and out.is_contiguous() and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-3 and (out.float() - ref.float()).abs().max() < 0.1


@pytest.mark.gpu
@cuda
def test_gpu_flux_transformer_matches_eager(counters):
    m = _tiny_flux().to("cuda", torch.bfloat16)
    inp = _flux_inputs(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(**inp)[0]
        torch._dynamo.reset()
        out = torch.compile(m, backend="nexfort", options={"mode": "max-optimize",
                                                           "options": {"qk_norm_rope.enabled": True}})(**inp)[0]
    assert counters["pass"]["qk_norm_rope"] == _expected_rewrites(m) and rel_l2(out, ref) < 2e-2


def test_plugin_loads_through_its_entry_point():
    from nexfort.core.plugins import plugin_names

    assert "qk_norm_rope" in plugin_names()


def test_flux_transformer_through_nexfort_compile(counters):
    """``nexfort_compile`` applies the module transforms first (the fused QKV projection among them): the pattern
    starts at the norms, so it is found whichever way q and k were projected."""
    from nexfort.compilers import nexfort_compile

    m = _tiny_flux()
    inp = _flux_inputs()
    with torch.no_grad():
        ref = m(**inp)[0]
        torch._dynamo.reset()
        out = nexfort_compile(copy.deepcopy(m), mode="max-optimize:low-precision",
                              options={"qk_norm_rope.enabled": True})(**inp)[0]
    assert counters["pass"]["qk_norm_rope"] == _expected_rewrites(m) and rel_l2(out, ref) < 1e-4


def test_flux_transformer_dynamic_resolution_is_one_graph(counters):
    """With ``dynamic=True`` the rewritten graph serves other image and text token counts: one graph, no recompile,
    eager's output at each."""
    m = _tiny_flux()
    compiled = torch.compile(m, backend="nexfort", dynamic=True,
                             options={"mode": "max-optimize", "options": {"qk_norm_rope.enabled": True}})
    with torch.no_grad():
        for tokens, text in ((16, 8), (24, 8), (36, 12)):
            inp = _flux_inputs(tokens, text)
            assert rel_l2(compiled(**inp)[0], m(**inp)[0]) < 1e-5
    if counters["backend"]["fallbacks"] and torch.__version__ < (2, 5):
        pytest.skip(f"torch {torch.__version__}'s Inductor does not compile this diffusers' dynamic Flux graph, pass "
                    f"or not ('SymFloat' object has no attribute 'size'): it runs eagerly")
    assert counters["backend"]["graphs"] == 1 and counters["pass"]["qk_norm_rope"] == _expected_rewrites(m)


FLUX_FAMILY = ("FluxTransformer2DModel", "Flux2Transformer2DModel", "ChromaTransformer2DModel")


@pytest.mark.parametrize("name", FLUX_FAMILY + ("HiDreamImageTransformer2DModel", "QwenImageTransformer2DModel",
                                                "ZImageTransformer2DModel"))
def test_rotary_transformers_of_the_zoo(name):
    """The zoo's rotary-embedding DiTs (diffusers' own test configurations): the Flux family (Flux, FLUX.2, Chroma:
    ``torch.nn.RMSNorm`` q/k norms and interleaved RoPE) is rewritten, the others (complex or half-split RoPE, other
    norms) are left alone; every output is eager's."""
    pytest.importorskip("diffusers")
    from tests.diffusers import test_zoo as zoo

    model = zoo._build(name)
    kw = zoo._kwargs(model, name, 0)
    counts = []

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        counts.append(QkNormRopePass(QkNormRopeOptions(enabled=True))(work))
        return work.forward

    torch._dynamo.reset()
    with torch.no_grad():
        ref = zoo._outputs(model(**kw))
        out = zoo._outputs(torch.compile(model, backend=backend)(**kw))
    assert all(rel_l2(o, r) < 1e-6 for o, r in zip(out, ref))
    torch_norms = any(type(m) is getattr(torch.nn, "RMSNorm", None) for n, m in model.named_modules()
                      if n.endswith("norm_q"))
    if name in FLUX_FAMILY and torch_norms:
        assert sum(counts) > 0
    elif name not in FLUX_FAMILY:
        assert sum(counts) == 0


def test_rewritten_node_records_the_contiguous_result():
    """The op's node carries what the op returns (contiguous), also where eager's result kept a transposed input's
    strides (the heads-first single form)."""
    graphs = []

    def single_heads_first(q, w, cos, sin):
        return rope(torch.rms_norm(q.transpose(1, 2), (16,), w, 1e-6), cos, sin, sequence_dim=2)

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        QkNormRopePass(QkNormRopeOptions(enabled=True))(work)
        graphs.append(work)
        return work.forward

    q, _, w, _, cos, sin = inputs()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(single_heads_first, backend=backend)(q, w, cos[5:], sin[5:])
    ops = [n for gm in graphs for n in gm.graph.nodes if str(n.target) == OP]
    assert len(ops) == 1 and ops[0].meta["example_value"].is_contiguous()
    assert out.is_contiguous() and torch.equal(out, single_heads_first(q, w, cos[5:], sin[5:]))
