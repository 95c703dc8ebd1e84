"""nexfort.diffusers.masks: the per-head repeat of attention masks without a batch-size guard."""

from __future__ import annotations

import pytest
import torch

from nexfort.diffusers import masks

pytest.importorskip("diffusers")


def _attention(heads: int = 3):
    from diffusers.models.attention_processor import Attention

    return Attention(query_dim=16, heads=heads, dim_head=4)


@pytest.mark.parametrize("out_dim", [3, 4])
@pytest.mark.parametrize("batch,length,target", [(2, 7, 7), (1, 5, 5), (3, 4, 9)])
def test_prepare_attention_mask_is_diffusers(out_dim, batch, length, target):
    """Same values, shape and dtype as diffusers' own method, with and without its padding branch."""
    attn = _attention()
    mask = torch.randn(batch, 1, length)
    ref = attn.prepare_attention_mask(mask, target, batch, out_dim)
    assert masks.make_attention_masks_dynamic(attn) == 1
    out = attn.prepare_attention_mask(mask, target, batch, out_dim)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref)


def test_mask_already_per_head_and_none_pass_through():
    attn = _attention(heads=2)
    masks.make_attention_masks_dynamic(attn)
    per_head = torch.randn(4, 1, 6)  # batch 2 x 2 heads already
    assert torch.equal(attn.prepare_attention_mask(per_head, 6, 2), per_head)
    assert attn.prepare_attention_mask(None, 6, 2) is None


def test_patches_diffusers_attention_only_and_once():
    """The PixArt transformer's Attention modules are patched once; a look-alike module that is not diffusers'
    Attention (a near miss: same method name) is left alone."""
    from diffusers import PixArtTransformer2DModel
    from tiny_pixart import TRANSFORMER

    model = PixArtTransformer2DModel(**TRANSFORMER)
    n_attn = sum(type(m).__name__ == "Attention" for m in model.modules())
    assert n_attn > 0
    assert masks.make_attention_masks_dynamic(model) == n_attn
    assert masks.make_attention_masks_dynamic(model) == 0  # already done

    class LookAlike(torch.nn.Module):
        heads = 2

        def prepare_attention_mask(self, attention_mask, target_length, batch_size, out_dim=3):
            return attention_mask

    other = LookAlike()
    assert masks.make_attention_masks_dynamic(other) == 0
    assert "prepare_attention_mask" not in vars(other)


def test_dynamic_plugin_transform_reports_the_masks():
    """compile_pipe(dynamic=True) runs the transform (the plugin says so); static compiles leave diffusers alone."""
    from tiny_pixart import tiny_pixart_pipe

    from nexfort.diffusers import compile_pipe

    pipe = tiny_pixart_pipe()
    compile_pipe(pipe, mode="jit", dynamic=True, ignores=["vae"])
    assert any(getattr(m, "_nexfort_mask", False) for m in pipe.transformer.modules())
    static = tiny_pixart_pipe()
    compile_pipe(static, mode="jit", ignores=["vae"])
    assert not any(getattr(m, "_nexfort_mask", False) for m in static.transformer.modules())
