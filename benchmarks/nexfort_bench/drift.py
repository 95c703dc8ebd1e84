"""Drift over a whole run (``--drift-seeds N``): how far each compiler's latents move from eager's, step by step.

One forward's error says little about a sampler's end result: errors can grow or wash out over the steps. For each
of N seeds (``--seed``, ``--seed + 1``, ...) every run of the benchmark calls the full pipeline once more, keeps the
latents after each denoising step (both callback APIs of diffusers' pipelines), and this module compares them with
eager's at the same seed and step:

    drift[step] = mean over seeds of ||latents_c[step] - latents_eager[step]|| / ||latents_eager[step]||

The JSON gets each run's per-step means (``drift``), the final step's per seed, and a verdict against
``--drift-bound`` (issue 18: 5 % for the quantized modes); the printout is one row per step with every compiler
side by side, so a lossy mode's drift reads against torch.compile's own. NaN or inf never passes.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

from nexfort_bench import report, timing


def _latents_kwargs(pipe: Any, store: List[torch.Tensor]) -> Dict[str, Any]:
    """Pipeline arguments that append a float32 CPU copy of the latents after each step to ``store``."""
    def keep(latents: Any) -> None:
        if latents is None:
            raise SystemExit(f"--drift-seeds: {type(pipe).__name__}'s step callback gets no latents")
        store.append(latents.detach().float().cpu())

    kw = timing.step_end_kwargs(pipe, keep)
    if kw is None:
        raise SystemExit(f"--drift-seeds: {type(pipe).__name__} offers no step callback (callback_on_step_end or "
                         f"callback/callback_steps), so its latents per step cannot be read")
    return kw


def collect(pipe: Any, kwargs_for_seed: Any, seed_list: Sequence[int]) -> List[List[torch.Tensor]]:
    """For each seed, the latents after every step of ``pipe(**kwargs_for_seed(seed))`` (latent output: the VAE is
    not what is compared)."""
    runs = []
    with torch.inference_mode():
        for seed in seed_list:
            store: List[torch.Tensor] = []
            kw = {**kwargs_for_seed(seed), "output_type": "latent", **_latents_kwargs(pipe, store)}
            pipe(**kw)
            runs.append(store)
    return runs


def compare(runs: Dict[str, List[List[torch.Tensor]]], bound: Optional[float] = None,
            reference: str = "eager") -> Dict[str, Any]:
    """Per-step drift of every run against ``reference`` (same seeds, same steps), averaged over the seeds."""
    ref = runs[reference]
    out: Dict[str, Any] = {"reference": reference, "seeds": len(ref), "steps": len(ref[0]) if ref else 0,
                           "bound": bound, "runs": {}}
    for name, per_seed in runs.items():
        if name == reference:
            continue
        if len(per_seed) != len(ref) or any(len(a) != len(r) for a, r in zip(per_seed, ref)):
            out["runs"][name] = {"error": f"{sum(map(len, per_seed))} step latents against the reference's "
                                          f"{sum(map(len, ref))}"}
            continue
        steps = [[report.rel_l2(a, r) for a, r in zip(seed_a, seed_r)] for seed_a, seed_r in zip(per_seed, ref)]
        mean = [sum(col) / len(col) for col in zip(*steps)]
        final = mean[-1] if mean else math.inf
        entry = {"per_step_mean": mean, "final_per_seed": [s[-1] for s in steps], "final_mean": final}
        if bound is not None:
            entry["within_bound"] = bool(math.isfinite(final) and final <= bound)
        out["runs"][name] = entry
    return out


def table(summary: Dict[str, Any]) -> str:
    """One row per step, one column per run: the mean relative L2 against the reference's latents."""
    names = [n for n, r in summary["runs"].items() if "per_step_mean" in r]
    lines = [f"latent drift from {summary['reference']} per step (mean relative L2 over {summary['seeds']} seeds)",
             "step  " + "  ".join(f"{n:>14}" for n in names)]
    for i in range(summary["steps"]):
        lines.append(f"{i + 1:>4}  " + "  ".join(f"{summary['runs'][n]['per_step_mean'][i]:>14.3e}" for n in names))
    for name, r in summary["runs"].items():
        if "error" in r:
            lines.append(f"{name}: {r['error']}")
        elif summary.get("bound") is not None:
            verdict = "within" if r["within_bound"] else "OVER"
            lines.append(f"{name}: final {r['final_mean']:.3e}, {verdict} the bound {summary['bound']:g}")
    return "\n".join(lines)
