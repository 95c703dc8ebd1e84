"""Flux's q/k RMSNorm + rotary embedding in one pass: the op (:mod:`.kernels`) and the pass that rewrites graphs to it
(:mod:`.plugin`, the ``qk_norm_rope`` plugin, off by default)."""

from nexfort.passes.qk_norm_rope.kernels import REGISTERED, reference, rms_norm_rope

__all__ = ["REGISTERED", "reference", "rms_norm_rope"]
