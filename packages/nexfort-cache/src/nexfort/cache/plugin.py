"""nexfort's compiled-artifact cache: a second process (or machine) skips Inductor's work for a graph.

On when ``options.cache.enabled`` is set (the ``cache-all`` mode flag sets it) or ``NEXFORT_GRAPH_CACHE=1``.

torch with ``torch.compiler.save_cache_artifacts`` / ``load_cache_artifacts`` (2.7+):

- ``nexfort_pre_compile``: computes the graph's key (:mod:`nexfort.cache.key`), asks the store
  (``nexfort_cache_store``) for a verified entry and hot-loads it with ``load_cache_artifacts`` (once per key
  per process). That writes the artifacts (Inductor graphs and kernels, AOTAutograd entries, autotuning
  results, PGO profiles) into Inductor's local caches, so the compilation that follows hits them. Inductor and
  AOTAutograd check their own keys again, so a loaded artifact that does not fit is a miss, never wrong code.
- ``nexfort_post_compile``: on a miss, serializes the artifacts recorded while this graph compiled and stores
  them under the key, with the C++ kernels' shared objects that torch's bundle leaves out
  (:mod:`nexfort.cache.bundle`); after the graph's first call it stores the entry again if that call recorded
  more (Inductor's GPU kernels autotune on their first run: coordinate-descent and runtime config choices,
  which a warm process would otherwise tune again: measured 67-99 s of PixArt-alpha's warm start on an H100),
  with the Triton kernels those choices compiled (:mod:`nexfort.cache.triton_kernels`).

Older torch (2.1-2.6) has no portable bundle: this plugin then stores nothing and loads nothing (one info
message; a warning where the FX graph cache is off, e.g. ``NEXFORT_GRAPH_CACHE=1`` without ``cache-all``).
``cache-all`` then relies on Inductor's FX graph cache in ``TORCHINDUCTOR_CACHE_DIR`` (2.2+; persisted between
processes on the same machine: ship that directory to warm another one; torch 2.1 has none, which one warning
says). Nothing fails.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from nexfort.cache import bundle, triton_kernels
from nexfort.cache import key as keymod
from nexfort.cache.store import NexfortCacheConfigError, warn_once
from nexfort.core.api import ModeFlag, counters, hookimpl, patches

logger = logging.getLogger("nexfort.cache")
ENV = "NEXFORT_GRAPH_CACHE"

#: nexfort-core's patch that records the kernels run-time tuning chooses (nexfort.core.patches)
RECORD_TUNED_KERNELS = "torch.inductor.record_tuned_kernels"

_loaded: set = set()
_logged: set = set()
_pending: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass
class CacheOptions:
    """nexfort's compiled-artifact cache (``options.cache.*``; the ``cache-all`` flag turns it on)."""

    enabled: bool = False
    # the local store's directory (else $NEXFORT_CACHE_DIR, else $XDG_CACHE_HOME/nexfort)
    dir: Optional[str] = None


#: The mode flag this plugin brings (and implements).
CACHE_ALL = ModeFlag(
    name="cache-all",
    description="cache-all: cache every compiled artifact: nexfort's own compiled-graph cache (options.cache.enabled; "
                "same as NEXFORT_GRAPH_CACHE=1) and Inductor's FX graph cache.",
    values={"options": {"cache": {"enabled": True}, "inductor": {"fx_graph_cache": True}}},
)


@dataclass
class CacheStoreOptions:
    """Where nexfort's compiled-artifact cache stores entries (``options.cache_store.*``)."""

    # a shared Redis store (else $NEXFORT_CACHE_REDIS_URL; else local only): redis://, rediss:// or unix://,
    # checked (with a clear error) before the first graph compiles
    redis_url: Optional[str] = None


@hookimpl
def nexfort_config_schema() -> Mapping[str, type]:
    return {"cache": CacheOptions, "cache_store": CacheStoreOptions}


@hookimpl
def nexfort_mode_flags() -> Sequence[ModeFlag]:
    return [CACHE_ALL]


def enabled(config: Any) -> bool:
    if os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(config.options.cache.enabled)
    except Exception:  # noqa: BLE001
        return False


def has_artifact_api() -> bool:
    compiler = getattr(torch, "compiler", None)
    return hasattr(compiler, "save_cache_artifacts") and hasattr(compiler, "load_cache_artifacts")


def get_store(config: Any) -> Any:
    from nexfort.core.api import plugin_manager

    store = plugin_manager().hook.nexfort_cache_store(config=config)
    if store is None:  # the store plugins are disabled: use the local directory
        from nexfort.cache.local import local_store

        store = local_store(config)
    return store


