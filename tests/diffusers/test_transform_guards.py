"""Module transforms change a module only after checking the structure they rely on (issue 22): a module they do
not know is left alone with one debug log line, a transform that raises never fails the compile, and what a
transform does change computes eager's output. Cheap (no Inductor compile except the last test)."""

from __future__ import annotations

import logging
import types

import pytest
import torch

pytest.importorskip("diffusers")

from nexfort.diffusers import dynamic, masks, plugin  # noqa: E402
from tests.helpers import rel_l2  # noqa: E402


def _patch_embed(**kw):
    from diffusers.models.embeddings import PatchEmbed

    torch.manual_seed(0)
    return PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=16, **kw).eval()


def test_patch_embed_known_is_patched_and_matches_eager_at_other_sizes():
    pe = _patch_embed()
    x = torch.randn(2, 4, 12, 16)  # not the config's size: diffusers recomputes the embedding
    ref = pe(x)
    assert dynamic.make_patch_embeds_dynamic(pe) == 1
    assert rel_l2(pe(x), ref) <= 1e-6


def test_patch_embed_subclass_with_its_own_forward_is_left_alone(caplog):
    from diffusers.models.embeddings import PatchEmbed

    class MyPatchEmbed(PatchEmbed):
        def forward(self, latent):  # a structure the patched forward knows nothing about
            return super().forward(latent) * 2

    torch.manual_seed(0)
    pe = MyPatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=16).eval()
    with caplog.at_level(logging.DEBUG, logger="nexfort.diffusers.dynamic"):
        assert dynamic.make_patch_embeds_dynamic(pe) == 0
    assert "forward" not in vars(pe)
    assert len([r for r in caplog.records if "PatchEmbed left alone" in r.getMessage()]) == 1


def test_patch_embed_missing_an_attribute_is_left_alone():
    pe = _patch_embed()
    del pe.layer_norm
    assert dynamic.make_patch_embeds_dynamic(pe) == 0
    assert "forward" not in vars(pe)


def test_attention_with_another_prepare_attention_mask_is_left_alone(caplog):
    from diffusers.models.attention_processor import Attention

    class MyAttention(Attention):
        def prepare_attention_mask(self, attention_mask, target_length, batch_size):  # another signature
            return attention_mask

    attn = MyAttention(query_dim=16, heads=2, dim_head=4)
    with caplog.at_level(logging.DEBUG, logger="nexfort.diffusers.masks"):
        assert masks.make_attention_masks_dynamic(attn) == 0
    assert "prepare_attention_mask" not in vars(attn)
    assert len([r for r in caplog.records if "left alone" in r.getMessage()]) == 1


def test_attention_without_integer_heads_is_left_alone():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=4)
    attn.heads = torch.tensor(2)
    assert masks.make_attention_masks_dynamic(attn) == 0


def _config(dynamic_=True):
    from nexfort.core.config import resolve_config

    return resolve_config({"mode": "max-optimize:max-autotune:low-precision", "dynamic": dynamic_})


def _tiny_pixart():
    import diffusers

    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, cross_attention_dim=16, caption_channels=16, norm_type="ada_norm_single").eval()


@pytest.mark.parametrize("broken", ["fuse_projections", "make_patch_embeds_dynamic", "make_attention_masks_dynamic"])
def test_a_transform_that_raises_never_fails_the_hook(monkeypatch, caplog, broken):
    def boom(module):
        raise AttributeError("'Odd' object has no attribute 'to_q'")

    if broken == "fuse_projections":
        monkeypatch.setattr(plugin, "fuse_projections", boom)
    else:
        mod = dynamic if broken == "make_patch_embeds_dynamic" else masks
        monkeypatch.setattr(mod, broken, boom)
    model = _tiny_pixart()
    with caplog.at_level(logging.DEBUG, logger="nexfort.diffusers.plugin"):
        plugin.nexfort_transform_module(model, _config())
    lines = [r for r in caplog.records if broken in r.getMessage() and "left the model alone" in r.getMessage()]
    assert len(lines) == 1
    # the transforms that did not raise still ran: their instance patches are undone here (as uncompile_pipe does;
    # the log records' tracebacks keep the model alive past the test)
    from nexfort.core import patches

    assert patches.restore(model), "the other transforms patched nothing"


def test_unknown_diffusers_model_compiles_unchanged():
    """A ModelMixin with attention modules that no transform knows (no to_q, a processor of its own) is compiled
    as it is through nexfort_compile and gives eager's output."""
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    from nexfort.compilers import nexfort_compile

    class OddProcessor:
        def __call__(self, attn, hidden_states, **kw):
            return attn.qkv(hidden_states).chunk(3, dim=-1)[0].tanh()

    class OddAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.processor = torch.nn.Linear(16, 48), OddProcessor()
            self.fuse_projections = lambda: None

        def set_processor(self, p):
            self.processor = p

        def forward(self, x):
            return self.processor(self, x)

    class OddModel(diffusers.ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, dim: int = 16):
            super().__init__()
            self.attn, self.proj = OddAttention(), torch.nn.Linear(dim, dim)

        def forward(self, x):
            return self.proj(self.attn(x))

    torch.manual_seed(0)
    model = OddModel().eval()
    model.fuse_qkv_projections = types.MethodType(lambda self: None, model)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = model(x)
        before = {n: type(m) for n, m in model.named_modules()}
        out = nexfort_compile(model, mode="max-optimize:max-autotune:low-precision")(x)
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert not getattr(model.attn, "fused_projections", False)
    assert rel_l2(out, ref) <= 1e-5
