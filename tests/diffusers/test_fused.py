"""QKV projections fused by max-optimize keep one copy of their weights (nexfort.diffusers.fused): the unfused
layers become views of the fused rows; outputs are unchanged, updates reach both, a mismatching group is left
alone, and the plugin does it when it fuses."""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")

from nexfort.diffusers import fused as fused_mod  # noqa: E402
from nexfort.diffusers import plugin  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from nexfort_bench import inputs, models  # noqa: E402


def _param_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind the parameters (views of one storage count once)."""
    storages = {}
    for p in module.parameters():
        s = p.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-pixart"])
def test_fused_projections_hold_one_copy_and_match_eager(model, assert_close):
    loaded = models.load_pipeline(model, torch.float32, "cpu")
    den = loaded.denoiser
    kw = inputs.denoiser_kwargs(loaded, batch=1, height=64, width=64, seed=5, dtype=torch.float32, device="cpu")
    before_bytes = _param_bytes(den)
    with torch.inference_mode():
        ref = den(**kw)[0]
    den.fuse_qkv_projections()
    fused_bytes = _param_bytes(den)
    assert fused_bytes > before_bytes  # diffusers' fuse keeps both copies
    groups = fused_mod.fused_groups(den)
    assert groups
    assert fused_mod.share_fused_weights(den) == len(groups)
    assert _param_bytes(den) == before_bytes, "the unfused copies must be freed"
    if model == "tiny-sd3":
        assert any(f is getattr(m, "to_added_qkv", None) for m in den.modules() for f, _ in groups)
    for f, parts in groups:
        assert all(p.weight.untyped_storage().data_ptr() == f.weight.untyped_storage().data_ptr() for p in parts)
    with torch.inference_mode():
        out = den(**kw)[0]
    assert_close(out, ref, tol=1e-5)
    # an in-place update of an unfused layer reaches the fused weight the compiled graph reads
    f, parts = groups[0]
    with torch.no_grad():
        parts[-1].weight.mul_(2.0)
    rows = parts[-1].weight.shape[0]
    assert torch.equal(f.weight[-rows:], parts[-1].weight)
    assert fused_mod.share_fused_weights(den) == len(groups)  # idempotent: already views


def test_group_whose_values_differ_is_left_alone():
    loaded = models.load_pipeline("tiny-pixart", torch.float32, "cpu")
    den = loaded.denoiser
    den.fuse_qkv_projections()
    groups = fused_mod.fused_groups(den)
    f, parts = groups[0]
    with torch.no_grad():
        parts[0].weight.add_(1.0)  # the fused copy no longer matches (changed after fusing)
    kept = parts[0].weight
    assert fused_mod.share_fused_weights(den) == len(groups) - 1
    assert parts[0].weight is kept and kept.untyped_storage().data_ptr() != f.weight.untyped_storage().data_ptr()
    # and a module without fused projections has no group
    assert fused_mod.fused_groups(models.load_pipeline("tiny-pixart", torch.float32, "cpu").denoiser) == []


def test_plugin_frees_the_copies_when_it_fuses():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"flags": {"max_optimize": True}, "options": {"diffusers": {"fuse_qkv_projections": True}}})
    den = models.load_pipeline("tiny-pixart", torch.float32, "cpu").denoiser
    before = _param_bytes(den)
    msg = plugin.nexfort_transform_module(den, cfg)
    assert "fused QKV projections" in msg and "copies freed" in msg
    assert _param_bytes(den) == before
