"""QKV fusion only where it computes eager's output (nexfort.diffusers.fused, issue 23): per model variant, a tiny
float32 model on the CPU is run eagerly, fused, and compared; the modules fusion must not touch (a processor it
does not know, a projection that is not a plain nn.Linear, an original processor lacking a step nexfort's copy
takes) are left alone, and the output still matches."""

from __future__ import annotations

import copy
import inspect
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")

from nexfort.diffusers import fused as fused_mod  # noqa: E402
from nexfort.diffusers import plugin  # noqa: E402
from tests.helpers import rel_l2  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from nexfort_bench import inputs, models  # noqa: E402

EXACT = 1e-5  # float32, the fused matmul only regroups the same products
SD3 = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
           num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
           pos_embed_max_size=16)


def _randomize_norms(model):
    """Norm weights away from 1, so that a processor skipping a norm is visibly off."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if any(k in name for k in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
            torch.nn.init.uniform_(p, 0.5, 1.5)
    return model


def _sd3(**extra):
    import diffusers

    if not set(extra) <= set(inspect.signature(diffusers.SD3Transformer2DModel).parameters):
        pytest.skip(f"this diffusers' SD3Transformer2DModel has no {', '.join(extra)} option")
    torch.manual_seed(0)
    model = _randomize_norms(diffusers.SD3Transformer2DModel(**SD3, **extra).eval())
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
              encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
              pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([3.0, 700.0]),
              return_dict=False)
    return model, kw


def _loaded(name):
    loaded = models.load_pipeline(name, torch.float32, "cpu")
    kw = inputs.denoiser_kwargs(loaded, batch=1, height=64, width=64, seed=5, dtype=torch.float32, device="cpu")
    return loaded.denoiser.eval(), kw


def _flux():
    from diffusers import FluxTransformer2DModel

    if not hasattr(sys.modules[FluxTransformer2DModel.__module__], "FluxAttnProcessor"):
        pytest.skip("this diffusers' Flux has no FluxAttnProcessor, the one Flux processor allow-listed")
    torch.manual_seed(0)
    model = _randomize_norms(FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)).eval())
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(1, 16, 4, generator=g),
              encoder_hidden_states=torch.randn(1, 6, 32, generator=g),
              pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
              img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(6, 3), return_dict=False)
    kw["img_ids"][:, 1] = torch.arange(16) // 4
    kw["img_ids"][:, 2] = torch.arange(16) % 4
    return model, kw


VARIANTS = {  # variant -> (builder, the processor every fused attention module ends with)
    "sd3": (lambda: _sd3(), "FusedJointAttnProcessor"),
    "sd3-qk-norm": (lambda: _sd3(qk_norm="rms_norm"), "FusedJointAttnProcessor"),
    # diffusers' own test configuration of SD3.5: dual-attention layers (attn2, called without a context) + qk-norm
    "sd3-dual-attention": (lambda: _sd3(qk_norm="rms_norm", dual_attention_layers=(0,)), "FusedJointAttnProcessor"),
    "pixart": (lambda: _loaded("tiny-pixart"), "FusedAttnProcessor"),  # self- and cross-attention, a text mask
    "sdxl-unet": (lambda: _loaded("tiny-sdxl"), "FusedAttnProcessor"),
    "flux": (_flux, "FluxAttnProcessor"),  # its processor reads the fused layers itself, norms included
}


def _run(model, kw):
    with torch.inference_mode():
        return model(**kw)[0]


def _attention_modules(model):
    return [m for m in model.modules() if getattr(m, "processor", None) is not None and hasattr(m, "set_processor")]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fusion_fires_where_exact_and_matches_eager(variant):
    build, processor = VARIANTS[variant]
    model, kw = build()
    ref = _run(model, kw)
    attn = _attention_modules(model)
    msg = fused_mod.fuse_projections(model)
    assert msg.startswith(f"fused QKV projections of {len(attn)} attention modules"), msg
    assert "left alone" not in msg, msg
    assert all(m.fused_projections and type(m.processor).__name__ == processor for m in attn)
    assert fused_mod.qkv_fused(model)
    err = rel_l2(_run(model, kw), ref)
    print(f"{variant}: fused {len(attn)} attention modules, rel L2 vs eager {err:.2e}")
    assert err <= EXACT, f"{variant}: {err:.2e}"
    if "qk-norm" in variant or "dual" in variant:  # the norms matter here: skipping them is far above EXACT
        bare = copy.deepcopy(model)
        for m in _attention_modules(bare):
            for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
                if getattr(m, n, None) is not None:
                    setattr(m, n, None)
        assert rel_l2(_run(bare, kw), ref) > 1e-3
    assert fused_mod.fuse_projections(model) is None  # once


def test_sd3_qk_norm_through_nexfort_compile_matches_eager():
    """The issue as a user meets it: SD3.5's configuration through nexfort_compile(max-optimize ...)."""
    from nexfort.compilers import nexfort_compile

    model, kw = _sd3(qk_norm="rms_norm", dual_attention_layers=(0,))
    ref = _run(model, kw)
    compiled = nexfort_compile(model, mode="max-optimize:max-autotune:low-precision")
    err = rel_l2(_run(compiled, kw), ref)
    print(f"sd3 qk-norm + dual attention through nexfort_compile: rel L2 vs eager {err:.2e}")
    assert err <= EXACT
    assert all(m.fused_projections for m in _attention_modules(model))


def test_unknown_processor_leaves_the_model_alone():
    from diffusers.models.attention_processor import AttnProcessor

    model, kw = _loaded("tiny-pixart")
    model.set_attn_processor(AttnProcessor())  # the math processor: no fused counterpart computes it
    ref = _run(model, kw)
    msg = fused_mod.fuse_projections(model)
    assert msg.startswith("QKV projections left unfused (") and "AttnProcessor does" in msg, msg
    assert not fused_mod.qkv_fused(model)
    assert not any(getattr(m, "fused_projections", False) for m in model.modules())
    assert torch.equal(_run(model, kw), ref)


