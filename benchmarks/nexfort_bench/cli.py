"""The benchmark run shared by ``benchmarks/text_to_image.py`` and ``examples/text_to_image_sdxl.py``: compile,
time, report (its arguments: :mod:`nexfort_bench.args`)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from nexfort_bench import drift, inputs, models, parallel, report, timing, torchao_run
from nexfort_bench.args import (  # noqa: F401 - the command line, importable from here as before
    COMPILERS,
    CONFIG_KEYS,
    DTYPES,
    PIPE_KEYS,
    RARE_RESOLUTIONS,
    aligned,
    multiple_resolutions,
    parse_also_nexfort,
    parse_compiler_config,
    parser,
    size_limits,
    str2bool,
)

SKIPPABLE = ("inductor",)  # --skip: the references of --compiler all that a run may leave out


def compile_for(loaded: models.Loaded, compiler: str, cfg: Dict[str, Any], pipe_kw: Dict[str, Any],
                denoiser_only: bool) -> None:
    from nexfort.diffusers import compile_pipe, valid_ignore_names

    kw = dict(pipe_kw)
    if compiler.startswith(torchao_run.PREFIX):
        if torchao_run.parse(compiler)[1]:  # --torchao-regional: the denoiser's blocks, the rest as the others
            torchao_run.compile_regions(loaded)
            kw["ignores"] = sorted({loaded.denoiser_name} | set(kw.get("ignores", ())))
        compiler = "inductor"
    if compiler.startswith("inductor:"):
        compiler, kw["inductor_mode"] = "inductor", compiler.split(":", 1)[1]
    if denoiser_only:
        kw["ignores"] = sorted({n for n in valid_ignore_names(loaded.pipe) if n != loaded.denoiser_name
                                and not n.startswith("vae.")} | set(kw.get("ignores", ())))
    compile_pipe(loaded.pipe, backend=compiler, **{k: v for k, v in cfg.items() if k in CONFIG_KEYS}, **kw)


def run_one(loaded: models.Loaded, compiler: str, args: argparse.Namespace, cfg: Dict[str, Any],
            pipe_kw: Dict[str, Any], resolutions: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
    """Compile (unless eager), warm up, time; then each extra resolution. Returns result and outputs."""
    from nexfort.core.counters import reset as reset_counters

    label = "eager" if compiler == "none" else compiler
    torch._dynamo.reset()
    reset_counters()  # each run's nexfort_counters are its own
    with timing.inductor_cache(args.inductor_cache == "fresh" and compiler != "none", args.cache_dirs):
        return _run_one(loaded, compiler, args, cfg, pipe_kw, resolutions, label)


def _run_one(loaded: models.Loaded, compiler: str, args: argparse.Namespace, cfg: Dict[str, Any],
             pipe_kw: Dict[str, Any], resolutions: Sequence[Tuple[int, int]], label: str) -> Dict[str, Any]:
    restore = None
    if compiler.startswith(torchao_run.PREFIX):
        restore = torchao_run.swap_in_quantized(loaded, torchao_run.parse(compiler)[0])
    try:
        return _timed_run(loaded, compiler, args, cfg, pipe_kw, resolutions, label)
    finally:
        if restore is not None:
            restore()


def _timed_run(loaded: models.Loaded, compiler: str, args: argparse.Namespace, cfg: Dict[str, Any],
               pipe_kw: Dict[str, Any], resolutions: Sequence[Tuple[int, int]], label: str) -> Dict[str, Any]:
    from nexfort.diffusers import uncompile_pipe

    c0 = timing.compile_counts()
    t_setup = 0.0
    if compiler != "none":
        _, t_setup = timing.timed_call(lambda: compile_for(loaded, compiler, cfg, pipe_kw, args.denoiser_only),
                                       args.device)
    common = dict(batch=args.batch_size, seed=args.seed, dtype=args.torch_dtype, device=args.device)
    with torch.inference_mode():
        if args.denoiser_only:
            dkw = inputs.denoiser_kwargs(loaded, height=args.height, width=args.width, **common)
            den = loaded.denoiser
            call = lambda: den(**dkw)  # noqa: E731
            if _uses_cudagraphs(compiler):
                call = _cudagraph_step(call)
            out = timing.time_callable(call, warmups=args.warmups, iters=args.iters,
                                       device=args.device, label=label)
        else:
            pkw = inputs.pipeline_kwargs(loaded, height=args.height, width=args.width, steps=args.steps,
                                         guidance_scale=args.guidance_scale, **common)
            out = timing.time_pipeline(loaded.pipe, pkw, warmups=args.warmups, iters=args.iters,
                                       device=args.device, steps=args.steps, batch=args.batch_size, label=label)
        if torch.is_tensor(out["output"]):  # the caller's own copy (a CUDA graph's output is overwritten later)
            out["output"] = out["output"].clone()
        res = out["result"]
        res.update(resolution=f"{args.height}x{args.width}", compile_setup_s=round(t_setup, 3))
        extra = []
        for job in timing.progress(resolutions, desc=f"{label}: other resolutions"):
            h, w = job[0], job[1]
            batch = job[2] if len(job) > 2 else args.batch_size
            extra.append(_one_resolution(loaded, args, h, w, {**common, "batch": batch}))
        res["resolutions"] = [e["result"] for e in extra]
        latents = None
        if args.drift_seeds:  # the whole run per seed, latents after each step (compared in main)
            hw = dict(height=args.height, width=args.width, steps=args.steps, guidance_scale=args.guidance_scale)
            latents = drift.collect(loaded.pipe, lambda seed: inputs.pipeline_kwargs(
                loaded, **hw, **{**common, "seed": seed}), range(args.seed, args.seed + args.drift_seeds))
    res["compiled_total"] = timing.counts_delta(c0, timing.compile_counts())
    if compiler == "nexfort":
        compiled = getattr(loaded.pipe, "_nexfort_compiled", None) or {}
        res["nexfort_mode"] = compiled.get("mode")
        # what the module transforms did per component: QKV fusion, quantization with its weight memory
        res["nexfort_prepared"] = compiled.get("prepared") or {}
        from nexfort.core import counters

        # what fired: pass rewrites, the attention kernel each shape chose, fallbacks (which must be 0)
        res["nexfort_counters"] = {k: dict(v) for k, v in counters.items() if v}
    if extra:
        res["sweep"] = sweep_summary(res["resolutions"])
    if compiler != "none":
        uncompile_pipe(loaded.pipe)
    return {"result": res, "output": out["output"], "extra_outputs": [e["output"] for e in extra],
            "drift_latents": latents}


def _uses_cudagraphs(compiler: str) -> bool:
    """torch.compile's own modes that replay CUDA graphs (``reduce-overhead``, ``max-autotune``)."""
    if not compiler.startswith("inductor:"):
        return False
    return bool(torch._inductor.list_mode_options().get(compiler.split(":", 1)[1], {}).get("triton.cudagraphs"))


