#!/usr/bin/env python
"""Text-to-image benchmark: eager vs torch.compile (Inductor) vs nexfort on a diffusers pipeline.

Examples::

    python benchmarks/text_to_image.py --compiler all --output-json out.json          # built-in PixArt-α
    python benchmarks/text_to_image.py --model PixArt-alpha/PixArt-XL-2-1024-MS --scheduler none --steps 20 \\
        --height 512 --width 768 --compiler nexfort --compiler-config '{"mode": "max-optimize:max-autotune"}'
    python benchmarks/text_to_image.py --denoiser-only --compiler all --height 1024 --width 1024
    python benchmarks/text_to_image.py --model sd3-medium --denoiser-only --compiler all --height 1024 --width 1024

The default model is the PixArt-α XL-2 1024-MS architecture with random weights (a small variant of it on a
machine without a GPU), with random T5-shaped prompt embeddings: nothing is downloaded. Other built-in names
(``--model``): pixart-alpha-small, sdxl, sdxl-small, sd3-medium (Stable Diffusion 3 medium's MMDiT and 16-channel
VAE, random CLIP+T5-shaped prompt and pooled embeddings) and the CPU-sized tiny-pixart, tiny-sdxl, tiny-sd3.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nexfort_bench import cli  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(argv, family="pixart", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
