"""Environment, accuracy against eager, the terminal table, the JSON file and the comparison chart."""

from __future__ import annotations

import json
import math
import os
import platform
from typing import Any, Dict, List, Optional

import torch


def _version(dist: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return None


def environment(device: str) -> Dict[str, Any]:
    env = {"device": device, "python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch": torch.__version__, "triton": _version("triton"),
           "diffusers": _version("diffusers"), "transformers": _version("transformers"),
           "nexfort_core": _version("nexfort-core"), "nexfort_diffusers": _version("nexfort-diffusers"),
           "nexfort_passes": _version("nexfort-passes"), "flash_attn_4": _version("flash-attn-4")}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        env["gpu"] = None
    try:
        from nexfort.core.plugins import plugin_names

        env["nexfort_plugins"] = plugin_names()
    except Exception:  # noqa: BLE001  # pragma: no cover
        env["nexfort_plugins"] = None
    return env


def rel_l2(out: Any, ref: Any) -> float:
    """Relative L2 error of ``out`` against ``ref``; non-finite values anywhere give inf (never passes)."""
    if out is None or ref is None:
        return float("nan")
    out, ref = torch.as_tensor(out).detach().double().cpu(), torch.as_tensor(ref).detach().double().cpu()
    if out.shape != ref.shape:
        return float("inf")
    if not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # "inf"/"nan": strict JSON has neither
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(json_safe(data), f, indent=2, sort_keys=False)
        f.write("\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5)) else f"{v:.3f}"
    return str(v)


COLUMNS = [("compiler", "compiler"), ("resolution", "HxW"), ("warmup_s", "warm-up s"),
           ("step_ms_median", "step ms (med)"), ("e2e_s_per_image", "s/image"), ("it_per_s", "it/s"),
           ("peak_memory_mb", "peak MB"), ("graphs", "graphs"), ("recompiles", "recompiles"),
           ("rel_l2_vs_eager", "rel L2 vs eager")]


def rows(runs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for name, r in runs.items():
        for res in [r] + list(r.get("resolutions", [])):
            row = dict(res)
            row["compiler"] = name
            row["graphs"] = (r.get("compiled_in_warmup", {}).get("dynamo_graphs") if res is r
                             else res.get("compiled", {}).get("dynamo_graphs"))
            row["recompiles"] = (r.get("recompiles_in_timed_runs", {}).get("dynamo_graphs") if res is r else None)
            row["rel_l2_vs_eager"] = res.get("rel_l2_vs_eager")
            out.append(row)
    return out


def table(runs: Dict[str, Dict[str, Any]]) -> str:
    data = [[_fmt(row.get(k)) for k, _ in COLUMNS] for row in rows(runs)]
    heads = [h for _, h in COLUMNS]
    widths = [max(len(h), *(len(d[i]) for d in data)) if data else len(h) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(c.ljust(w) for c, w in zip(d, widths)) for d in data])


def summary(runs: Dict[str, Dict[str, Any]], key: str = "step_ms_median", subject: str = "nexfort") -> Dict[str, Any]:
    """nexfort's step time against eager, torch.compile's default and torch.compile's best own mode (the fastest of
    the ``inductor*`` runs), from runs of one process on the same inputs; empty without a nexfort run. ``subject``:
    the nexfort run to summarise (``nexfort:LABEL`` for a ``--also-nexfort`` variant)."""
    nex = runs.get(subject, {}).get(key)
    if not nex:
        return {}
    out: Dict[str, Any] = {"metric": key, "nexfort": nex, "nexfort_mode": runs[subject].get("nexfort_mode")}
    if subject != "nexfort":
        out["run"] = subject
        if runs.get("nexfort", {}).get(key):  # the variant against the main nexfort run
            out["main_nexfort"] = runs["nexfort"][key]
            out["speedup_vs_main_nexfort"] = round(runs["nexfort"][key] / nex, 4)
    inductor = {n: r.get(key) for n, r in runs.items() if n.startswith("inductor") and r.get(key)}
    if "eager" in runs and runs["eager"].get(key):
        out["eager"] = runs["eager"][key]
        out["speedup_vs_eager"] = round(out["eager"] / nex, 4)
    if "inductor" in inductor:
        out["torch_compile"] = inductor["inductor"]
        out["speedup_vs_torch_compile"] = round(inductor["inductor"] / nex, 4)
    if inductor:
        best = min(inductor, key=inductor.get)
        out.update(torch_compile_best=inductor[best], torch_compile_best_run=best,
                   speedup_vs_torch_compile_best=round(inductor[best] / nex, 4))
    torchao = {n: r.get(key) for n, r in runs.items() if n.startswith("torchao:") and r.get(key)}
    if torchao:  # --torchao: torchao's quantization + torch.compile, the quantized reference
        name = min(torchao, key=torchao.get)
        out.update(torchao=torchao[name], torchao_run=name, speedup_vs_torchao=round(torchao[name] / nex, 4))
    return out


def variant_line(name: str, runs: Dict[str, Dict[str, Any]]) -> str:
    """:func:`summary_line` of the ``--also-nexfort`` run ``name`` (empty when it has no timing)."""
    s = summary(runs, subject=name)
    return summary_line(s) if s else f"{name}: no timing"


def summary_line(s: Dict[str, Any]) -> str:
    parts = [f"{s.get('run', 'nexfort')} ({s.get('nexfort_mode')!r}) {s['nexfort']:.3f} ms"]
    for label, k, r in (("eager", "eager", "speedup_vs_eager"), ("torch.compile", "torch_compile",
                                                                  "speedup_vs_torch_compile"),
                        ("the main nexfort run", "main_nexfort", "speedup_vs_main_nexfort"),
                        (f"torch.compile best ({s.get('torch_compile_best_run')})", "torch_compile_best",
                         "speedup_vs_torch_compile_best"),
                        (f"{s.get('torchao_run')} + torch.compile", "torchao", "speedup_vs_torchao")):
        if k in s:
            parts.append(f"{s[r]:.3f}x {label} ({s[k]:.3f} ms)")
    return f"{s['metric']}: " + "; ".join(parts)


def chart(path: str, runs: Dict[str, Dict[str, Any]], title: str, env: Dict[str, Any]) -> Optional[str]:
    """A PNG bar chart: per-step denoiser time and end-to-end time of each compiler (same run)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    names = list(runs)
    metrics = [("step_ms_median", "denoiser step (ms, median)"), ("e2e_s_per_image", "end to end (s / image)"),
               ("warmup_s", "compile / warm-up (s)")]
    metrics = [m for m in metrics if any(runs[n].get(m[0]) is not None for n in names)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    colors = {"eager": "#888888", "inductor": "#4c72b0", "nexfort": "#dd8452"}
    labels = [n.replace("inductor:", "tc ").replace("inductor", "torch.compile") for n in names]
    for ax, (key, label) in zip(axes[0], metrics):
        vals = [runs[n].get(key) or 0.0 for n in names]
        bars = ax.bar(labels, vals, color=[colors.get(n, "#4c72b0" if n.startswith("inductor") else "#55a868")
                                           for n in names])
        base = runs.get("eager", {}).get(key)
        tc = runs.get("inductor", {}).get(key)
        for b, v, n in zip(bars, vals, names):
            note = f"{v:.3g}" + (f"\n{base / v:.2f}x eager" if base and v and n != "eager" and key != "warmup_s"
                                 else "")
            if (n == "nexfort" or n.startswith("nexfort:")) and tc and v and key != "warmup_s":
                note += f"\n{tc / v:.2f}x torch.compile"
            ax.annotate(note, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
        ax.set_ylim(0, max(vals + [1e-9]) * 1.3)
    who = env.get("gpu") or f"CPU ({env.get('cpu_count')} cores)"
    fig.suptitle(f"{title}\n{who}, torch {env.get('torch')}, diffusers {env.get('diffusers')}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_image(path: str, images: Any) -> Optional[str]:
    """Save the first image of a ``output_type="pt"`` batch (values in [0, 1])."""
    if images is None or not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3):
        return None
    from PIL import Image

    arr = (images[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(path)
    return path
