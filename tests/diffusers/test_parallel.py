"""parallelize_pipe (issue 21) on gloo CPU processes: tiny PixArt-α, SD3 and FLUX pipelines, each mode against one
process's eager output, compiled by nexfort (one graph, no graph break at a collective, a new resolution without
recompiling), and the bad layouts and inputs with their errors.

The ranks are forked (torch.multiprocessing, start method "fork") from a fresh interpreter that has imported
diffusers once (parallel_worker.launch): a fresh interpreter per rank would spend ~10 s of CPU importing it, and
forking from the test process hangs once an earlier test has compiled (Inductor's compile thread pool is not in the
child). Each group of ranks runs a list of cases (tests/diffusers/parallel_worker.py) once per module and every
test reads its results. In CI (2 cores): the eager modes and errors on 2 and 4 ranks and one compiled case
(PixArt, Ulysses-2, dynamic shapes). NEXFORT_SLOW=1 adds the compiled runs of every model and mode, with 2 and 4
ranks (~20 min on 2 loaded cores).

What gloo cannot show: speed (the GPU runs are benchmarks/gpu/parallel.sh), NCCL, and ring attention of models
whose attention is diffusers' own (FLUX): diffusers' ring attention needs each chunk's log-sum-exp and none of its
CPU backends returns one (parallelize_pipe refuses it, tested here); PixArt's ring runs through nexfort's CPU
kernel for it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest
import torch

pytest.importorskip("diffusers")
try:
    from diffusers import ContextParallelConfig  # noqa: F401
except ImportError:  # diffusers < 0.36
    pytest.skip("this diffusers has no context parallelism (ContextParallelConfig, diffusers 0.36+), which "
                "parallelize_pipe builds on", allow_module_level=True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parallel_worker  # noqa: E402

SLOW = os.environ.get("NEXFORT_SLOW") == "1"
SLOW_REASON = "compiles every model and mode on 2 and 4 gloo ranks (~20 min on 2 cores); run with NEXFORT_SLOW=1"
RANKS_TIMEOUT = 3600 if SLOW else 900
TOL = 1e-5  # float32: only the order of the sums differs
COMPILE = {"mode": "", "dynamic": True, "ignores": ["vae"]}


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_ranks(world: int, cases: list) -> list:
    """``cases`` on ``world`` gloo ranks, forked from a fresh interpreter (parallel_worker.launch says why not from
    this one); each rank's results. A group that does not finish within ``RANKS_TIMEOUT`` s is a failure, not a
    hang."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch has no torch.distributed with gloo")
    out = tempfile.mkdtemp(prefix="nexfort-parallel-")
    cases_file = os.path.join(out, "cases.json")
    with open(cases_file, "w") as f:
        json.dump(cases, f)
    cmd = [sys.executable, parallel_worker.__file__, str(world), str(_port()), out, cases_file]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RANKS_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{world} gloo ranks did not finish {len(cases)} cases within {RANKS_TIMEOUT} s; "
                    f"stderr tail: {(e.stderr or b'')[-3000:]!r}")
    if proc.returncode != 0:
        pytest.fail(f"{world} gloo ranks exited {proc.returncode}; stderr tail:\n{proc.stderr[-3000:]}")
    results = []
    for r in range(world):
        with open(os.path.join(out, f"rank{r}.json")) as f:
            results.append(json.load(f))
    return results


def _match(name, model, compile=None, sizes=((64, 64),), order="parallel-first", **layout):
    return {"name": name, "kind": "match", "model": model, "layout": layout, "compile": compile,
            "sizes": [list(s) for s in sizes], "order": order}


def _error(name, model, call=None, kind="error", **layout):
    return {"name": name, "kind": kind, "model": model, "layout": layout, "call": call}


EAGER2 = [_match("pixart-cfg2", "tiny-pixart", cfg=2), _match("pixart-ulysses2", "tiny-pixart", ulysses=2),
          _match("pixart-ring2", "tiny-pixart", ring=2), _match("sd3-cfg2", "tiny-sd3", cfg=2),
          _match("sd3-ulysses2", "tiny-sd3", ulysses=2), _match("flux-ulysses2", "tiny-flux", ulysses=2),
          _match("sigma-ulysses2", "tiny-pixart-sigma", ulysses=2),
          _match("sdxl-cfg2", "tiny-sdxl", cfg=2)]  # CFG-parallel takes any denoiser (no context-parallel plan)
