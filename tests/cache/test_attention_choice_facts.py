"""The attention_kernel op's choice per shape survives a warm start: kept as a fact in the cache's store
(nexfort.core.facts), recalled by a new process instead of timing the kernels again; a changed set of kernels, a
kernel that is gone, or a cache that is off means timing again."""

from __future__ import annotations

import pytest
import torch

from nexfort.core import counters
from nexfort.core.config import resolve_config
from nexfort.passes.attention_kernel import AttentionKernel, register_kernel
from nexfort.passes.attention_kernel import kernels as K


def bshd(q, k, v, scale):
    s = scale if scale is not None else q.shape[-1] ** -0.5
    return ((q @ k.transpose(-1, -2)) * s).softmax(-1) @ v


class Calls:
    def __init__(self):
        self.n, self.ok = 0, True

    def __call__(self, *args):
        self.n += 1
        return bshd(*args)


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(K, "_fact_config", None)
    run = Calls()
    unregister = register_kernel(AttentionKernel("bshd-math", run, lambda q, k, v: run.ok and q.device.type == "cpu",
                                                 lambda device_type: device_type == "cpu", dtypes=(torch.float32,)))
    counters.clear()
    yield run
    unregister()
    K.clear_choices()


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 4, 24, 8, generator=g) for _ in range(3))


def choose(q, k, v):
    out = K.attention_impl(q, k, v, None, K.ALL, 1e-9, 1e-2)  # min_speedup 1e-9: the kernel always wins
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-5)
    return list(K.choices().values())


def test_a_warm_process_recalls_the_choice(cache_env, kernel):
    cfg = resolve_config({"mode": "cache-all"})
    K.remember_choices_with(cfg)
    q, k, v = qkv()
    assert choose(q, k, v) == ["bshd-math"]
    timed = kernel.n
    assert timed > 1 and counters["facts"]["probed"] == 1 and counters["cache"]["facts_saved"] == 1

    K.clear_choices()  # a new process: nothing chosen in memory
    q, k, v = qkv(1)  # other values, the same signature
    assert choose(q, k, v) == ["bshd-math"]
    assert kernel.n == timed + 1, "recalled: the kernel runs once, without timing"
    assert counters["attention_kernel"]["recalled"] == 1 and counters["facts"]["recalled"] == 1


def test_another_shape_or_kernel_set_is_timed_again(cache_env, kernel):
    cfg = resolve_config({"mode": "cache-all"})
    K.remember_choices_with(cfg)
    choose(*qkv())
    K.clear_choices()
    q, k, v = (t[:, :, :12] for t in qkv())  # near miss: another sequence length
    choose(q.contiguous(), k.contiguous(), v.contiguous())
    assert counters["facts"]["probed"] == 2 and counters["attention_kernel"]["recalled"] == 0

    K.clear_choices()
    extra = register_kernel(AttentionKernel("other", bshd, lambda q, k, v: True, lambda t: t == "cpu",
                                            dtypes=(torch.float32,)))
    try:  # one more kernel that could win: the recorded choice does not apply
        choose(*qkv())
    finally:
        extra()
    assert counters["facts"]["probed"] == 3 and counters["attention_kernel"]["recalled"] == 0


def test_a_recorded_kernel_that_cannot_run_here_is_chosen_again(cache_env, kernel):
    cfg = resolve_config({"mode": "cache-all"})
    K.remember_choices_with(cfg)
    choose(*qkv())
    K.clear_choices()
    kernel.ok = False
    assert choose(*qkv()) == ["sdpa"]  # recalled "bshd-math", which refuses these inputs now: timed again
    assert counters["attention_kernel"]["recalled"] == 0


def test_without_the_cache_every_process_times_again(cache_env, kernel):
    K.remember_choices_with(resolve_config({"mode": ""}))
    choose(*qkv())
    timed = kernel.n
    K.clear_choices()
    choose(*qkv())
    assert kernel.n > timed + 1 and counters["attention_kernel"]["recalled"] == 0