# ------------------------------------------------------------------------------------ artifact bundle
def _manager() -> Any:
    try:
        from torch.compiler._cache import CacheArtifactManager
    except ImportError:  # pragma: no cover
        return None
    return CacheArtifactManager if hasattr(CacheArtifactManager, "_seen_artifacts") else None


def artifacts_mark() -> Optional[int]:
    """Where the process's record of cache artifacts stands now (to serialize only what one graph adds)."""
    mgr = _manager()
    return len(mgr._seen_artifacts) if mgr is not None else None


def artifacts_since(mark: Optional[int]) -> Optional[bytes]:
    """The artifacts recorded since ``mark``, in ``load_cache_artifacts``'s format.

    Uses the manager's record (private, feature-detected) to bundle one graph's artifacts only; falls back to
    the public ``save_cache_artifacts()`` (all artifacts of the process so far) where that is not available.
    """
    mgr = _manager()
    if mgr is not None and mark is not None:
        try:
            from torch.compiler._cache import _serialize_single_cache
            from torch.utils._appending_byte_serializer import AppendingByteSerializer

            new = list(mgr._seen_artifacts)[mark:]
            if not new:
                return None
            groups: Dict[str, list] = {}
            for a in new:
                groups.setdefault(a.type(), []).append(a)
            ser = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
            ser.extend(groups.items())
            return ser.to_bytes()
        except Exception:  # noqa: BLE001 - internals moved: use the public API
            logger.debug("nexfort cache: per-graph artifact bundle failed", exc_info=True)
    result = torch.compiler.save_cache_artifacts()
    return result[0] if result else None


# ---------------------------------------------------------------------------------------------- hooks
@hookimpl
def nexfort_pre_compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config: Any,
                        pass_fingerprint: Sequence[str]) -> None:
    if not enabled(config):
        return
    if not has_artifact_api():
        _no_artifact_api(config)
        return
    try:
        store = get_store(config)
        key = keymod.cache_key(gm, example_inputs, config, pass_fingerprint)
    except NexfortCacheConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the cache never stops a compilation
        warn_once(f"key-{type(e).__name__}", f"nexfort cache: disabled for a graph ({type(e).__name__}: {e}).")
        return
    with _lock:
        already = key in _loaded
    loaded = already
    if not already:
        payload = store.get(key)
        if payload is not None:
            loaded = _load(key, payload)
    counters["cache"]["hits" if loaded else "misses"] += 1
    _pending[gm] = (key, store, loaded, artifacts_mark(), bundle.now(), _inductor_misses())


def _inductor_misses() -> int:
    """Inductor's and AOTAutograd's cache misses so far in this process."""
    from torch._dynamo.utils import counters as torch_counters

    return torch_counters["inductor"]["fxgraph_cache_miss"] + torch_counters["aot_autograd"]["autograd_cache_miss"]


def _no_artifact_api(config: Any) -> None:
    from nexfort.core.api import has_inductor_knob

    if not has_inductor_knob("fx_graph_cache"):  # torch 2.1: no FX graph cache either
        warn_once("no-persistent-cache", f"nexfort cache: torch {torch.__version__} has neither "
                  "torch.compiler.save_cache_artifacts (torch 2.7+) nor Inductor's FX graph cache "
                  "(inductor.fx_graph_cache, torch 2.2+): compiled graphs are not cached between processes.")
        return
    msg = (f"nexfort cache: torch {torch.__version__} cannot export compiled artifacts "
           "(torch.compiler.save_cache_artifacts, torch 2.7+); only Inductor's FX graph cache in "
           "TORCHINDUCTOR_CACHE_DIR persists between processes")
    try:
        fx_cache_on = bool(config.options.inductor.get("fx_graph_cache"))
    except Exception:  # noqa: BLE001
        fx_cache_on = False
    if fx_cache_on:  # cache-all turned it on: that is the documented fallback, nothing to warn about
        if "no-artifact-api" not in _logged:
            _logged.add("no-artifact-api")
            logger.info("%s.", msg)
        return
    warn_once("no-artifact-api", msg + ", and it is not on: use mode 'cache-all' or options "
              "{'inductor.fx_graph_cache': True}.")


def _load(key: str, payload: bytes) -> bool:
    from nexfort.core.api import inductor_cache_dir

    try:
        torch_bundle, files = bundle.unpack(payload)
        written = bundle.install_kernel_files(inductor_cache_dir(), files)
        if written:
            counters["cache"]["kernel_files"] += len(written)
        shipped = any(rel.startswith(triton_kernels.PREFIX) for rel in files)
        triton_dirs = triton_kernels.install(triton_kernels.cache_dir(), files) if shipped else []
        if triton_dirs:
            counters["cache"]["triton_kernels"] += len(triton_dirs)
        info = torch.compiler.load_cache_artifacts(torch_bundle)
    except Exception as e:  # noqa: BLE001 - a verified but unusable bundle (e.g. another torch): a miss
        warn_once(f"load-{key}", f"nexfort cache: could not load entry {key[:16]}... "
                  f"({type(e).__name__}: {e}); compiling without it.")
        return False
    if info is None:
        return False
    with _lock:
        _loaded.add(key)
    counters["cache"]["loaded"] += 1
    counters["cache"]["bytes_loaded"] += len(payload)
    logger.info("nexfort cache: loaded %s (%d bytes)", key[:16], len(payload))
    return True