ERRORS2 = [
    _error("world", "tiny-pixart", cfg=2, ulysses=2),
    _error("heads", "tiny-pixart-3heads", ulysses=2),
    _error("tokens", "tiny-pixart", call={"size": [48, 48]}, ulysses=2),
    _error("text-tokens", "tiny-flux", call={"text_tokens": 511}, ulysses=2),
    _error("no-cfg", "tiny-pixart", call={"guidance_scale": 1.0}, cfg=2),
    _error("flux-cfg", "tiny-flux", cfg=2),
    _error("not-covered", "tiny-sdxl", ulysses=2),
    _error("flux-ring-cpu", "tiny-flux", ring=2),
    _error("sd3-ring", "tiny-sd3", ring=2),
    _error("odd-batch", "tiny-pixart", kind="denoiser_error", cfg=2),
]
COMPILED2 = [_match("pixart-ulysses2-compiled", "tiny-pixart", compile=COMPILE, sizes=((64, 64), (64, 96)),
                    ulysses=2)]
EAGER4 = [_match("pixart-cfg2-ulysses2", "tiny-pixart", cfg=2, ulysses=2),
          _match("pixart-cfg2-ring2", "tiny-pixart", cfg=2, ring=2),
          _match("pixart-ulysses2-ring2", "tiny-pixart", ulysses=2, ring=2),
          _match("sd3-cfg2-ulysses2", "tiny-sd3", cfg=2, ulysses=2)]
SLOW2 = [_match("pixart-cfg2-compiled", "tiny-pixart", compile=COMPILE, sizes=((64, 64), (96, 64)), cfg=2),
         _match("pixart-ring2-compiled", "tiny-pixart", compile=COMPILE, sizes=((64, 64), (96, 64)), ring=2),
         _match("sd3-ulysses2-compiled", "tiny-sd3", compile=COMPILE, sizes=((64, 64), (96, 64)), ulysses=2),
         # compile_pipe first: its fused processors (max-optimize) replaced by the parallel ones, which read the
         # fused projections
         _match("sd3-ulysses2-compile-first", "tiny-sd3", order="compile-first", ulysses=2,
                compile={"mode": "max-optimize", "dynamic": True, "ignores": ["vae"]}),
         # parallelize_pipe first: max-optimize fuses the QKV projections under the parallel processors
         _match("pixart-ulysses2-max-optimize", "tiny-pixart", ulysses=2,
                compile={"mode": "max-optimize", "dynamic": True, "ignores": ["vae"]}),
         _match("flux-ulysses2-compiled", "tiny-flux", compile=COMPILE, sizes=((64, 64), (64, 96)), ulysses=2)]
SLOW4 = [_match("pixart-cfg2-ulysses2-compiled", "tiny-pixart", compile=COMPILE, sizes=((64, 64), (64, 96)),
                cfg=2, ulysses=2),
         _match("sd3-cfg2-ulysses2-compiled", "tiny-sd3", compile=COMPILE, cfg=2, ulysses=2),
         _match("pixart-ulysses2-ring2-compiled", "tiny-pixart", compile=COMPILE, ulysses=2, ring=2)]


@pytest.fixture(scope="module")
def two():
    res = run_ranks(2, EAGER2 + ERRORS2 + COMPILED2 + (SLOW2 if SLOW else []))
    return lambda name: [r[name] for r in res]


@pytest.fixture(scope="module")
def four():
    res = run_ranks(4, EAGER4 + (SLOW4 if SLOW else []))
    return lambda name: [r[name] for r in res]


def _ok(results):
    for r in results:
        assert not r.get("raised"), r.get("traceback", r)
    return results


@pytest.mark.parametrize("name", [c["name"] for c in EAGER2])
def test_two_ranks_match_one_process(two, name):
    """Each mode on 2 ranks: the latents of one process within float32 tolerance, the same on every rank."""
    ranks = _ok(two(name))
    assert all(e <= TOL for r in ranks for e in r["rel_l2"]), ranks
    assert ranks[0]["rel_l2"] == ranks[1]["rel_l2"]


@pytest.mark.parametrize("name", [c["name"] for c in EAGER4])
def test_four_ranks_combinations_match_one_process(four, name):
    ranks = _ok(four(name))
    assert all(e <= TOL for r in ranks for e in r["rel_l2"]), ranks


