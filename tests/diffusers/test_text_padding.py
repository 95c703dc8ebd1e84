"""nexfort.diffusers.text_padding: PixArt's cross-attention over the valid text tokens only, exactly."""

from __future__ import annotations

import pytest
import torch
from tiny_pixart import SEQ, tiny_pixart_pipe

from nexfort.diffusers import compile_pipe
from nexfort.diffusers.text_padding import MULTIPLE, TextPaddingTrimmer, _plan

pytest.importorskip("diffusers")
SEQ_LONG = 40  # PixArt's 120 tokens, scaled down: a few multiples of MULTIPLE


def _kwargs(mask: torch.Tensor, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, s = mask.shape
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, s, 32,
                generator=g), encoder_attention_mask=mask, timestep=torch.full((b,), 500, dtype=torch.long),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)


def _mask(valid_per_row, seq: int = SEQ_LONG) -> torch.Tensor:
    mask = torch.zeros(len(valid_per_row), seq, dtype=torch.long)
    for i, n in enumerate(valid_per_row):
        mask[i, :n] = 1
    return mask


def test_plan():
    assert _plan(_mask([5, 5]), 8) == (8, False)  # 5 valid -> 8 kept, 3 of them masked
    assert _plan(_mask([8, 8]), 8) == (8, True)  # exactly a multiple, all valid: no mask needed
    assert _plan(_mask([3, 17]), 8) == (24, False)  # the longest row decides
    assert _plan(_mask([40, 40]), 8) == (40, True)
    assert _plan(_mask([0, 5]), 8) is None  # a row without a valid token: left alone
    soft = _mask([5, 5]).float() * 0.5
    assert _plan(soft, 8) is None  # not a 0/1 mask
    assert _plan(_mask([5, 5]).bool(), 8) == (8, False)


def test_trimmer_rewrites_only_what_it_may():
    trim = TextPaddingTrimmer()
    kw = _kwargs(_mask([8, 8]))
    out = trim(kw)
    assert out["encoder_hidden_states"].shape[1] == 8 and out["encoder_attention_mask"] is None
    assert torch.equal(out["encoder_hidden_states"], kw["encoder_hidden_states"][:, :8])
    kw = _kwargs(_mask([5, 3]))
    out = trim(kw)
    assert out["encoder_hidden_states"].shape[1] == MULTIPLE
    assert torch.equal(out["encoder_attention_mask"], kw["encoder_attention_mask"][:, :MULTIPLE])
    # near-misses, left exactly as they were
    for kw in (_kwargs(_mask([0, 5])), _kwargs(_mask([5, 5]).float() * 0.5), {"encoder_hidden_states": None}):
        assert trim(kw) is kw
    out = trim(_kwargs(_mask([40, 40])))  # nothing to cut, but an all-ones mask is no mask: dropped
    assert out["encoder_hidden_states"].shape[1] == 40 and out["encoder_attention_mask"] is None
    kw = _kwargs(_mask([5, 5]))
    kw["encoder_attention_mask"] = kw["encoder_attention_mask"][:, :10]  # not the text's shape
    assert trim(kw) is kw


@pytest.mark.parametrize("inference", [False, True], ids=["no_grad", "inference_mode"])
def test_trimmer_reads_a_new_or_changed_mask_again(inference):
    trim = TextPaddingTrimmer()
    with torch.inference_mode(inference):
        mask = _mask([5, 5])
        assert trim(_kwargs(mask))["encoder_hidden_states"].shape[1] == 8
        assert trim(_kwargs(mask))["encoder_hidden_states"].shape[1] == 8  # the cached plan
        mask[:, :30] = 1  # changed in place: read again
        assert trim(_kwargs(mask))["encoder_hidden_states"].shape[1] == 32
        del mask
        other = _mask([20, 20])  # a new tensor, possibly at the freed one's address
        assert trim(_kwargs(other))["encoder_hidden_states"].shape[1] == 24


def _eager_and_compiled(mode: str, **kw):
    eager, pipe = tiny_pixart_pipe(), tiny_pixart_pipe()
    compile_pipe(pipe, mode=mode, ignores=["vae"], **kw)
    return eager.transformer, pipe.transformer


@pytest.mark.parametrize("valid", [(8, 8), (3, 17), (40, 40), (0, 5)],
                         ids=["exact-mult", "ragged", "all-valid", "empty-row"])
def test_compiled_pixart_matches_eager(valid, counters, assert_close):
    eager, compiled = _eager_and_compiled("max-optimize")
    trims = compiled._compiled_call_impl._nexfort_prepare
    assert isinstance(trims, TextPaddingTrimmer)
    with torch.inference_mode():
        kw = _kwargs(_mask(list(valid)), seed=sum(valid))
        ref = eager(**kw)[0]
        out = compiled(**kw)[0]
    assert_close(out, ref, tol=1e-5)
    assert trims.trimmed == (0 if 0 in valid else 1)  # fired, except where a row has no valid token
    assert counters["backend"]["fallbacks"] == 0


def test_off_without_max_optimize_or_when_asked(assert_close):
    _, compiled = _eager_and_compiled("")
    assert compiled._compiled_call_impl._nexfort_prepare is None
    _, compiled = _eager_and_compiled("max-optimize", options={"diffusers.trim_text_padding": False})
    assert compiled._compiled_call_impl._nexfort_prepare is None
    _, compiled = _eager_and_compiled("max-optimize", backend="inductor")
    assert getattr(compiled._compiled_call_impl, "_nexfort_prepare", None) is None


def test_pipeline_with_padded_prompts_matches_eager(assert_close):
    """The whole pipeline (CFG: the prompt and the negative prompt differ in length) gives eager's images."""
    eager, pipe = tiny_pixart_pipe(), tiny_pixart_pipe()
    compile_pipe(pipe, mode="max-optimize", ignores=["vae"])
    g = torch.Generator().manual_seed(3)
    mask, neg = torch.zeros(1, SEQ, dtype=torch.long), torch.zeros(1, SEQ, dtype=torch.long)
    mask[:, :5], neg[:, :1] = 1, 1
    kw = dict(prompt=None, negative_prompt=None, prompt_embeds=torch.randn(1, SEQ, 32, generator=g),
              prompt_attention_mask=mask, negative_prompt_embeds=torch.randn(1, SEQ, 32, generator=g),
              negative_prompt_attention_mask=neg, latents=torch.randn(1, 4, 8, 8, generator=g), height=64, width=64,
              num_inference_steps=2, output_type="pt", use_resolution_binning=False)
    with torch.inference_mode():
        out, ref = pipe(**kw).images, eager(**kw).images
    assert_close(out, ref, tol=1e-5)
    assert pipe.transformer._compiled_call_impl._nexfort_prepare.trimmed == 2  # one per step
