"""Helpers shared by the tests."""

from __future__ import annotations

import importlib.util
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(rel: str):
    """The script at ``rel`` (relative to the repository root), imported as a module of its own."""
    path = os.path.join(ROOT, rel)
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").replace(".py", ""), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error; NaN/inf anywhere gives inf so it never passes a tolerance."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
