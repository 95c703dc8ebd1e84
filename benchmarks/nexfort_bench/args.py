"""The benchmark's command-line arguments and the resolution lists (what ``benchmarks/text_to_image.py`` and
``examples/text_to_image_sdxl.py`` parse; :mod:`nexfort_bench.cli` runs them)."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from nexfort_bench import inputs, models

COMPILERS = ("none", "inductor", "nexfort", "all")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: keys of --compiler-config that compile_pipe takes besides nexfort's configuration
PIPE_KEYS = ("ignores", "fuse_qkv_projections", "text_encoders")
CONFIG_KEYS = ("mode", "options", "dynamic", "fullgraph", "memory_format")


def str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if v.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1, got {v!r}")


def parser(description: str, default_model_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help=f"hub id, local folder or built-in name "
                   f"({', '.join(models.BUILTIN)}: published architectures, random weights, nothing downloaded); "
                   f"default: {default_model_help}")
    p.add_argument("--scheduler", default="none", choices=list(models.SCHEDULERS),
                   help="'none' keeps the model's scheduler")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--compiler", choices=COMPILERS, default="nexfort",
                   help="'all': eager, torch.compile default (inductor), torch.compile's own best modes "
                        "(--inductor-modes) and nexfort in one process, same inputs")
    p.add_argument("--inductor-modes", default=None,
                   help="with --compiler all: torch.compile's own modes to time besides its default, comma-separated "
                        "(each a run named inductor:<mode>; the fastest is the 'torch.compile best' the summary "
                        "compares with). Default: reduce-overhead,max-autotune-no-cudagraphs on a GPU, none on the "
                        "CPU (they differ from the default on GPUs only); '' for none")
    p.add_argument("--torchao", default=None, metavar="TYPE",
                   help="with --compiler all: also a run named torchao:TYPE, torchao's quantization of the layers that "
                        "nexfort's quantization type TYPE takes (fp8_e4m3_e4m3_dynamic, int8_dynamic, ...), then "
                        "torch.compile's default mode (pip install torchao)")
    p.add_argument("--torchao-regional", action="store_true",
                   help="with --torchao: compile the quantized denoiser's repeated blocks instead of the whole model "
                        "(diffusers' compile_repeated_blocks practice; the run is named torchao:TYPE:regional): a "
                        "cold compile of about one block, where torchao's whole-model compile outlasts a time limit")
    p.add_argument("--skip", default="", metavar="RUNS",
                   help="with --compiler all: leave out these references, comma-separated (inductor: torch.compile's "
                        "default), to fit a long compile into a time limit; eager and nexfort always run")
    p.add_argument("--drift-seeds", type=int, default=0, metavar="N",
                   help="with --compiler all, whole pipeline: after timing, each run calls the pipeline once per seed "
                        "(--seed, --seed+1, ...) and the latents after every step are compared with eager's (mean "
                        "relative L2 over the seeds, per step, every run side by side; nexfort_bench.drift)")
    p.add_argument("--drift-bound", type=float, default=None,
                   help="with --drift-seeds: the verdict's bound on the final step's mean drift (issue 18: 0.05)")
    p.add_argument("--compiler-config", default=None,
                   help='JSON for compile_pipe: {"mode": ..., "options": {...}, "dynamic": ..., '
                        '"memory_format": "channels_last", "ignores": [...], "fuse_qkv_projections": ...}; without '
                        '"mode", nexfort compiles in compile_pipe\'s recommended mode for the device '
                        '(max-optimize:max-autotune:low-precision:cudagraphs on a GPU)')
    p.add_argument("--also-nexfort", action="append", default=[], metavar="LABEL=JSON",
                   help="with --compiler all: one more nexfort run, named nexfort:LABEL, compiled with JSON (the "
                        "form of --compiler-config) after the main one, on the model built again (a run before may "
                        "have changed it in place: quant); repeatable. Compares nexfort's own variants in the "
                        "process and on the inputs of the references")
    p.add_argument("--run_multiple_resolutions", type=str2bool, default=False)
    p.add_argument("--run_rare_resolutions", type=str2bool, default=False)
    p.add_argument("--denoiser-only", action="store_true",
                   help="time one denoiser forward with classifier-free guidance (batch 2 x batch-size)")
    p.add_argument("--warmups", type=int, default=2, help="untimed calls first (the first one compiles)")
    p.add_argument("--iters", type=int, default=3, help="timed calls")
    p.add_argument("--guidance-scale", type=float, default=4.5)
    p.add_argument("--inductor-cache", choices=("fresh", "shared"), default="fresh",
                   help="'fresh': each compiler compiles into its own new Inductor/Triton cache, so that a compiler "
                        "run later in the process cannot reuse an earlier one's kernels (honest compile times); "
                        "'shared': the process's usual cache (TORCHINDUCTOR_CACHE_DIR)")
    p.add_argument("--parallel", default=None,
                   help="one image over several processes, e.g. 'cfg=2,ulysses=2' (cfg x ulysses x ring = the world "
                        "size), launched with `torchrun --nproc-per-node N benchmarks/text_to_image.py ...`: "
                        "nexfort.diffusers.parallelize_pipe; rank 0 prints and writes the files")
    p.add_argument("--output-image", default=None, help="PNG of the (last compiler's) first image")
    p.add_argument("--output-json", default=None)
    p.add_argument("--output-chart", default=None, help="PNG bar chart (default with --compiler all: next to the "
                   "JSON, or text_to_image_chart.png)")
    return p


def parse_compiler_config(text: Optional[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(nexfort configuration keys, compile_pipe keyword arguments)``; validated before any model loads."""
    if not text:
        return {}, {}
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--compiler-config is not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(spec, dict):
        raise SystemExit(f"--compiler-config must be a JSON object, got {text!r}")
    pipe_kw = {k: spec.pop(k) for k in PIPE_KEYS if k in spec}
    if "ignores" in pipe_kw and isinstance(pipe_kw["ignores"], str):
        pipe_kw["ignores"] = [pipe_kw["ignores"]]
    return spec, pipe_kw