@hookimpl
def nexfort_post_compile(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], config: Any,
                         compiled: Any) -> Optional[Callable[[], None]]:
    pending = _pending.pop(gm, None)
    if pending is None:
        return None
    key, store, loaded, mark, started, misses = pending
    if loaded and _inductor_misses() == misses:
        return None
    if loaded:  # Inductor could not use what was loaded (e.g. its keys changed): replace the entry
        counters["cache"]["stale"] += 1
    if not _save(key, store, mark, started):
        return None
    saved_at, saved_time = artifacts_mark(), bundle.now()

    def after_first_call() -> None:
        """Inductor's GPU kernels autotune on their first run (coordinate descent, runtime config choice) and
        record the results then: store the entry again with them and the kernels they compiled, or every warm
        process tunes (and compiles) again."""
        try:
            now = artifacts_mark()
            if saved_at is None or now is None or now > saved_at:
                if _save(key, store, mark, started, counter="updated", triton_since=saved_time):
                    logger.info("nexfort cache: %s updated with its first call's autotuning results", key[:16])
        finally:
            patches.release(after_first_call)

    # which Triton kernels the first call's tuning chooses (shipped with the update); held until that call ended,
    # or until the compiled graph (which keeps this function until then) is garbage-collected
    patches.hold(RECORD_TUNED_KERNELS, after_first_call)
    return after_first_call


def _save(key: str, store: Any, mark: Optional[int], started: float, counter: str = "saved",
          triton_since: Optional[float] = None) -> bool:
    """Store the artifacts recorded since ``mark``, the C++ kernel files written since ``started`` and (with
    ``triton_since``) the Triton kernels compiled since then, which Inductor's own bundle does not carry."""
    try:
        from nexfort.core.api import inductor_cache_dir

        data = artifacts_since(mark)
        if not data:
            return False
        files = bundle.kernel_files_since(inductor_cache_dir(), started)
        if triton_since is not None:
            from nexfort.core.api import tuned_kernel_dirs

            files.update(triton_kernels.files_since(triton_kernels.cache_dir(), triton_since,
                                                    bundle.MAX_KERNEL_FILES - len(files), only=tuned_kernel_dirs()))
        data = bundle.pack(data, files)
        stored = store.put(key, data)
        with _lock:
            _loaded.add(key)  # this process has these artifacts in Inductor's caches already
        if stored is False:  # the store said why (one warning): nothing was stored, nothing is counted
            return False
        counters["cache"][counter] += 1
        counters["cache"]["bytes_stored"] += len(data)
        logger.info("nexfort cache: stored %s (%d bytes)", key[:16], len(data))
        return True
    except Exception as e:  # noqa: BLE001
        warn_once(f"save-{type(e).__name__}", f"nexfort cache: could not save a graph's artifacts "
                  f"({type(e).__name__}: {e}).")
        return False


# ---------------------------------------------------------------------------------------------- facts
def fact_key(name: str) -> str:
    """The store key of an environment fact (:mod:`nexfort.core.facts`): its name, the torch build and the
    versions and hardware of :func:`nexfort.cache.key.environment`."""
    return keymod.digest({"key_version": keymod.KEY_VERSION, "fact": name, "environment": keymod.environment(),
                          "torch_git": getattr(torch.version, "git_version", None)})


@hookimpl
def nexfort_recall_fact(name: str, config: Any) -> Optional[str]:
    if not enabled(config):
        return None
    try:
        payload = get_store(config).get(fact_key(name))
        return None if payload is None else payload.decode("utf-8")
    except NexfortCacheConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable fact is an unknown one
        warn_once(f"fact-{type(e).__name__}", f"nexfort cache: could not read a fact ({type(e).__name__}: {e}).")
        return None


@hookimpl
def nexfort_record_fact(name: str, value: str, config: Any) -> None:
    if not enabled(config):
        return
    try:
        if get_store(config).put(fact_key(name), value.encode("utf-8")) is not False:
            counters["cache"]["facts_saved"] += 1
    except NexfortCacheConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        warn_once(f"fact-save-{type(e).__name__}", f"nexfort cache: could not save a fact ({type(e).__name__}: {e}).")


def reset() -> None:
    """Forget which keys this process loaded (tests)."""
    with _lock:
        _loaded.clear()