def _compiled(ranks, sizes):
    for r in _ok(ranks):
        assert len(r["rel_l2"]) == sizes and all(e <= TOL for e in r["rel_l2"]), r
        assert r["nexfort_graphs"] >= 1 and r["fallbacks"] == 0, r
        assert r["graphs_after_first"] == 0, f"a new resolution recompiled: {r}"
        assert r["breaks_total"] == 0, f"graph breaks: {r}"


def test_compiled_ulysses_one_graph_any_resolution(two):
    """compile_pipe(dynamic=True) after parallelize_pipe: the all-to-alls and all-gathers inside nexfort's graph
    (no graph break), eager's latents at 64x64 and 64x96, no recompilation for the second size."""
    _compiled(two("pixart-ulysses2-compiled"), 2)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason=SLOW_REASON)
@pytest.mark.parametrize("name", [c["name"] for c in SLOW2])
def test_compiled_modes_two_ranks(two, name):
    case = next(c for c in SLOW2 if c["name"] == name)
    _compiled(two(name), len(case["sizes"]))
    if case["compile"]["mode"] == "max-optimize" and case["layout"].get("ulysses", 1) > 1:
        for r in two(name):  # the QKV projections fused, read by nexfort's parallel processors
            assert r["fused"] > 0 and all(p.startswith("Parallel") for p in r["processors"]), r


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason=SLOW_REASON)
@pytest.mark.parametrize("name", [c["name"] for c in SLOW4])
def test_compiled_combinations_four_ranks(four, name):
    case = next(c for c in SLOW4 if c["name"] == name)
    _compiled(four(name), len(case["sizes"]))


ERROR_TEXT = {
    "world": ("ParallelConfigError", ["cfg x ulysses x ring = 2 x 2 x 1 = 4", "world size is 2",
                                      "cfg=2,ulysses=1,ring=1", "cfg=1,ulysses=2,ring=1"]),
    "heads": ("ParallelConfigError", ["ulysses=2 splits the attention heads", "3 heads", "cfg=2,ulysses=1,ring=1"]),
    "tokens": ("ParallelInputError", ["48x48 px", "3x3 = 9 image tokens", "sequence degree 2", "multiple of 32 px"]),
    "text-tokens": ("ParallelInputError", ["encoder_hidden_states has 511 text tokens", "sequence degree 2"]),
    "no-cfg": ("ParallelInputError", ["without classifier-free guidance", "guidance_scale > 1"]),
    "flux-cfg": ("ParallelConfigError", ["cfg=2 needs a pipeline that batches classifier-free guidance",
                                         "FluxPipeline", "cfg=1,ulysses=2,ring=1"]),
    "not-covered": ("ParallelConfigError", ["UNet2DConditionModel has no context-parallel plan",
                                            "FluxTransformer2DModel", "cfg=2 works with any denoiser"]),
    "flux-ring-cpu": ("ParallelConfigError", ["ring=2 on the CPU", "return_lse", "cfg=1,ulysses=2,ring=1"]),
    "sd3-ring": ("ParallelConfigError", ["ring=2", "use ulysses"]),
    "odd-batch": ("ParallelInputError", ["batch is 1 (odd)"]),
}


@pytest.mark.parametrize("name", sorted(ERROR_TEXT))
def test_bad_layouts_and_inputs_raise_on_every_rank(two, name):
    """Each bad layout or input: the same clear error on every rank (naming the values and what works), raised
    before the denoiser runs."""
    kind, parts = ERROR_TEXT[name]
    for r in two(name):
        assert r["raised"] == kind, r
        for part in parts:
            assert part in r["message"], (part, r["message"])


def test_no_process_group():
    from nexfort.diffusers import ParallelConfigError, parallelize_pipe

    assert not torch.distributed.is_initialized()
    loaded = parallel_worker.load("tiny-pixart")
    with pytest.raises(ParallelConfigError, match="default process group and none is initialised.*torchrun "
                                                  "--nproc-per-node"):
        parallelize_pipe(loaded.pipe, cfg=2)
    assert getattr(loaded.pipe, "_nexfort_parallel", None) is None


def test_parse_parallel():
    from nexfort.diffusers.parallel import ParallelConfigError, parse_parallel

    assert parse_parallel("cfg=2,ulysses=2") == {"cfg": 2, "ulysses": 2, "ring": 1}
    assert parse_parallel(" ring=4 ") == {"cfg": 1, "ulysses": 1, "ring": 4}
    for bad in ("cfg=2,tp=2", "ulysses=0", "cfg", "ring=x"):
        with pytest.raises(ParallelConfigError, match="--parallel: bad entry"):
            parse_parallel(bad)
