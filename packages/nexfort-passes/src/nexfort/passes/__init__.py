"""nexfort-passes: nexfort's graph rewrites for diffusion models.

Each pass is its own module and its own pluggy plugin (entry-point group ``nexfort``), so that one can be
blocked with ``NEXFORT_DISABLED_PLUGINS=attention`` or switched off with ``options={"attention.enabled": False}``:

- :mod:`nexfort.passes.attention`: decomposed attention -> ``scaled_dot_product_attention`` (pre_grad).
- :mod:`nexfort.passes.linear_gelu`: ``gelu(linear(x))`` -> ``torch._addmm_activation`` (GELU in the GEMM's
  epilogue; pre_grad).
- :mod:`nexfort.passes.qk_norm_rope`: Flux's q/k RMSNorm + rotary embedding -> one op (pre_grad; off by default).
- :mod:`nexfort.passes.quant`: ``quantize_`` and the ``quant`` flag (fp8 linear layers; a module transform).
"""

from __future__ import annotations

__version__ = "0.1.0"
