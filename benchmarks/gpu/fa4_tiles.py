"""FlashAttention-4's Hopper forward over its tile configurations, on the denoisers' attention shapes (issue 4).

    python benchmarks/gpu/fa4_tiles.py [--out FILE.jsonl]

For each shape: cuDNN SDPA (the baseline every row is divided by), FA4's own heuristic, then each
(tile_m, tile_n, mma_pv_is_rs, intra_wg_overlap) that compiles. CUDA events, warm-up, median of 30; relative L2
against a float32 reference. A short table last.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from _timing import one_call_ms, rel_l2
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [("pixart-1024-self", 2, 4096, 16, 72), ("sd3-1024-joint", 2, 4429, 24, 64),
          ("pixart-512x768-self", 2, 1536, 16, 72)]
CONFIGS = {64: [(192, 128, True, True), (192, 128, False, True), (128, 128, True, True), (128, 176, True, True),
                (192, 160, True, True), (192, 192, False, True), (128, 192, True, True), (128, 128, False, True)],
           72: [(192, 144, False, True), (192, 128, False, True), (128, 128, True, True), (128, 144, True, True),
                (128, 176, True, True), (128, 192, False, True), (192, 112, False, True), (128, 128, False, True),
                (192, 96, False, True)]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from flash_attn.cute.interface import _flash_attn_fwd

    rows = []
    for name, b, s, h, d in SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.float16, generator=gen) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float()).transpose(1, 2)

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)  # noqa: B023 - called in this iteration

        candidates = [("cudnn", cudnn), ("fa4-default", lambda: _flash_attn_fwd(q, k, v)[0])]  # noqa: B023
        for tm, tn, rs, ol in CONFIGS[d]:
            candidates.append((f"fa4-{tm}x{tn}-{'rs' if rs else 'ss'}-{'ol' if ol else 'nool'}",
                               lambda tm=tm, tn=tn, rs=rs, ol=ol: _flash_attn_fwd(
                                   q, k, v, tile_mn=(tm, tn), mma_pv_is_rs=rs, intra_wg_overlap=ol)[0]))  # noqa: B023
        base = None
        for label, fn in candidates:
            row = {"shape": name, "kernel": label, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
            try:
                with torch.no_grad():
                    row["rel_l2_vs_fp32"] = rel_l2(fn(), ref)
                    row["ms"] = one_call_ms(fn)
                base = base or row["ms"]
                row["vs_cudnn"] = round(base / row["ms"], 3)
                row["tflops"] = round(4 * b * h * s * s * d / row["ms"] / 1e9, 1)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"\n{'shape':22} {'kernel':26} {'ms':>7} {'TFLOP/s':>8} {'x cuDNN':>8} {'rel L2':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:22} {r['kernel']:26} {r['error'][:70]}")
        else:
            print(f"{r['shape']:22} {r['kernel']:26} {r['ms']:7.3f} {r['tflops']:8.1f} {r['vs_cudnn']:8.3f}"
                  f" {r['rel_l2_vs_fp32']:9.2e}")


if __name__ == "__main__":
    main()
