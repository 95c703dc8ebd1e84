"""nox sessions: the test suite on the current torch and on torch 2.1-2.4, lint, and the benchmark.

    nox -s tests            # current torch (2.13.0: a CPU build from this machine's disk), what CI runs
    nox -s tests-torch21    # ... tests-torch24: older torch (PyPI's CUDA builds, ~2.7 GB each, run on the CPU)
    nox -s torch-matrix     # the feature-by-torch table (docs/torch-matrix.md) from the sessions' JUnit XML
    nox -s lint             # ruff (CI runs it first)
    nox -s benchmark        # the main job: the benchmark on the built-in default model
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
JUNIT_DIR = "build/junit"
PYTHON = "3.11"  # the one CPython on which torch.compile works for every torch 2.1-2.15
PACKAGES = ["./packages/nexfort-core", "./packages/nexfort-passes", "./packages/nexfort-cache[redis]",
            "./packages/nexfort-diffusers", "./tests/plugins/nexfort-example-plugin"]
COMMON = ["pytest>=7", "pluggy>=1.3", "hydra-core>=1.3,<1.4", "omegaconf>=2.3,<2.4", "matplotlib", "redis>=4",
          "hatchling>=1.18", "editables", "sentencepiece", "protobuf"]

# torch -> the dependency versions that support it (Python 3.11). The old torch come from PyPI as CUDA 12.1
# builds with their pinned nvidia-*-cu12 wheels (2.4.1: cuDNN 9.1.0.70, 2.3.1: NCCL 2.20.5; all on this machine's
# mirror); they run on the CPU. Each old session also gets pytest-xdist (see OLD_TORCH_ARGS).
MATRIX = {
    # torchao: the quant engine option and the benchmark's --torchao reference run (tests/passes/test_quant_torchao.py)
    "current": ["torch==2.13.0", "diffusers==0.42.1", "transformers>=5,<5.25", "numpy", "peft", "torchao==0.18.0"],
    # torch 2.1's C++ extension builder (Inductor's CPU backend) imports pkg_resources.packaging: setuptools<70.
    # peft (diffusers' LoRA backend, for tests/diffusers/test_lora.py) and the accelerate it pulls in: releases of
    # each transformers' time, pinned so that pip resolves them without touching torch.
    "torch21": ["torch==2.1.2", "diffusers==0.30.3", "transformers==4.44.2", "numpy<2", "huggingface_hub<0.26",
                "setuptools<70", "peft==0.12.0", "accelerate==0.34.2"],
    # torch21 tests diffusers < 0.32 (no get_2d_sincos_pos_embed_from_grid(output_type="pt"): nexfort-diffusers'
    # own torch sin-cos embedding), torch22 and torch24 diffusers 0.32 (diffusers' own)
    "torch22": ["torch==2.2.2", "diffusers==0.32.2", "transformers==4.44.2", "numpy<2", "huggingface_hub<0.26",
                "peft==0.12.0", "accelerate==0.34.2"],
    "torch23": ["torch==2.3.1", "diffusers==0.31.0", "transformers==4.46.3", "numpy<2", "huggingface_hub<0.27",
                "peft==0.13.2", "accelerate==1.1.1"],
    "torch24": ["torch==2.4.1", "diffusers==0.32.2", "transformers==4.48.3", "numpy<2", "huggingface_hub<0.28",
                "peft==0.14.0", "accelerate==1.2.1"],
}


def _ensure_redis_server(session: nox.Session) -> None:
    """Tests start a real redis-server on a loopback port; install Debian's package where we can."""
    if shutil.which("redis-server"):
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "redis-server", external=True,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    else:
        session.warn("redis-server is not installed and cannot be installed here: the Redis tests will skip "
                     "(apt-get install redis-server)")


def _install(session: nox.Session, deps: list) -> None:
    session.install(*deps, *COMMON)
    # the project's own packages, built from this checkout with the dependencies installed above
    session.install("--no-deps", "--no-build-isolation", *PACKAGES)


# Old Inductor can crash the interpreter (torch 2.2 segfaulted once in a generated VAE-decoder C++ kernel): run
# the tests in one pytest-xdist worker, which is replaced after a crash: a crash is one failed test, not a lost run.
# Old Dynamo can also spend unbounded time in sympy on dynamic shapes (torch 2.1, SDXL UNet): a per-test timeout
# (pytest-timeout) turns that into one failed test too. The whole suite takes about 5 minutes on torch 2.3.
OLD_TORCH_ARGS = ["-n", "1", "--max-worker-restart=50", "--timeout=300"]
OLD_TORCH_DEPS = ["pytest-xdist", "pytest-timeout"]
# The current torch: a test that hangs fails after 20 min with its stack (instead of CI's whole 90 min running out
# with nothing named, as at stop 25), and the slowest tests are listed at the end (the suite's budget is ~20 min).
CURRENT_TORCH_ARGS = ["--timeout=1200", "--durations=25"]
CURRENT_TORCH_DEPS = ["pytest-timeout"]