def parse_also_nexfort(items: List[str]) -> List[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """``--also-nexfort LABEL=JSON`` items as ``(label, configuration keys, compile_pipe keyword arguments)``."""
    out: List[Tuple[str, Dict[str, Any], Dict[str, Any]]] = []
    for item in items:
        label, sep, text = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", label) or label in {x[0] for x in out}:
            raise SystemExit(f"--also-nexfort {item!r}: LABEL=JSON with a new label of letters, digits and _.+- "
                             f"(e.g. 'noprologue={{\"mode\": \"quant\"}}')")
        cfg, pipe_kw = parse_compiler_config(text)
        if not text.strip():
            raise SystemExit(f"--also-nexfort {item!r}: the JSON after '=' is empty")
        out.append((label, cfg, pipe_kw))
    return out


def multiple_resolutions() -> List[Tuple[int, int]]:
    sizes = (1024, 768, 512, 256)
    return list(itertools.product(sizes, sizes))


RARE_RESOLUTIONS = [(544, 408), (960, 720)]


def size_limits(loaded: models.Loaded) -> Tuple[int, Optional[int]]:
    """``(multiple, max)`` in pixels of the sizes the denoiser takes (``max`` None when unbounded): nexfort's own
    :func:`nexfort.diffusers.dynamic.valid_sizes_hint`. A patch-2 transformer (PixArt, SD3) needs multiples of 16,
    a UNet of the VAE's 8; a transformer that crops a fixed position table (SD3: ``pos_embed_max_size`` patches
    a side) takes at most ``pos_embed_max_size * patch_size * 8`` pixels (3072 for SD3-medium, 1536 for
    tiny-sd3)."""
    from nexfort.diffusers.dynamic import valid_sizes_hint

    return valid_sizes_hint(loaded.denoiser, inputs.vae_scale(loaded.pipe))


def aligned(loaded: models.Loaded, resolutions: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Round sizes down to what the model takes (:func:`size_limits`; 544x408 becomes 544x400 for PixArt).
    Duplicates are dropped, and so are sizes above the maximum (with a note on stderr)."""
    align, limit = size_limits(loaded)
    out: List[Tuple[int, int]] = []
    for h, w in resolutions:
        hw = (max(align, h // align * align), max(align, w // align * align))
        if limit is not None and max(hw) > limit:
            print(f"skipping {hw[0]}x{hw[1]}: {loaded.info.get('denoiser')} takes at most {limit} pixels a side "
                  "(its position table)", file=sys.stderr)
            continue
        if hw not in out:
            out.append(hw)
    return out
