"""Timing and error helpers of the attention scripts in this folder (``python benchmarks/gpu/<script>.py`` puts the
folder on ``sys.path``)."""
import statistics

import torch


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error; NaN when ``out`` holds a non-finite value (NaN never passes)."""
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("nan")
    return (torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)).item()


def one_call_ms(fn, iters: int = 30, warmups: int = 5) -> float:
    """Median over ``iters`` of one call between two CUDA events, after ``warmups`` calls (includes the host's launch
    time when the GPU is idle: see ``queued_ms``)."""
    for _ in range(warmups):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def queued_ms(fn, reps: int = 20, device: str = "cuda") -> float:
    """GPU time per call with the calls queued back to back: the timing ``torch.ops.nexfort.attention`` uses (on
    the CPU, for a smoke run: the median of ``reps`` calls)."""
    from nexfort.passes.attention_kernel import kernels

    return kernels._time(fn, torch.device(device), reps)