def _pytest(session: nox.Session, name: str) -> None:
    _ensure_redis_server(session)
    _install(session, MATRIX[name] + (CURRENT_TORCH_DEPS if name == "current" else OLD_TORCH_DEPS))
    session.run("python", "-c", "import torch, diffusers; print('torch', torch.__version__, "
                "'diffusers', diffusers.__version__)")
    # the whole suite records one JUnit XML per session, which `nox -s torch-matrix` turns into the feature
    # table (with posargs, e.g. a subset of the tests, add --junitxml=... yourself if you want it recorded)
    args = session.posargs or ["-q", "-p", "no:cacheprovider", f"--junitxml={JUNIT_DIR}/{session.name}.xml",
                               *(CURRENT_TORCH_ARGS if name == "current" else OLD_TORCH_ARGS)]
    os.makedirs(JUNIT_DIR, exist_ok=True)
    session.run("python", "-m", "pytest", *args)


@nox.session(python=PYTHON, name="tests")
def tests(session: nox.Session) -> None:
    """The whole suite on the current torch (what CI runs)."""
    _pytest(session, "current")


for _name in ("torch21", "torch22", "torch23", "torch24"):
    def _make(name: str):
        @nox.session(python=PYTHON, name=f"tests-{name}")
        def _session(session: nox.Session) -> None:
            _pytest(session, name)

        _session.__doc__ = f"The whole suite on {MATRIX[name][0]} (on demand; not in CI)."
        return _session

    globals()[f"tests_{_name}"] = _make(_name)


@nox.session(python=False, name="torch-matrix")
def torch_matrix(session: nox.Session) -> None:
    """The torch feature table from the sessions' JUnit XML (build/junit/<session>.xml): updates
    benchmarks/results/torch-matrix.json (date, torch version, passed/skipped/failed per session) and renders
    docs/torch-matrix.md from it. Run after any of the tests sessions; posargs replace the XML files."""
    import glob
    import sys

    files = session.posargs or sorted(glob.glob(f"{JUNIT_DIR}/tests*.xml"))
    session.run(sys.executable, "tools/torch_matrix.py", *files, external=True)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff's checks (ruff.toml) over everything with Python in it (CI runs it before the tests)."""
    session.install("ruff>=0.17,<0.18")  # pinned: a new ruff's new rules are a change of this repository, not of CI's
    session.run("ruff", "check", "packages", "tests", "benchmarks", "examples", "tools", "noxfile.py")


@nox.session(python=PYTHON)
def benchmark(session: nox.Session) -> None:
    """The main job: benchmarks/text_to_image.py on the built-in default model (posargs are passed on)."""
    _install(session, MATRIX["current"])
    if shutil.which("nvidia-smi"):  # an NVIDIA GPU: the passes' GPU kernels too (FlashAttention-4), as the README says
        session.install("./packages/nexfort-passes[cuda]")
    args = session.posargs or ["--compiler", "all", "--output-json", "benchmarks/out/text_to_image.json"]
    session.run("python", "benchmarks/text_to_image.py", *args)


@nox.session(python=PYTHON)
def zoo(session: nox.Session) -> None:
    """The whole denoiser zoo (tests/diffusers/test_zoo.py with NEXFORT_ZOO=all: every denoiser class of the installed
    diffusers, both entry points, vs eager; CI runs only its subset) on the current torch, on the CPU. Records
    benchmarks/results/zoo_cpu_torch<version>.json (pass/fail/skip per class, versions, date, machine). Then (without
    posargs) tests/diffusers/test_video.py with NEXFORT_SLOW=1: the four tiny video pipelines through compile_pipe
    with Inductor."""
    _install(session, MATRIX["current"])
    os.makedirs(JUNIT_DIR, exist_ok=True)
    xml = f"{JUNIT_DIR}/zoo.xml"
    env = {"NEXFORT_ZOO": "all", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={xml}",
                "tests/diffusers/test_zoo.py", *session.posargs, env=env, success_codes=[0, 1])
    session.run("python", "tests/diffusers/zoo_report.py", xml, "--out-dir", "benchmarks/results")
    # the tiny video pipelines whole (denoiser and VAE) with Inductor: CI runs only their Dynamo-level test
    if not session.posargs:
        session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                    f"--junitxml={JUNIT_DIR}/zoo_video.xml", "tests/diffusers/test_video.py",
                    env={"NEXFORT_SLOW": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"})
