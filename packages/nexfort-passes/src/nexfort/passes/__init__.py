"""nexfort-passes: nexfort's graph rewrites for diffusion models.

Each pass is its own module and its own pluggy plugin (entry-point group ``nexfort``), so that one can be
blocked with ``NEXFORT_DISABLED_PLUGINS=attention`` or switched off with ``options={"attention.enabled": False}``:

- :mod:`nexfort.passes.attention`: decomposed attention -> ``scaled_dot_product_attention`` (pre_grad).
"""

from __future__ import annotations

__version__ = "0.1.0"
