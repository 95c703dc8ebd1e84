"""``torch.ops.nexfort.int8_scaled_mm`` (nexfort.passes.quant.int8_gemm): the int8 GEMM with its rescale and bias in
the epilogue, used by the int8 dynamic linears with ``gemm_kernel="triton"`` (option ``quant.gemm_kernel``).

The CPU runs the op's torch-ops implementation (the graph the GPU has); Triton's interpreter runs the kernel itself
where installed (fp16/fp32 outputs: the interpreter truncates to bfloat16 instead of rounding); the GPU tests check
the autotuned kernel at PixArt's and Flux's sizes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from nexfort.passes.quant import Int8DynamicConfig, QuantizationError, config_for, int8_gemm, kernels, quantize_
from nexfort.passes.quant.int8 import quantize_rows_int8
from tests.helpers import NO_INTERPRETER, rel_l2, run_interpreted

pytestmark = pytest.mark.skipif(not int8_gemm.REGISTERED or not kernels.REGISTERED,
                                reason=f"torch {torch.__version__} has no torch.library.custom_op (torch 2.4+)")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernel)")


def operands(m, k, n, bias=True, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    (a, sa), (wq, sw) = quantize_rows_int8(x), quantize_rows_int8(w)
    return [t.to(device) if t is not None else None for t in (a, wq, sa, sw, b)] + [x @ w.t() + (0 if b is None else
                                                                                               b.float())]


def captured(model, *args, prologue=False):
    """Compile ``model`` with a backend that keeps the graphs (after the quant prologue pass with ``prologue``) and
    runs them eagerly: (output, graphs, the pass's rewrites)."""
    from nexfort.passes.quant.plugin import QuantOptions
    from nexfort.passes.quant.prologue import QuantProloguePass

    graphs, rewrites = [], []

    def backend(gm, example_inputs):
        work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
        rewrites.append(QuantProloguePass(QuantOptions())(work) if prologue else 0)
        graphs.append(work)
        return work.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=backend)(*args)
    return out, graphs, sum(rewrites)


def targets(graphs):
    return [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]


def op_calls(graphs):
    """How many calls of ``torch.ops.nexfort.int8_scaled_mm`` (the packet or its overload) ``graphs`` make."""
    return sum(t in ("nexfort.int8_scaled_mm", "nexfort.int8_scaled_mm.default") for t in targets(graphs))


# ------------------------------------------------------------------------------------------------ the op
@pytest.mark.parametrize("bias", [True, False])
def test_op_is_the_rescaled_integer_product(bias):
    """The op's torch-ops form: the exact int32 product rescaled (float32 epilogue), the float GEMM within the int8
    rounding."""
    a, w, sa, sw, b, exact = operands(40, 96, 48, bias=bias)
    out = int8_gemm.scaled_mm(a, w, sa, sw, b, torch.float32)
    ints = a.to(torch.int64) @ w.to(torch.int64).t()  # exact
    expect = ints.double() * sa.double() * sw.double().t() + (0 if b is None else b.double())
    assert out.dtype == torch.float32 and out.shape == (40, 48)
    assert torch.allclose(out.double(), expect, rtol=1e-6, atol=1e-6)
    assert 0 < rel_l2(out, exact) < 2e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_op_output_dtype_and_compiled_op_matches_eager(dtype):
    a, w, sa, sw, b, _ = operands(33, 64, 24, dtype=dtype)
    eager = int8_gemm.scaled_mm(a, w, sa, sw, b, dtype)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: int8_gemm.scaled_mm(*t, dtype), fullgraph=True)(a, w, sa, sw, b)
    assert eager.dtype == dtype and torch.equal(eager, compiled)


