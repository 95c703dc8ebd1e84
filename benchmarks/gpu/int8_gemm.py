"""``torch.ops.nexfort.int8_scaled_mm`` against the other GEMMs a linear layer can run, at the denoisers' shapes.

Per shape (rows m = tokens x batch, k = in features, n = out features), the GPU time per call (queued back to back:
``_timing.queued_ms``) and TFLOP/s of:
- ``fp16``: the unquantized GEMM with its bias (``F.linear``: what the non-quant mode runs);
- ``int_mm``: the int8 path of ``quant.gemm_kernel: auto``: ``torch._int_mm`` and the rescale + bias, compiled by
  Inductor (the int32 result written and read back);
- ``op``: ``torch.ops.nexfort.int8_scaled_mm`` (the rescale + bias in the epilogue; autotuned at the first call);
- ``fp8``: ``torch._scaled_mm`` row-wise with its bias (the fp8 dynamic types; GPUs of compute capability 8.9+).
and the op's error against the float GEMM (and int_mm's, the same integers). Shapes: ``--preset`` pixart (1024²,
CFG batch 2: 8192 rows), flux (1024²: 4096 image + 512 text rows), or ``--shape MxKxN`` (repeatable).
The whole-model effect: ``bash benchmarks/gpu/run.sh bench ... --compiler-config '{"mode": "...:quant",
"options": {"quant.type": "int8_dynamic", "quant.activation_kernel": "triton", "quant.gemm_kernel": "triton"}}'``.

    python benchmarks/gpu/int8_gemm.py [--preset pixart|flux] [--shape 8192x1152x4608 ...] [--dtype fp16|bf16]
    (--device cpu: a smoke run of the script itself, tests/benchmarks/test_gpu_runner.py)
"""
import argparse
import json

import torch
from _timing import queued_ms, rel_l2

from nexfort.passes.quant import int8_gemm
from nexfort.passes.quant.int8 import int8_matmul, quantize_rows_int8

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: (m, k, n) of each preset: the linears of one block (fused QKV, attention out, feed-forward in and out, ...)
PRESETS = {
    "pixart": [(8192, 1152, 3456), (8192, 1152, 1152), (8192, 1152, 4608), (8192, 4608, 1152), (240, 4096, 2304)],
    "flux": [(4096, 3072, 9216), (4096, 3072, 3072), (4096, 3072, 12288), (4096, 12288, 3072), (4608, 15360, 3072),
             (4608, 3072, 21504)],
}


def int_mm_path(a, w_t, sa, sw_t, bias, dtype):
    """What ``Int8DynamicLinear`` does with ``gemm_kernel="auto"`` after quantizing its input."""
    return ((int8_matmul(a, w_t).to(torch.float32) * sa * sw_t).to(dtype) + bias)


def measure(shape, args):
    m, k, n = shape
    dtype, dev = DTYPES[args.dtype], args.device
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(m, k, device=dev, generator=g).to(dtype)
    w = (torch.randn(n, k, device=dev, generator=g) * k ** -0.5).to(dtype)
    bias = torch.randn(n, device=dev, generator=g).to(dtype)
    (a, sa), (wq, sw) = quantize_rows_int8(x), quantize_rows_int8(w)
    w_t, sw_t = wq.t(), sw.t()
    compiled = torch.compile(int_mm_path, dynamic=False)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.float(), w.float(), bias.float())
        op = int8_gemm.scaled_mm(a, wq, sa, sw, bias, dtype)
        via_int_mm = compiled(a, w_t, sa, sw_t, bias, dtype)
        times = {"fp16": queued_ms(lambda: torch.nn.functional.linear(x, w, bias), device=dev),
                 "int_mm": queued_ms(lambda: compiled(a, w_t, sa, sw_t, bias, dtype), device=dev),
                 "op": queued_ms(lambda: int8_gemm.scaled_mm(a, wq, sa, sw, bias, dtype), device=dev)}
        if dev == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
            xf = (x.float() / (x.abs().amax(1, keepdim=True).float() / 448)).to(torch.float8_e4m3fn)
            wf = (w.float() / (w.abs().amax(1, keepdim=True).float() / 448)).to(torch.float8_e4m3fn)
            xs, ws = x.abs().amax(1, keepdim=True).float() / 448, (w.abs().amax(1, keepdim=True).float() / 448).t()
            times["fp8"] = queued_ms(lambda: torch._scaled_mm(xf, wf.t(), xs, ws, bias=bias, out_dtype=dtype,
                                                              use_fast_accum=True), device=dev)
    flop = 2 * m * k * n
    row = {"shape": f"{m}x{k}x{n}", **{f"{key}_us": round(t * 1e3, 1) for key, t in times.items()},
           **{f"{key}_TFLOPs": round(flop / (t * 1e-3) / 1e12, 1) for key, t in times.items()},
           "op_vs_int_mm": round(times["int_mm"] / times["op"], 3), "op_vs_fp16": round(times["fp16"] / times["op"], 3),
           "op_rel_l2": rel_l2(op, ref), "int_mm_rel_l2": rel_l2(via_int_mm, ref), "op_vs_int_mm_rel_l2":
           rel_l2(op, via_int_mm), "gpu": torch.cuda.get_device_name() if dev == "cuda" else "none (CPU smoke run)",
           "torch": torch.__version__, "dtype": args.dtype}
    return row


def parse_shape(text: str):
    try:
        m, k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: MxKxN, e.g. 8192x1152x4608") from None
    return m, k, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="pixart")
    p.add_argument("--shape", type=parse_shape, action="append", default=[], help="MxKxN (replaces the preset)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--device", default="cuda", help="cuda (the measurement); cpu: a smoke run of the script")
    args = p.parse_args(argv)
    print(torch.cuda.get_device_name() if args.device == "cuda" else "CPU", torch.__version__)
    rows = [measure(shape, args) for shape in (args.shape or PRESETS[args.preset])]
    for r in rows:
        print(json.dumps(r))
    keys = [k for k in ("fp16", "int_mm", "op", "fp8") if f"{k}_us" in rows[0]]
    print(f"{'m x k x n':18} " + " ".join(f"{k + ' us':>9}" for k in keys) + f" {'op/int_mm':>9} {'op/fp16':>8}"
          f" {'op rel L2':>9}")
    for r in rows:
        print(f"{r['shape']:18} " + " ".join(f"{r[k + '_us']:9.1f}" for k in keys) + f" {r['op_vs_int_mm']:9.3f}"
              f" {r['op_vs_fp16']:8.3f} {r['op_rel_l2']:9.2e}")
    return rows


if __name__ == "__main__":
    main()
