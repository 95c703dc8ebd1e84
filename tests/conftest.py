"""Shared fixtures: fresh counters, a private Inductor cache directory, seeded random inputs, the gpu marker."""

from __future__ import annotations

import os
import tempfile

import pytest

# Each test session compiles into its own Inductor cache so that results never come from a stale cache
# of another run (tests that exercise caching make their own directories).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nexfort-test-inductor-"))
os.environ.setdefault("NEXFORT_CACHE_DIR", tempfile.mkdtemp(prefix="nexfort-test-cache-"))

import torch  # noqa: E402

from tests.helpers import rel_l2  # noqa: E402


@pytest.hookimpl(trylast=True)  # after the junitxml plugin's own configure
def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped with a reason on CPU-only machines)")
    config.addinivalue_line("markers", "slow: takes more than a minute on the CPU")
    _record_versions(config)


def _record_versions(config):
    """The versions this run tested, as test-suite properties of the JUnit XML (``--junitxml``), which
    ``tools/torch_matrix.py`` reads. Done here rather than with ``record_testsuite_property`` so that it also works
    under pytest-xdist (the controller writes the XML; its workers have none)."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - another pytest
        return
    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    import importlib.metadata
    import platform

    xml.add_global_property("torch", torch.__version__)
    xml.add_global_property("python", platform.python_version())
    for dist in ("diffusers", "transformers"):
        try:
            xml.add_global_property(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_state(request):
    """Reset nexfort's counters and Dynamo's caches around every test; fail a test that leaves a patch of torch's or
    diffusers' internals applied (:mod:`nexfort.core.patches`: every patch is undone when the feature that needs it
    is done, or with the objects it was made on)."""
    from nexfort.core import counters
    from nexfort.core.counters import reset

    reset()
    torch._dynamo.reset()
    yield counters
    torch._dynamo.reset()
    _check_nothing_left_patched(request.node)


def _drop_old_dynamo_guard_finalizers() -> int:
    """Torch < 2.3 leaks every module it compiled: its guards register ``weakref.finalize(module,
    CheckFunctionManager.invalidate)``, and that manager reaches the module again (through its OutputGraph), so the
    finalizer registry keeps the module alive for good, ``torch._dynamo.reset()`` or not. After a reset (the cache
    entries those finalizers would invalidate are gone) detach them, so that what the test built can be collected
    and the check below sees what nexfort itself left. Returns how many were detached (0 on newer torch)."""
    import weakref

    try:
        from torch._dynamo.guards import CheckFunctionManager
    except ImportError:  # pragma: no cover
        return 0
    dropped = 0
    for fin in list(getattr(weakref.finalize, "_registry", {})):
        info = weakref.finalize._registry.get(fin)
        func = getattr(info, "func", None)
        if getattr(func, "__func__", None) is CheckFunctionManager.invalidate:
            fin.detach()
            dropped += 1
    return dropped


def _print_holders(patches):  # debugging aid: what keeps a patched object alive (NEXFORT_DEBUG_LEFTOVERS=1)
    import gc
    import sys
    import types

    for record in list(patches._objects.values()):
        peek = record.finalizer.peek()
        if peek is None:
            continue
        obj = peek[0]
        chain, seen = [obj], {id(obj)}
        mine = {id(chain)}
        for _ in range(10):
            found = gc.get_referrers(chain[-1])
            mine.add(id(found))
            refs = [r for r in found if id(r) not in seen and id(r) not in mine
                    and not isinstance(r, types.FrameType) and r is not peek]
            mine.add(id(refs))
            if not refs:
                break
            r = refs[0]
            seen.add(id(r))
            chain.append(r)
        print("HOLDERS:", " <- ".join(f"{type(c).__name__}:{str(c)[:80]!r}" for c in chain), file=sys.stderr)
        break


def _drop_log_record_arguments(item) -> int:
    """pytest keeps every log record of a test until its report is made, arguments and all: torch 2.1's Inductor logs
    ``"example value absent for node: %s"`` with the FX node itself (torch/_inductor/fx_passes/split_cat.py), and
    that node reaches its graph module and every compiled submodule. Format those records now (their text stays,
    for the report) and drop the arguments, so the objects they named can be collected. Returns how many."""
    import logging

    try:
        from _pytest.logging import LogCaptureHandler, caplog_records_key
    except ImportError:  # pragma: no cover - another pytest
        return 0
    lists = list(item.stash.get(caplog_records_key, {}).values())
    lists += [h.records for h in logging.getLogger().handlers if isinstance(h, LogCaptureHandler)]
    dropped = 0
    for records in lists:
        for record in records:
            if record.args:
                record.msg, record.args = record.getMessage(), None
                dropped += 1
    return dropped


def _check_nothing_left_patched(item=None):
    from nexfort.core import patches

    left = patches.leftovers()
    if left:  # objects of the test that reference cycles still keep alive: collect them first
        import gc

        _drop_old_dynamo_guard_finalizers()
        if item is not None:
            _drop_log_record_arguments(item)
        gc.collect()
        left = patches.leftovers()
    if left and os.environ.get("NEXFORT_DEBUG_LEFTOVERS"):
        _print_holders(patches)
    if left:
        patches.restore_all()  # the next test starts clean
        pytest.fail("the test left patches of torch/diffusers internals applied (nexfort.core.patches): "
                    + "; ".join(left), pytrace=False)


@pytest.fixture
def counters():
    from nexfort.core import counters as c

    return c


@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def assert_close():
    def check(out, ref, tol=1e-4):
        err = rel_l2(out, ref)
        assert err <= tol, f"relative L2 error {err:.3e} > {tol:.1e}"
        return err

    return check
