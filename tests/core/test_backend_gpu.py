"""The backend on CUDA with a PixArt-α-sized transformer (fp16), against eager fp16 and a float32 reference."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import rel_l2

from .models import pixart_alpha_inputs, pixart_alpha_xl2, pixart_inputs, tiny_pixart

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def xl2():
    model = pixart_alpha_xl2()
    inputs = pixart_alpha_inputs(height=512, width=768)
    with torch.no_grad():
        ref16 = model(**inputs)[0]
        ref32 = model.float()(**{k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                                 for k, v in inputs.items() if k != "added_cond_kwargs"},
                              added_cond_kwargs={k: v.float() for k, v in inputs["added_cond_kwargs"].items()})[0]
    model.half()
    return model, inputs, ref16, ref32


@pytest.mark.parametrize("mode", ["", "max-optimize:low-precision"])
def test_pixart_xl2_fp16_matches_eager(xl2, mode, counters):
    model, inputs, ref16, ref32 = xl2
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="nexfort", options={"mode": mode})
    with torch.no_grad():
        out = compiled(**inputs)[0]
    eager_err = rel_l2(ref16, ref32)
    err16, err32 = rel_l2(out, ref16), rel_l2(out, ref32)
    print(f"mode={mode!r}: vs eager fp16 {err16:.2e}, vs fp32 {err32:.2e} (eager fp16 vs fp32 {eager_err:.2e})")
    assert err16 <= 1e-2
    assert err32 <= max(2 * eager_err, 1e-2)
    assert counters["backend"]["fallbacks"] == 0


def test_tiny_pixart_on_cuda(counters):
    model = tiny_pixart().cuda()
    inputs = pixart_inputs(device="cuda")
    with torch.no_grad():
        ref = model(**inputs)[0]
        out = torch.compile(model, backend="nexfort", options={"mode": "max-autotune"})(**inputs)[0]
    assert rel_l2(out, ref) <= 1e-3  # TF32 may be on in Inductor's matmuls
    assert counters["backend"]["fallbacks"] == 0
