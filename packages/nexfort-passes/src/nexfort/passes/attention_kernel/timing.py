"""How the ``attention_kernel`` op times its candidates (:func:`_time`): the GPU time of calls queued back to back
behind a sleep kernel that outlasts the host's queueing, so that a kernel with a slow Python launch path is timed by
its kernel, as it runs inside a model (a full queue, or a CUDA graph's replay)."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

#: the sleep before the queued calls: this share longer than the host took to queue them the round before
SLEEP_MARGIN = 1.5
MAX_SLEEP_MS = 200.0


def sleep_cycles(host_ms: float, clock_khz: float) -> int:
    """GPU clock cycles for ``torch.cuda._sleep`` that outlast queueing calls that took the host ``host_ms``
    (:data:`SLEEP_MARGIN` times, plus 0.1 ms; at most :data:`MAX_SLEEP_MS`), at an SM clock of ``clock_khz``."""
    ms = min(MAX_SLEEP_MS, max(0.0, float(host_ms)) * SLEEP_MARGIN + 0.1)
    return max(1, int(ms * float(clock_khz)))


def _clock_khz(device: torch.device) -> float:
    """The SM clock (kHz) ``torch.cuda._sleep`` counts in; 2 GHz where this torch does not say (Hopper's boost)."""
    rate = getattr(torch.cuda.get_device_properties(device), "clock_rate", None)
    return float(rate) if rate else 2.0e6


def _time(fn: Callable[[], torch.Tensor], device: torch.device, reps: int) -> float:
    """Milliseconds per call. On CUDA: ``reps`` calls queued back to back behind a sleep kernel, between two events,
    three times, the median: the GPU time of the calls, not the host's time to launch them (a kernel with a slow
    Python launch path timed one call at a time looks slower than it runs in a model, where the queue is full or a
    CUDA graph replays it). The sleep outlasts the host's queueing of the calls (measured in the round before:
    :func:`sleep_cycles`); with a fixed 0.1 ms sleep FA4's launches (Python, CuTe DSL) likely drained the queue on
    FLUX's attention, where its GPU time is 8 % below cuDNN's (H200 profile, 2026-12-04), and SDPA was kept."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        host_ms = (time.perf_counter() - t0) * 1e3  # the queueing time (the GPU runs behind or alongside)
        torch.cuda.synchronize(device)
        clock = _clock_khz(device)
        samples = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(sleep_cycles(host_ms, clock))
            t0 = time.perf_counter()
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            host_ms = max(host_ms, (time.perf_counter() - t0) * 1e3)
            end.synchronize()
            samples.append(start.elapsed_time(end) / reps)
        return statistics.median(samples)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
