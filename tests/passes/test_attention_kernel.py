"""The ``attention_kernel`` pass and op (nexfort-passes): SDPA calls -> ``torch.ops.nexfort.attention``, which runs
the fastest matching kernel per shape.

FlashAttention-4 runs only on Hopper/Blackwell GPUs, so the CPU tests register a kernel of their own (the
attention in FlashAttention's ``(batch, tokens, heads, dim)`` layout, written with matmuls) and steer the choice
with ``min_speedup``; the GPU test runs FlashAttention-4 itself where it is installed.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from nexfort.core.errors import NexfortConfigError
from nexfort.passes.attention_kernel import AttentionKernel, choices, register_kernel
from nexfort.passes.attention_kernel import kernels as K
from nexfort.passes.attention_kernel.plugin import AttentionKernelOptions, AttentionKernelPass

OP = K.op()
SDPA = F.scaled_dot_product_attention


def bshd_attention(q, k, v, scale):
    """Attention computed in ``(B, S, H, D)`` layout, returned as a ``(B, H, S, D)`` view (FlashAttention's)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    s = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * s
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).transpose(1, 2)


class Calls:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *args):
        self.n += 1
        return self.fn(*args)


@pytest.fixture
def cpu_kernel():
    """A registered CPU kernel (float32) whose calls are counted; removed again after the test."""
    run = Calls(bshd_attention)
    unregister = register_kernel(AttentionKernel("bshd-math", run, lambda q, k, v: q.device.type == "cpu",
                                                 lambda device_type: device_type == "cpu", dtypes=(torch.float32,)))
    yield run
    unregister()


class Attention(torch.nn.Module):
    """diffusers' ``AttnProcessor2_0`` shape: projections, ``view/transpose`` to heads, SDPA, back."""

    def __init__(self, dim=32, heads=4, keywords=False, **sdpa_kwargs):
        super().__init__()
        self.heads, self.keywords = heads, keywords
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.to_out = torch.nn.Linear(dim, dim)
        self.sdpa_kwargs = sdpa_kwargs

    def forward(self, x, context=None):
        context = x if context is None else context
        b, d = x.shape[0], x.shape[-1]
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # one line each (torch 2.1's Dynamo breaks the graph on a generator expression)
        q = q.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        k = k.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        if self.keywords:  # diffusers' attention dispatcher (Flux, Wan, Qwen-Image): every argument by keyword
            kw = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, **self.sdpa_kwargs}
            out = SDPA(query=q, key=k, value=v, **kw)
        else:
            out = SDPA(q, k, v, **self.sdpa_kwargs)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, d))


# min_speedup 1e-9 / 1e9: the registered kernel always / never wins, whatever the timing noise of a busy CPU
def run_pass(fn, *args, options=None, dynamic=False):
    """Compile ``fn`` with a backend that applies the pass and runs the rewritten graph eagerly."""
    graphs = []

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        AttentionKernelPass(options or AttentionKernelOptions(enabled=True, min_speedup=1e-9))(work)
        graphs.append(work)
        return work.forward

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, dynamic=dynamic)(*args), graphs