def test_op_rejects_bad_operands_naming_them():
    a, w, sa, sw, b, _ = operands(8, 32, 16)
    with pytest.raises(ValueError, match=r"int8_scaled_mm: a \(m, k\) and w \(n, k\) 2-D with the same k, got "
                                         r"\(8, 32\) and \(16, 16\)"):
        int8_gemm.scaled_mm(a, w[:, :16].contiguous(), sa, sw, b, torch.float32)
    with pytest.raises(ValueError, match="a and w int8, got torch.float32"):
        int8_gemm.scaled_mm(a.float(), w, sa, sw, b, torch.float32)
    with pytest.raises(ValueError, match=r"a_scale float32 \(8, 1\) and w_scale float32 \(16, 1\)"):
        int8_gemm.scaled_mm(a, w, sa.t().contiguous(), sw, b, torch.float32)
    with pytest.raises(ValueError, match=r"bias \(16,\) or None, got \(8,\)"):
        int8_gemm.scaled_mm(a, w, sa, sw, b[:8], torch.float32)
    with pytest.raises(ValueError, match="out_dtype torch.int32 is not one of torch.float16, torch.bfloat16"):
        int8_gemm.scaled_mm(a, w, sa, sw, b, torch.int32)


# ------------------------------------------------------------------------------------------------ the linears
class Block(torch.nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.fc1, self.fc2, self.proj = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim), \
            torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.proj(x + self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh")))


@pytest.mark.parametrize("activation_kernel", ["auto", "triton"])
def test_linears_call_the_op_and_match_eager(activation_kernel):
    """With gemm_kernel="triton" every int8 GEMM is the op (no _int_mm, no int32 result in the graph), in one graph,
    with the int_mm path's output (the same integers; the bias added before the cast instead of after) and eager's
    within the int8 rounding; the one-pass activation op and the prologue pass still apply."""
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 24, 64)
    with torch.no_grad():
        eager = model(x)
    via_int_mm, op_model = copy.deepcopy(model), copy.deepcopy(model)
    quantize_(via_int_mm, config_for("int8_dynamic", min_features=16, activation_kernel=activation_kernel))
    quantize_(op_model, Int8DynamicConfig(min_features=16, activation_kernel=activation_kernel, gemm_kernel="triton"))
    assert {m.gemm_kernel for m in op_model.modules() if hasattr(m, "gemm_kernel")} == {"triton"}
    ref, ref_graphs, _ = captured(via_int_mm, x)
    out, graphs, _ = captured(op_model, x)
    fused, fused_graphs, rewrites = captured(op_model, x, prologue=True)
    assert len(graphs) == 1 and op_calls(graphs) == 3 and op_calls(fused_graphs) == 3
    assert not any("_int_mm" in t or "matmul" in t for t in targets(graphs))
    assert op_calls(ref_graphs) == 0  # the near miss: the default GEMM is left as it was
    assert torch.isfinite(out).all() and rel_l2(out, ref) < 1e-5 and 0 < rel_l2(out, eager) < 3e-2
    # the one-pass activation op takes in GELU before fc2 (activation_kernel="triton" only: its quantize ops)
    assert rewrites == (1 if activation_kernel == "triton" else 0) and rel_l2(fused, out) < 1e-5


def test_linears_through_nexfort_compile_with_the_option():
    """``options={"quant.gemm_kernel": "triton"}`` reaches the int8 linears through nexfort_compile (Inductor on the
    CPU compiles the graph with the op in it), with dynamic shapes: one graph over three token counts, the output
    within the int8 rounding of eager's each time."""
    from nexfort.compilers import nexfort_compile
    from nexfort.core.counters import counters, reset

    torch.manual_seed(0)
    model = Block().eval()
    torch._dynamo.reset()
    reset()
    compiled = nexfort_compile(copy.deepcopy(model), mode="quant", dynamic=True, options={
        "quant.type": "int8_dynamic", "quant.min_features": 16, "quant.gemm_kernel": "triton"})
    for tokens in (24, 40, 72):
        x = torch.randn(2, tokens, 64)
        with torch.no_grad():
            eager, out = model(x), compiled(x)
        assert torch.isfinite(out).all() and 0 < rel_l2(out, eager) < 3e-2, tokens
    layers = [m for m in compiled.modules() if hasattr(m, "gemm_kernel")]
    assert len(layers) == 3 and {m.gemm_kernel for m in layers} == {"triton"}
    assert counters["backend"]["graphs"] == 1 and counters["backend"]["dynamic_graphs"] == 1


