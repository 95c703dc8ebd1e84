#!/usr/bin/env python
"""Text to image with an SDXL pipeline compiled by nexfort (compared with eager and Inductor on request).

Examples::

    python examples/text_to_image_sdxl.py --compiler nexfort --output-image sdxl.png
    python examples/text_to_image_sdxl.py --model stabilityai/stable-diffusion-xl-base-1.0 --compiler nexfort \\
        --compiler-config '{"mode": "max-optimize:max-autotune", "memory_format": "channels_last"}' \\
        --run_multiple_resolutions 1 --run_rare_resolutions 1

The default model is the SDXL base UNet architecture with random weights (a small variant of it on a machine
without a GPU) and random CLIP-shaped prompt embeddings: nothing is downloaded. ``--run_multiple_resolutions``
runs every pair of {1024, 768, 512, 256}; ``--run_rare_resolutions`` 544x408 and 960x720.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from nexfort_bench import cli  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(argv, family="sdxl", description=__doc__.split("\n\n")[0],
                    multiple=cli.multiple_resolutions(), rare=cli.RARE_RESOLUTIONS)


if __name__ == "__main__":
    sys.exit(main())