class _Doubled(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2.0


def test_a_projection_that_is_not_a_plain_linear_leaves_its_module_alone():
    model, kw = _flux()
    blocks = _attention_modules(model)
    odd = blocks[0]
    q = odd.to_q
    odd.to_q = _Doubled(q.in_features, q.out_features, device="cpu")
    with torch.no_grad():
        odd.to_q.weight.copy_(q.weight)
        odd.to_q.bias.copy_(q.bias)
    ref = _run(model, kw)
    msg = fused_mod.fuse_projections(model)
    assert msg.startswith(f"fused QKV projections of {len(blocks) - 1} attention modules"), msg
    assert "left alone: 1 x to_q/to_k/to_v are not all plain nn.Linear layers" in msg, msg
    assert not odd.fused_projections and all(m.fused_projections for m in blocks[1:])
    err = rel_l2(_run(model, kw), ref)
    print(f"flux with one non-plain to_q: {len(blocks) - 1} fused, 1 left alone, rel L2 vs eager {err:.2e}")
    assert err <= EXACT, err


def test_an_original_processor_lacking_a_step_leaves_its_modules_alone(monkeypatch):
    """As with a diffusers whose JointAttnProcessor2_0 would not apply norm_q: nexfort's copy would, so no fusion."""
    model, kw = _sd3(qk_norm="rms_norm")
    real = fused_mod._code_names
    monkeypatch.setattr(fused_mod, "_code_names", lambda fn: (real(fn) or frozenset()) - {"norm_q"})
    ref = _run(model, kw)
    msg = fused_mod.fuse_projections(model)
    assert msg.startswith("QKV projections left unfused (") and "differ in norm_q" in msg, msg
    assert not any(getattr(m, "fused_projections", False) for m in model.modules())
    assert torch.equal(_run(model, kw), ref)


def test_a_module_whose_fusion_fails_is_put_back(monkeypatch):
    model, kw = _sd3()
    ref = _run(model, kw)
    first = _attention_modules(model)[0]

    def fail(processor):
        raise RuntimeError("no memory for it")

    monkeypatch.setattr(first, "set_processor", fail)
    msg = fused_mod.fuse_projections(model)
    assert msg.startswith("fused QKV projections of 1 attention modules") and "fusing failed" in msg, msg
    assert not first.fused_projections and not hasattr(first, "to_qkv") and not hasattr(first, "to_added_qkv")
    err = rel_l2(_run(model, kw), ref)
    print(f"sd3 with one module whose fusion fails: rel L2 vs eager {err:.2e}")
    assert err <= EXACT


class _Holder(torch.nn.Module):
    """One attention module in a model that declares fusion support (never called: nexfort fuses by itself)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def fuse_qkv_projections(self):
        raise AssertionError("nexfort must not call diffusers' model-wide fusion")

    def forward(self, hidden_states, encoder_hidden_states):
        return self.attn(hidden_states, encoder_hidden_states=encoder_hidden_states)


@pytest.mark.parametrize("mixed_bias", [False, True])
def test_joint_attention_with_a_context_of_another_width(mixed_bias):
    """Context projections whose input width differs from the image stream's (one fused layer each); with one
    context projection without bias the context stays unfused (the image stream still fuses) and matches."""
    from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

    if "norm_added_q" not in JointAttnProcessor2_0.__call__.__code__.co_names:
        pytest.skip("this diffusers' JointAttnProcessor2_0 has no q/k norms (such modules are left alone)")
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, added_kv_proj_dim=24, out_dim=16, context_pre_only=False,
                     bias=True, qk_norm="rms_norm", processor=JointAttnProcessor2_0())
    if mixed_bias:
        attn.add_v_proj.bias = None
    model = _randomize_norms(_Holder(attn).eval())
    kw = dict(hidden_states=torch.randn(2, 9, 16), encoder_hidden_states=torch.randn(2, 4, 24))
    with torch.inference_mode():
        ref = model(**kw)
    assert "fused QKV projections of 1 attention modules" in fused_mod.fuse_projections(model)
    assert isinstance(attn.to_qkv, torch.nn.Linear) and hasattr(attn, "to_added_qkv") is (not mixed_bias)
    with torch.inference_mode():
        out = model(**kw)
    errs = [rel_l2(o, r) for o, r in zip(out, ref)]
    print(f"joint attention, context of another width (mixed_bias={mixed_bias}): rel L2 vs eager {max(errs):.2e}")
    assert max(errs) <= EXACT, errs


def test_prx_left_alone_without_raising():
    """Issue 22: PRXAttention has no to_q (fused qkv of its own): the transform leaves it alone."""
    diffusers = pytest.importorskip("diffusers")
    if not hasattr(diffusers, "PRXTransformer2DModel"):
        pytest.skip("this diffusers has no PRXTransformer2DModel")
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = diffusers.PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32,
                                            mlp_ratio=2.0, num_heads=2, depth=1, axes_dim=[8, 8]).eval()
    kw = dict(hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([0.5]),
              encoder_hidden_states=torch.randn(1, 6, 16), return_dict=False)
    ref = _run(model, kw)
    cfg = OmegaConf.create({"flags": {"max_optimize": True}, "options": {"diffusers": {"fuse_qkv_projections": True}}})
    msg = plugin.nexfort_transform_module(model, cfg)
    assert msg.startswith("QKV projections left unfused (") and "PRXAttnProcessor2_0" in msg, msg
    assert torch.equal(_run(model, kw), ref)
