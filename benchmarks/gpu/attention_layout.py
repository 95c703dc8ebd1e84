"""FlashAttention-4 against SDPA on SD3's and PixArt's attention shapes, in both layouts the models hand over
((B, S, H, D) seen through a transpose, and contiguous (B, H, S, D), what SD3's joint-attention concat makes), timed
two ways: one call between two CUDA events (host launch time included) and 20 calls queued back to back (GPU time),
then the choice ``torch.ops.nexfort.attention`` makes (logged). Needs benchmarks/gpu/fa4_stage.sh.

    python benchmarks/gpu/attention_layout.py
"""
import logging

import torch
import torch.nn.functional as F
from _timing import one_call_ms, queued_ms

from nexfort.passes.attention_kernel import kernels as K

logging.basicConfig(level=logging.INFO)


def main():
    from flash_attn.cute.interface import flash_attn_func

    print(torch.cuda.get_device_name(), torch.__version__)
    for name, (b, s, h, d) in {"sd3": (2, 4429, 24, 64), "pixart": (2, 4096, 16, 72)}.items():
        bshd = [torch.randn(b, s, h, d, device="cuda", dtype=torch.float16) for _ in range(3)]
        bhsd = [torch.randn(b, h, s, d, device="cuda", dtype=torch.float16) for _ in range(3)]
        for lay, (q, k, v) in (("bshd", [x.transpose(1, 2) for x in bshd]), ("bhsd", bhsd)):
            def sdpa(q=q, k=k, v=v):
                return F.scaled_dot_product_attention(q, k, v)

            def fa4(q=q, k=k, v=v):
                return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

            a, b_ = one_call_ms(sdpa), one_call_ms(fa4)
            c, d_ = queued_ms(sdpa), queued_ms(fa4)
            print(f"{name} {lay}: one call sdpa {a:.3f} fa4 {b_:.3f} ms ({a / b_:.3f}x); "
                  f"queued sdpa {c:.3f} fa4 {d_:.3f} ms ({c / d_:.3f}x)", flush=True)
            K.clear_choices()
            K.op()(q, k, v, None)


if __name__ == "__main__":
    main()