def count(graphs, target):
    return sum(1 for gm in graphs for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def test_rewrites_sdpa_and_runs_the_chosen_kernel(cpu_kernel, counters, assert_close):
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        out, graphs = run_pass(model, x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["attention_kernel"] == 1 and count(graphs, OP) == 1 and count(graphs, SDPA) == 0
    assert list(choices().values()) == ["bshd-math"] and counters["attention_kernel"]["bshd-math"] == 1
    timed = cpu_kernel.n
    with torch.no_grad():
        out2, _ = run_pass(model, x)  # a new graph: the choice is per process and shape, not per graph
    assert cpu_kernel.n == timed + 1, "a chosen shape runs its kernel once per call, without timing again"
    assert torch.equal(out, out2)


def test_rewrites_the_dispatchers_keyword_call(cpu_kernel, counters, assert_close):
    """Flux's attention reaches SDPA as ``F.scaled_dot_product_attention(query=..., key=..., value=..., ...)``."""
    torch.manual_seed(0)
    model = Attention(keywords=True).eval()
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        out, graphs = run_pass(model, x)
        assert_close(out, model(x), tol=1e-5)
    assert counters["pass"]["attention_kernel"] == 1 and count(graphs, OP) == 1 and count(graphs, SDPA) == 0


def test_flux_attention_reaches_the_op(cpu_kernel, counters, assert_close):
    """diffusers' Flux block (its attention through the dispatcher's keyword call): the joint attention is rewritten."""
    pytest.importorskip("diffusers")
    try:
        from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
    except ImportError:
        pytest.skip("this diffusers has no Flux transformer")
    import diffusers

    torch.manual_seed(0)
    block = FluxTransformerBlock(dim=64, num_attention_heads=2, attention_head_dim=32).eval()
    hs, enc, temb = torch.randn(1, 16, 64), torch.randn(1, 8, 64), torch.randn(1, 64)
    rot = (torch.randn(24, 32), torch.randn(24, 32))
    with torch.no_grad():
        try:
            ref = block(hs, enc, temb, rot)
        except TypeError as e:  # diffusers 0.30-0.32: the rotary embedding is one tensor, not (cos, sin)
            pytest.skip(f"diffusers {diffusers.__version__}'s Flux block takes another rotary embedding form: {e}")
        out, graphs = run_pass(block, hs, enc, temb, rot)
    if count(graphs, OP) == 0 and count(graphs, SDPA) == 0:  # nothing to rewrite: not the pass's doing
        pytest.skip(f"torch {torch.__version__}'s Dynamo leaves diffusers {diffusers.__version__}'s Flux attention "
                    f"out of the graph (a graph break)")
    assert counters["pass"]["attention_kernel"] == 1 and count(graphs, OP) == 1
    for o, r in zip(out, ref):
        assert_close(o, r, tol=1e-5)


def test_sdpa_stays_where_no_kernel_is_faster(cpu_kernel, counters, assert_close):
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        out, graphs = run_pass(model, x, options=AttentionKernelOptions(enabled=True, min_speedup=1e9))
        assert_close(out, model(x), tol=1e-5)
    assert count(graphs, OP) == 1 and cpu_kernel.n > 0  # timed ...
    assert list(choices().values()) == ["sdpa"] and counters["attention_kernel"]["sdpa"] == 1  # ... and not chosen


def test_a_kernel_with_a_wrong_result_is_never_chosen(counters, assert_close, caplog):
    unregister = register_kernel(AttentionKernel("wrong", lambda q, k, v, s: bshd_attention(q, k, v, s) * 1.1,
                                                 lambda q, k, v: True, lambda t: t == "cpu", dtypes=(torch.float32,)))
    try:
        torch.manual_seed(0)
        model = Attention().eval()
        x = torch.randn(2, 24, 32)
        with torch.no_grad():
            out, graphs = run_pass(model, x)
            assert_close(out, model(x), tol=1e-5)
        chosen = list(choices().values())
    finally:
        unregister()
    assert count(graphs, OP) == 1 and chosen == ["sdpa"]
    assert "wrong is off" in caplog.text and "relative L2" in caplog.text


def test_one_choice_per_shape_with_dynamic_shapes(cpu_kernel, counters, assert_close):
    torch.manual_seed(0)
    model = Attention().eval()
    with torch.no_grad():
        for n in (24, 40):
            x = torch.randn(2, n, 32)
            out, graphs = run_pass(model, x, dynamic=True)
            assert_close(out, model(x), tol=1e-5)
            assert count(graphs, OP) == 1
    assert sorted(sig[3][0][2] for sig in choices()) == [24, 40]


def test_output_has_the_layout_the_meta_kernel_promises(cpu_kernel):
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))  # contiguous (B, H, S, D): SDPA returns that layout
    expected = K.attention_meta(q, k, v).stride()
    for speedup in (1e9, 1e-9):  # SDPA chosen, then the kernel
        out = OP(q, k, v, 0.3, K.ALL, speedup)
        assert out.stride() == expected
        torch.testing.assert_close(out, SDPA(q, k, v, scale=0.3), rtol=1e-5, atol=1e-5)
    assert list(choices().values()) == ["sdpa", "bshd-math"]  # one choice per (inputs, options)


