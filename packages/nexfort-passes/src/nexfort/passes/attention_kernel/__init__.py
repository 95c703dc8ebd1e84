"""Attention kernels chosen per shape at run time: SDPA calls become ``torch.ops.nexfort.attention``, which runs
the fastest of SDPA and the installed kernels (FlashAttention-4 on Hopper/Blackwell) whose output matches SDPA's.

    from nexfort.passes.attention_kernel import AttentionKernel, register_kernel
    unregister = register_kernel(AttentionKernel("mine", run, supports, available))   # a third party's kernel

:mod:`.kernels` holds the op, the choice and the registry; :mod:`.plugin` the pass and ``options.attention_kernel``.
"""

from __future__ import annotations

from nexfort.passes.attention_kernel.kernels import (
    AttentionKernel,
    available_kernels,
    choices,
    clear_choices,
    register_kernel,
    registered_kernels,
)

__all__ = ["AttentionKernel", "available_kernels", "choices", "clear_choices", "register_kernel", "registered_kernels"]