def _cudagraph_step(fn: Any) -> Any:
    """``fn`` called the way torch's documentation asks of a CUDA-graph mode: a new step marked before each call and
    the outputs cloned out of the graph's memory pool. Without it, the previous call's outputs are still alive when
    the next call starts, and CUDA-graph trees stop replaying (measured on an H200, PixArt-α 1024² denoiser:
    66.4 ms against 32.5 ms for torch.compile's default mode). nexfort's ``cudagraphs`` flag does both itself."""

    def call() -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        out = fn()
        if isinstance(out, (tuple, list)):
            return type(out)(o.clone() if torch.is_tensor(o) else o for o in out)
        return out.clone() if torch.is_tensor(out) else out

    return call


def sweep_summary(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The resolution/batch sweep in one line: compilations after the first call, wall time of the first calls
    (compilations included) against the sum of the steady-state times (target: <= 1.5x)."""
    first = sum(r["warmup_s"] for r in results)
    steady = sum(r["e2e_s_median"] for r in results)
    return {"shapes": len(results),
            "compilations": sum(r["compiled"]["dynamo_graphs"] for r in results),
            "nexfort_compilations": sum(r["compiled"]["nexfort_graphs"] for r in results),
            "first_calls_s": round(first, 3), "steady_s": round(steady, 4),
            "first_over_steady": round(first / steady, 3) if steady else None}


def _one_resolution(loaded: models.Loaded, args: argparse.Namespace, h: int, w: int,
                    common: Dict[str, Any]) -> Dict[str, Any]:
    c0 = timing.compile_counts()
    if args.denoiser_only:
        dkw = inputs.denoiser_kwargs(loaded, height=h, width=w, **common)
        first_out, first = timing.timed_call(lambda: loaded.denoiser(**dkw), args.device)
        out, again = timing.timed_call(lambda: loaded.denoiser(**dkw), args.device)
        out = out[0] if isinstance(out, (tuple, list)) else out
    else:
        pkw = inputs.pipeline_kwargs(loaded, height=h, width=w, steps=args.steps,
                                     guidance_scale=args.guidance_scale, **common)
        _, first = timing.timed_call(lambda: loaded.pipe(**pkw), args.device)
        out, again = timing.timed_call(lambda: loaded.pipe(**pkw), args.device)
        out = out.images
    compiled = timing.counts_delta(c0, timing.compile_counts())
    batch = common["batch"]
    label = f"{h}x{w}" + (f" b{batch}" if batch != args.batch_size else "")
    return {"result": {"resolution": label, "batch": batch, "warmup_s": round(first, 3),
                       "e2e_s_median": round(again, 4), "e2e_s_per_image": round(again / batch, 4),
                       "it_per_s": None if args.denoiser_only else round(args.steps / again, 3),
                       "compiled": compiled},
            "output": out}


def setup(args: argparse.Namespace, family: str) -> None:
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    args.torch_dtype = DTYPES[args.dtype]
    small = not args.device.startswith("cuda")
    default_hw = {"pixart": (1024, 1024), "sdxl": (1024, 1024)}[family] if not small else (256, 256)
    args.height = args.height or default_hw[0]
    args.width = args.width or default_hw[1]
    if args.inductor_modes is None:
        args.inductor_modes = "" if small else "reduce-overhead,max-autotune-no-cudagraphs"
    args.inductor_mode_list = [m.strip() for m in args.inductor_modes.split(",") if m.strip()]
    valid = sorted(set(torch._inductor.list_mode_options()) - {"default"})
    bad = [m for m in args.inductor_mode_list if m not in valid]
    if bad:
        raise SystemExit(f"--inductor-modes: unknown torch.compile mode(s) {bad}; valid: {', '.join(valid)}")
    args.skip_list = [r.strip() for r in args.skip.split(",") if r.strip()]
    bad = [r for r in args.skip_list if r not in SKIPPABLE]
    if bad or (args.skip_list and args.compiler != "all"):
        raise SystemExit(f"--skip {args.skip}: only with --compiler all, and only these runs: {', '.join(SKIPPABLE)}"
                         f" (eager is every run's reference, nexfort the subject; leave an --inductor-modes mode "
                         f"out of that list instead)")
    if args.drift_seeds < 0 or (args.drift_seeds and (args.compiler != "all" or args.denoiser_only)):
        raise SystemExit(f"--drift-seeds {args.drift_seeds}: a number of seeds >= 0, with --compiler all (eager is "
                         f"the reference) and the whole pipeline (not --denoiser-only)")
    if args.drift_bound is not None and not (args.drift_seeds and math.isfinite(args.drift_bound)
                                             and args.drift_bound > 0):
        raise SystemExit(f"--drift-bound {args.drift_bound}: a positive number, with --drift-seeds")


def main(argv: Optional[Sequence[str]] = None, *, family: str = "pixart", description: str = "",
         multiple: Optional[List[Tuple[int, int]]] = None, rare: Optional[List[Tuple[int, int]]] = None) -> int:
    default_help = {"pixart": "PixArt-α XL-2 architecture, random weights (a small variant without a GPU)",
                    "sdxl": "SDXL UNet architecture, random weights (a small variant without a GPU)"}[family]
    args = parser(description, default_help).parse_args(argv)
    setup(args, family)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    cfg, pipe_kw = parse_compiler_config(args.compiler_config)
    if args.compiler in ("nexfort", "all"):  # a bad configuration fails here, before any model is built
        _check_config(cfg, pipe_kw, "--compiler-config")
    extras = parse_also_nexfort(args.also_nexfort)
    if extras and (args.compiler != "all" or args.parallel):
        raise SystemExit("--also-nexfort: more nexfort runs beside the references of --compiler all (not with "
                         "--parallel)")
    for label, xcfg, xkw in extras:
        _check_config(xcfg, xkw, f"--also-nexfort {label}")
    if args.torchao is not None:
        if args.compiler != "all":
            raise SystemExit(f"--torchao {args.torchao}: a reference run of --compiler all (got --compiler "
                             f"{args.compiler})")
        torchao_run.check_type(args.torchao)
    elif args.torchao_regional:
        raise SystemExit("--torchao-regional: the way the --torchao run compiles; give --torchao TYPE too")
    _check_keys(cfg, "--compiler-config")
    par = parallel.setup(args)  # --parallel: checked, process group started, this rank's device (else None)
    if not parallel.is_main(par):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - rank 0 reports; the others' errors still reach stderr
    resolutions: List[Tuple[int, int]] = []
    if args.run_multiple_resolutions:
        resolutions += multiple if multiple is not None else multiple_resolutions()
    if args.run_rare_resolutions:
        resolutions += rare if rare is not None else RARE_RESOLUTIONS
    env = report.environment(args.device)
    loaded = models.load_pipeline(args.model, args.torch_dtype, args.device, args.scheduler, args.seed, family)
    limit = size_limits(loaded)[1]
    if limit is not None and max(args.height, args.width) > limit:
        raise SystemExit(f"--height/--width {args.height}x{args.width}: {loaded.info['denoiser']} takes at most "
                         f"{limit} pixels a side (pos_embed_max_size x patch_size x VAE scale)")
    parallel.apply(loaded.pipe, par)
    resolutions = aligned(loaded, resolutions)
    jobs: List[Tuple[int, ...]] = list(resolutions)
    if jobs:  # the batch sweep: the base resolution at another batch size (1 -> 4)
        jobs.append((args.height, args.width, 4 if args.batch_size != 4 else 1))
    compilers = (["none", *(["inductor"] if "inductor" not in args.skip_list else []),
                  *(f"inductor:{m}" for m in args.inductor_mode_list),
                  *([torchao_run.run_name(args.torchao, args.torchao_regional)] if args.torchao else []), "nexfort"]
                 if args.compiler == "all" else [args.compiler])
    if jobs and "none" not in compilers:
        # every resolution is checked against eager at that resolution: eager runs first, as the reference
        print("--run_*_resolutions: running eager too, as the reference of every resolution", file=sys.stderr)
        compilers.insert(0, "none")
    runs: Dict[str, Dict[str, Any]] = {}
    outputs: Dict[str, Any] = {}
    args.cache_dirs = []
    try:
        for c in compilers:
            name = "eager" if c == "none" else c
            try:
                r = run_one(loaded, c, args, cfg, pipe_kw, jobs)
            except Exception as e:  # noqa: BLE001 - torch.compile's own modes are references: report, go on
                if not c.startswith(("inductor:", torchao_run.PREFIX)):
                    raise
                print(f"{name} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
                runs[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}", "resolutions": []}
                continue
            runs[name], outputs[name] = r["result"], r
        for label, xcfg, xkw in extras:  # nexfort's variants, each on the model built afresh (same seed)
            loaded.pipe = None
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            loaded = models.load_pipeline(args.model, args.torch_dtype, args.device, args.scheduler, args.seed,
                                          family)
            r = run_one(loaded, "nexfort", args, xcfg, xkw, jobs)
            runs[f"nexfort:{label}"], outputs[f"nexfort:{label}"] = r["result"], r
    finally:
        for d in args.cache_dirs:
            shutil.rmtree(d, ignore_errors=True)
    if "eager" in outputs:
        ref = outputs["eager"]
        for name, r in outputs.items():
            runs[name]["rel_l2_vs_eager"] = report.rel_l2(r["output"], ref["output"])
            for res, o, o_ref in zip(runs[name]["resolutions"], r["extra_outputs"], ref["extra_outputs"]):
                res["rel_l2_vs_eager"] = report.rel_l2(o, o_ref)
    data = {"benchmark": "text_to_image" + ("_denoiser_only" if args.denoiser_only else ""), "env": env,
            "model": loaded.info,
            "args": {k: v for k, v in vars(args).items() if k not in ("torch_dtype", "cache_dirs")},
            "compiler_config": {**cfg, **pipe_kw}, "runs": runs, "summary": report.summary(runs)}
    if extras:
        data["variants"] = {f"nexfort:{label}": {"compiler_config": {**xcfg, **xkw},
                                                  "summary": report.summary(runs, subject=f"nexfort:{label}")}
                            for label, xcfg, xkw in extras}
    if args.drift_seeds and "eager" in outputs:
        data["drift"] = drift.compare({n: r["drift_latents"] for n, r in outputs.items()}, args.drift_bound)
    if par is not None:
        data["parallel"] = par
    rc = _report(args, loaded, env, data, runs, outputs) if parallel.is_main(par) else _exit_code(runs)
    parallel.finish(par)
    return rc


def _check_keys(cfg: Dict[str, Any], what: str) -> None:
    unknown = set(cfg) - set(CONFIG_KEYS)
    if unknown:
        raise SystemExit(f"{what}: unknown keys {sorted(unknown)}; valid: {', '.join(CONFIG_KEYS + PIPE_KEYS)}")


def _check_config(cfg: Dict[str, Any], pipe_kw: Dict[str, Any], what: str) -> None:
    """A nexfort configuration resolved as compile_pipe will (its errors name the bad value), before any model."""
    from nexfort.diffusers import resolve_pipe_config

    _check_keys(cfg, what)
    resolve_pipe_config(**{k: v for k, v in cfg.items() if k in CONFIG_KEYS},
                        **({"fuse_qkv_projections": pipe_kw["fuse_qkv_projections"]}
                           if "fuse_qkv_projections" in pipe_kw else {}))


def _report(args: argparse.Namespace, loaded: models.Loaded, env: Dict[str, Any], data: Dict[str, Any],
            runs: Dict[str, Dict[str, Any]], outputs: Dict[str, Any]) -> int:
    """Print the table and write the chart, image and JSON; the exit code."""
    print(f"\n{loaded.info['pipeline']} / {loaded.info['denoiser']} ({loaded.info['denoiser_params_M']}M params) "
          f"{args.height}x{args.width} batch {args.batch_size} {args.dtype} {args.steps} steps on "
          f"{env.get('gpu') or 'CPU'}; torch {env['torch']}, triton {env['triton']}, diffusers {env['diffusers']}"
          f"{parallel.describe(data.get('parallel'))}")
    print(report.table(runs))
    if data["summary"]:
        print(report.summary_line(data["summary"]))
    for name in (n for n in runs if n.startswith("nexfort:")):
        print(report.variant_line(name, runs))
    for name in (n for n in runs if n == "nexfort" or n.startswith("nexfort:")):
        for comp, done in (runs[name].get("nexfort_prepared") or {}).items():
            print(f"{name} prepared {comp}: {'; '.join(done)}")  # e.g. the quantized layers' weight memory
    if data.get("drift"):
        print(drift.table(data["drift"]))
    chart_path = args.output_chart
    if chart_path is None and args.compiler == "all":
        chart_path = (args.output_json[:-5] if args.output_json and args.output_json.endswith(".json")
                      else "text_to_image") + "_chart.png"
    if chart_path:
        title = f"{loaded.info['denoiser']} {args.height}x{args.width} {args.dtype}" + (
            " (denoiser only, CFG batch)" if args.denoiser_only else f", {args.steps} steps")
        data["chart"] = report.chart(chart_path, runs, title, env)
    if args.output_image and not args.denoiser_only:
        data["image"] = report.save_image(args.output_image, outputs[list(outputs)[-1]]["output"])
    if args.output_json:
        report.write_json(args.output_json, data)
        print(f"wrote {args.output_json}")
    for name, r in runs.items():
        if r.get("sweep"):
            sw = r["sweep"]
            print(f"{name}: {sw['shapes']} more shapes: {sw['compilations']} compilations after the first call, "
                  f"first calls {sw['first_calls_s']} s vs steady state {sw['steady_s']} s "
                  f"({sw['first_over_steady']}x)")
    return _exit_code(runs, say=True)


def _exit_code(runs: Dict[str, Dict[str, Any]], say: bool = False) -> int:
    """1 where a compiler's output is non-finite or of another shape than eager's, else 0."""
    def finite(x: Any) -> bool:
        return isinstance(x, float) and x == x and x < float("inf")

    bad = [n for n, r in runs.items() if n != "eager" and "rel_l2_vs_eager" in r
           and not finite(r["rel_l2_vs_eager"])]
    bad += [f"{n} at {x['resolution']}" for n, r in runs.items() if n != "eager"
            for x in r.get("resolutions", []) if "rel_l2_vs_eager" in x and not finite(x["rel_l2_vs_eager"])]
    if bad:
        if say:
            print(f"non-finite output or mismatched shape for: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