def test_bad_gemm_kernel_is_an_error_before_anything_changes():
    from nexfort.compilers import nexfort_compile

    with pytest.raises(QuantizationError, match="Unknown gemm_kernel 'cublas' for int8_dynamic; valid: auto, int_mm, "
                                                "triton"):
        Int8DynamicConfig(gemm_kernel="cublas")
    model = torch.nn.Linear(256, 256)
    before = model.weight.detach().clone()
    with pytest.raises(Exception, match="quant.gemm_kernel' must be one of auto, int_mm, triton, got 'x'"):
        nexfort_compile(model, mode="quant", options={"quant.type": "int8_dynamic", "quant.gemm_kernel": "x"})
    with pytest.raises(Exception, match="quant.gemm_kernel' applies to quant.type 'int8_dynamic'; quant.type 'fp8'"):
        nexfort_compile(model, mode="quant", options={"quant.type": "fp8", "quant.gemm_kernel": "triton"})
    with pytest.raises(Exception, match="quant.gemm_kernel' chooses nexfort's own kernels; with quant.engine "
                                        "'torchao'"):
        nexfort_compile(model, mode="quant", options={"quant.type": "int8_dynamic", "quant.engine": "torchao",
                                                      "quant.gemm_kernel": "triton"})
    assert type(model) is torch.nn.Linear and torch.equal(model.weight, before)


# ------------------------------------------------------------------------------------------------ the kernel
_INTERPRETED = r"""
import json, torch
from nexfort.passes.quant import int8_gemm
torch.manual_seed(0)
res = []
cases = (((37, 96, 40), True, torch.float16, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)),
         ((64, 64, 48), False, torch.float32, dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32, GROUP_M=8)),
         ((5, 80, 24), True, torch.float32, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1)))
for (m, k, n), bias, dt, cfg in cases:  # rows, columns and K (80: a partial last K tile) not multiples of the tiles
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    sa, sw = torch.rand(m, 1) / 100, torch.rand(n, 1) / 100
    b = torch.randn(n).to(dt) if bias else None
    out = int8_gemm.launch(a, w, sa, sw, b, dt, config=cfg)
    ref = int8_gemm.reference(a, w, sa, sw, b, dt)
    res.append({"dtype": out.dtype == dt, "err": float((out.float() - ref.float()).abs().max()),
                "scale": float(ref.float().abs().max())})
print(json.dumps(res))
"""


@pytest.mark.skipif(NO_INTERPRETER is not None, reason=str(NO_INTERPRETER))
def test_kernel_in_the_interpreter_matches_the_reference():
    """The Triton kernel itself (fixed tiles), run by Triton's interpreter on the CPU (a process of its own)."""
    for r in run_interpreted(_INTERPRETED):
        assert r["dtype"] and r["scale"] > 1 and r["err"] <= 1e-6 * r["scale"], r


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mkn", [(8192, 1152, 3456), (8192, 4608, 1152), (4096, 3072, 12288), (300, 1152, 1152),
                                 (17, 256, 512), (5, 80, 24)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_kernel_matches_reference(mkn, dtype):
    """The autotuned kernel at PixArt-α's (8192 tokens of CFG at 1024²) and Flux's sizes, and small odd ones: the
    reference's output but for the float32 epilogue's order (one output rounding)."""
    m, k, n = mkn
    a, w, sa, sw, b, exact = operands(m, k, n, dtype=dtype, device="cuda")
    out = int8_gemm.scaled_mm(a, w, sa, sw, b, dtype)
    ref = int8_gemm.reference(a, w, sa, sw, b, dtype)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 4e-3 and rel_l2(out, exact.cuda()) < 2e-2


@pytest.mark.gpu
@cuda
def test_gpu_compiled_linears_with_cuda_graphs_match_eager():
    """The int8 linears with the op under nexfort's quant mode with CUDA graphs (the autotuning runs before the
    capture): the output within the int8 rounding of eager's."""
    from nexfort.compilers import nexfort_compile

    torch.manual_seed(0)
    model = Block(1152).cuda().half().eval()
    x = torch.randn(2, 4096, 1152, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        eager = model(x)
        torch._dynamo.reset()
        compiled = nexfort_compile(copy.deepcopy(model), mode="max-optimize:low-precision:cudagraphs:quant", options={
            "quant.type": "int8_dynamic", "quant.activation_kernel": "triton", "quant.gemm_kernel": "triton"})
        for _ in range(3):
            out = compiled(x)
    assert torch.isfinite(out).all() and rel_l2(out, eager) < 3e-2