def test_a_chosen_kernel_that_fails_later_falls_back_to_sdpa(counters, caplog):
    """A kernel chosen on its first call that fails on a later one: that call gets SDPA's result, the choice
    becomes SDPA, and the failed kernel is not called again."""
    broken, calls_after = [False], []

    def flaky(q, k, v, scale):
        if broken[0]:
            calls_after.append(1)
            raise RuntimeError("flaky kernel")
        return bshd_attention(q, k, v, scale)

    unregister = register_kernel(AttentionKernel("flaky", flaky, lambda q, k, v: True, lambda t: t == "cpu",
                                                 dtypes=(torch.float32,)))
    try:
        q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
        ref = SDPA(q, k, v)
        assert torch.allclose(OP(q, k, v, None, K.ALL, 1e-9), ref, atol=1e-5)  # chosen and run
        assert list(choices().values()) == ["flaky"]
        broken[0] = True
        for _ in range(3):
            out = OP(q, k, v, None, K.ALL, 1e-9)
            assert torch.allclose(out, ref, atol=1e-5)
        assert list(choices().values()) == ["sdpa"] and "flaky failed" in caplog.text
        assert len(calls_after) == 1  # failed once, then never tried again
    finally:
        unregister()


NEAR_MISSES = {
    "attn-mask": lambda: (Attention(attn_mask=torch.zeros(24, 24)), True),
    "causal": lambda: (Attention(is_causal=True), True),
    "keyword-mask": lambda: (Attention(keywords=True, attn_mask=torch.zeros(24, 24)), True),
    "live-dropout": lambda: (Attention(dropout_p=0.1).train(), True),
    "needs-grad": lambda: (Attention(), False),  # outside no_grad: the projections' outputs need gradients
    "float64": lambda: (Attention().double(), True),  # no installed kernel takes it
}


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_leaves_near_misses_alone(name, cpu_kernel, counters, assert_close):
    torch.manual_seed(0)
    model, no_grad = NEAR_MISSES[name]()
    x = torch.randn(2, 24, 32, dtype=next(model.parameters()).dtype)
    with torch.set_grad_enabled(not no_grad):
        torch.manual_seed(1)
        out, graphs = run_pass(model, x)
        torch.manual_seed(1)
        ref = model(x)
    if name != "live-dropout":
        assert_close(out, ref, tol=1e-6)
    assert counters["pass"]["attention_kernel"] == 0 and count(graphs, OP) == 0 and cpu_kernel.n == 0


def test_no_installed_kernel_leaves_the_graph_alone(counters):
    model = Attention().eval()
    with torch.no_grad():
        _, graphs = run_pass(model, torch.randn(2, 24, 32))  # no CPU kernel registered (fa4 is GPU-only)
    assert counters["pass"]["attention_kernel"] == 0 and count(graphs, SDPA) == 1


@pytest.mark.parametrize("enabled, rewrites", [(None, 1), (False, 0)])
def test_end_to_end_through_inductor_on_the_cpu(enabled, rewrites, cpu_kernel, captured, counters, assert_close):
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 24, 32)
    options = {"mode": "max-optimize", "attention_kernel.min_speedup": 1e-9}
    if enabled is not None:
        options["attention_kernel.enabled"] = enabled
    with torch.no_grad():
        out = torch.compile(model, backend="nexfort", options=options)(x)
        assert_close(out, model(x), tol=1e-5)
    assert captured and counters["backend"]["fallbacks"] == 0
    assert counters["pass"]["attention_kernel"] == rewrites and count(captured, OP) == rewrites
    assert cpu_kernel.n > 0 if rewrites else cpu_kernel.n == 0


def test_plugin_configuration(cpu_kernel):
    from nexfort.core.backend import collect_passes
    from nexfort.core.config import resolve_config
    from nexfort.core.plugins import plugin_names

    assert "attention_kernel" in plugin_names()

    def names(**spec):
        return [p.name for p in collect_passes(resolve_config(spec))]

    assert "attention_kernel" in names(mode="max-optimize")
    assert "attention_kernel" not in names(mode="")
    assert "attention_kernel" not in names(mode="max-optimize", options={"attention_kernel.enabled": False})
    assert "attention_kernel" in names(mode="max-optimize", options={"attention_kernel.kernels": ["bshd-math"]})
    with pytest.raises(NexfortConfigError, match=r"Unknown attention kernel 'fa3'; did you mean 'fa4'\?.*Valid"):
        names(mode="max-optimize", options={"attention_kernel.kernels": ["fa3"]})
    if not K.registered_kernels()["fa4"].available("cuda"):
        with pytest.raises(ImportError, match=r"pip install \"nexfort-passes\[cuda\]\""):
            names(mode="max-optimize", options={"attention_kernel.kernels": ["fa4"]})
    with pytest.raises(NexfortConfigError, match="'attention_kernel.min_speedup' must be a number > 0"):
        names(mode="max-optimize", options={"attention_kernel.min_speedup": 0})


def _fa4_missing() -> str:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if torch.cuda.get_device_capability()[0] not in (9, 10):
        return "FlashAttention-4 needs a Hopper or Blackwell GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return 'FlashAttention-4 is not installed (pip install --pre "flash-attn-4")'
    return ""


@pytest.mark.gpu
@pytest.mark.skipif(bool(_fa4_missing()), reason=_fa4_missing() or "n/a")
@pytest.mark.parametrize("mode", ["max-optimize", "max-optimize:cudagraphs"])
def test_gpu_joint_attention_with_flash_attention_4(mode, captured, counters):
    """SD3's joint attention shape (heads of 64) in fp16 through Inductor, with and without CUDA graphs: the pass
    fires, FlashAttention-4 is timed, and the output stays as close to a float32 reference as eager's."""
    torch.manual_seed(0)
    model = Attention(dim=1536, heads=24).cuda().eval()
    half = copy.deepcopy(model).half()
    x = torch.randn(2, 4429, 1536, device="cuda")
    with torch.no_grad():
        ref = model(x)
        eager = half(x.half())
        compiled = torch.compile(half, backend="nexfort", options={"mode": mode})
        for _ in range(3):  # CUDA graphs: warm-up, record, replay
            out = compiled(x.half()).clone()

    def err(t):
        return float((t.double() - ref.double()).norm() / ref.double().norm())

    assert counters["pass"]["attention_kernel"] == 1 and count(captured, OP) == 1
    assert set(choices().values()) <= {"sdpa", "fa4"} and choices(), choices()
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert err(out) <= 2 * err(eager) + 1e-3, (err(out), err(eager))


def test_the_sleep_before_the_timed_calls_outlasts_their_queueing():
    """The sleep kernel must still run when the host has queued the timed calls (else a kernel with a slow launch
    path is timed by its launches): the host's queueing time, with a margin, in the GPU's clock cycles."""
    assert K.sleep_cycles(4.0, 2.0e6) == int((4.0 * K.SLEEP_MARGIN + 0.1) * 2.0e6)
    assert K.sleep_cycles(4.0, 2.0e6) > 4.0 * 2.0e6  # longer than the queueing itself
    assert K.sleep_cycles(0.0, 1.0e6) == int(0.1 * 1.0e6)  # the short sleep where launching is fast
    assert K.sleep_cycles(1e9, 2.0e6) == int(K.MAX_SLEEP_MS * 2.0e6)  # bounded
    assert K.sleep_cycles(-1.0, 2.0e6) == int(0.1 * 2.0e6) and K.sleep_cycles(0.0, 1.0) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_timing_counts_the_gpu_not_a_slow_launch():
    """A call whose host launch takes 1 ms (Python sleep) for ~0.05 ms of GPU work is timed well below 1 ms: its
    calls are queued behind a sleep long enough for the host to queue them all."""
    import time

    x = torch.randn(1024, 1024, device="cuda")

    def slow_launch():
        time.sleep(1e-3)
        return x * 2

    fast = K._time(lambda: x * 2, x.device, 10)
    slow = K._time(slow_launch, x.device, 10)
    assert slow < 0.5 and slow < fast * 3 + 0.05, (slow, fast)
