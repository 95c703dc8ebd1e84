"""The one place that knows how torch's internals differ between versions (2.1 -> current).

Feature detection only: nothing here (or anywhere in nexfort) parses ``torch.__version__`` to decide
behaviour. Each function's docstring says which torch versions differ and how; ``docs/torch-matrix.md`` says which
feature the tests found working on which torch.

By concern: here Inductor's config knobs and its entry point (:func:`compile_fx`, post-grad passes), small API
differences (SDPA backend selection, CUDA-graph steps, Inductor's cache directory) and Dynamo's internals a backend
meets (its control-flow exceptions, dynamic recompiles); torch's global backend flags in
:mod:`nexfort.core.compat_flags`; the nearest-upsampling probe and its decompositions in
:mod:`nexfort.core.compat_upsample`; the warm-autotune fix in :mod:`nexfort.core.compat_autotune`; the patches of
torch internals (the guard namespace among them) in :mod:`nexfort.core.torch_patches`, held through
:mod:`nexfort.core.patches`. Every name stays importable from this module.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Dict, Optional, Sequence

import torch

# Inductor knobs that some supported torch versions lack, with the first torch that has them (for error
# messages only: whether the running torch has a knob is always read off its config).
INDUCTOR_KNOB_SINCE: Dict[str, str] = {
    "post_grad_custom_pre_pass": "2.2",
    "post_grad_custom_post_pass": "2.2",
    "pre_grad_custom_pass": "2.2",
    "fx_graph_cache": "2.2",
    "force_fuse_int_mm_with_mul": "2.2",
    "joint_custom_pre_pass": "2.4",
    "joint_custom_post_pass": "2.4",
    "triton.cudagraph_skip_dynamic_graphs": "2.4",
    "emulate_precision_casts": "2.5",
    "autotune_local_cache": "2.5",
    "max_autotune_gemm_search_space": "2.5",
    "bundled_autotune_remote_cache": "2.6",
}


@functools.lru_cache(maxsize=None)
def inductor_config_defaults() -> Dict[str, Any]:
    """``{key: default}`` of the running torch's Inductor config (dotted keys for sub-configs)."""
    import torch._inductor.config as cfg

    if hasattr(cfg, "get_config_copy"):
        return dict(cfg.get_config_copy())
    return dict(cfg.to_dict())  # pragma: no cover (very old torch)


def inductor_value(key: str, value: Any) -> Any:
    """``value`` as Inductor takes it for ``key``: plain Python (an OmegaConf list or mapping becomes a list or a
    dict, recursively), and a list becomes a tuple where the running torch's default for ``key`` is a tuple
    (``cpp.cxx``: ``(None, "g++")``), since Inductor tests ``isinstance(..., tuple)`` in places and JSON and YAML
    have no tuples."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover (omegaconf is a dependency of nexfort-core)
        DictConfig = ListConfig = ()  # type: ignore[assignment]
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list) and isinstance(inductor_config_defaults().get(key), tuple):
        value = tuple(value)
    return value


def has_inductor_knob(key: str) -> bool:
    return key in inductor_config_defaults()


def has_custom_graph_pass() -> bool:
    """torch 2.6+: post-grad passes must be ``CustomGraphPass`` objects with a uuid to stay cache-safe."""
    try:
        from torch._inductor import custom_graph_pass  # noqa: F401
    except ImportError:
        return False
    return hasattr(custom_graph_pass, "CustomGraphPass")


def make_post_grad_pass(run: Callable[[Any], None], uuid: str) -> Any:
    """Wrap ``run(graph)`` as a value for ``post_grad_custom_post_pass`` (or ``post_grad_custom_pre_pass``) that
    Inductor's caches key on ``uuid``.

    - torch 2.6+: a ``CustomGraphPass`` subclass whose ``uuid()`` enters the FX/AOTAutograd cache keys.
    - torch 2.2-2.5: the pass object is pickled into the cache key: ``__reduce__`` makes it pickle as its
      uuid, so a changed pass is a miss (a module-level function would pickle by name: a stale hit).
    """
    if has_custom_graph_pass():
        from torch._inductor.custom_graph_pass import CustomGraphPass

        class _NexfortPostGradPass(CustomGraphPass):
            def __call__(self, graph: torch.fx.Graph) -> None:
                run(graph)

            def uuid(self) -> Optional[Any]:
                return uuid

        return _NexfortPostGradPass()

    class _NexfortPostGradPassLegacy:
        def __call__(self, graph: torch.fx.Graph) -> None:
            run(graph)

        def __reduce__(self):
            return (str, ("nexfort-post-grad-pass-" + uuid,))

    return _NexfortPostGradPassLegacy()


# Inductor's knob for each post-grad stage of nexfort's passes (graph_pass.STAGES)
POST_GRAD_KNOBS = {"post_grad_early": "post_grad_custom_pre_pass", "post_grad": "post_grad_custom_post_pass"}


def compile_fx(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    config_patches: Dict[str, Any],
    post_grad: Optional[Callable[[Any], None]] = None,
    post_grad_uuid: Optional[str] = None,
    early: Optional[Callable[[Any], None]] = None,
    early_uuid: Optional[str] = None,
) -> Any:
    """Lower through Inductor with ``config_patches``; run ``early(graph)`` on the ATen graph before Inductor's
    own post-grad passes and ``post_grad(graph)`` after them.

    Where Inductor has the ``post_grad_custom_pre_pass``/``post_grad_custom_post_pass`` hooks (2.2+) the passes go
    there (cache-safe, see :func:`make_post_grad_pass`). On torch 2.1 (no hooks, no FX graph cache) both run, early
    first, inside a wrapper of ``inner_compile``, which is safe there because no cache can skip it.
    """
    from torch._inductor.compile_fx import compile_fx as _compile_fx
    from torch._inductor.compile_fx import compile_fx_inner

    patches = dict(config_patches)
    decomps = inductor_decompositions()
    kw: Dict[str, Any] = {} if decomps is None else {"decompositions": decomps}
    runs = {"post_grad_early": (early, early_uuid), "post_grad": (post_grad, post_grad_uuid)}
    runs = {stage: ru for stage, ru in runs.items() if ru[0] is not None}
    if not runs:
        return _compile_fx(gm, example_inputs, config_patches=patches, **kw)
    if has_inductor_knob("post_grad_custom_post_pass"):
        for stage, (run, uuid) in runs.items():
            knob = POST_GRAD_KNOBS[stage]
            if patches.get(knob) is not None:
                raise ValueError(
                    f"options.inductor.{knob} is owned by nexfort's pass plugins; "
                    f"contribute a GraphPass with stage={stage!r} instead"
                )
            patches[knob] = make_post_grad_pass(run, uuid or "")
        return _compile_fx(gm, example_inputs, config_patches=patches, **kw)

    def inner_compile(graph_module: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        for run, _ in runs.values():  # early first (dicts keep their order)
            run(graph_module.graph)
        graph_module.recompile()
        return compile_fx_inner(graph_module, *args, **kwargs)

    return _compile_fx(gm, example_inputs, inner_compile=inner_compile, config_patches=patches, **kw)

# the names of the concerns split out of this module, importable from here as before
from nexfort.core.compat_flags import (  # noqa: E402,F401
    _BACKEND_FLAGS,
    _F32_MATMUL,
    _FP32_PRECISION,
    _flag_target,
    _Float32MatmulPrecision,
    _safe_hasattr,
    backend_flag_names,
    backend_flags,
    dynamo_guards_backend_flag,
    get_backend_flag,
    has_backend_flag,
    set_backend_flag,
)
from nexfort.core.compat_upsample import (  # noqa: E402,F401
    _UPSAMPLE_NEAREST_OK,
    _probe_upsample_nearest,
    _upsample_nearest_dynamic_ok,
    inductor_decompositions,
    inductor_upsample_nearest_scale_factor_ok,
)


def mark_dynamic(t: torch.Tensor, dim: int, min: Optional[int] = None, max: Optional[int] = None) -> None:
    """``torch._dynamo.mark_dynamic`` (min/max only where the running torch takes them, 2.3+)."""
    fn = torch._dynamo.mark_dynamic
    if (min is not None or max is not None) and "min" in inspect.signature(fn).parameters:
        fn(t, dim, min=min, max=max)
    else:
        fn(t, dim)


def cudagraph_mark_step_begin() -> None:
    fn = getattr(torch.compiler, "cudagraph_mark_step_begin", None)
    if fn is None:  # torch 2.1
        fn = torch._inductor.cudagraph_mark_step_begin
    fn()


def sdpa_kernel(backends: Sequence[Any]) -> contextlib.AbstractContextManager:
    """Select SDPA backends: ``torch.nn.attention.sdpa_kernel`` (2.3+) or the older ``sdp_kernel``."""
    try:
        from torch.nn.attention import sdpa_kernel as _sdpa_kernel

        return _sdpa_kernel(list(backends))
    except ImportError:  # torch < 2.3
        names = {getattr(b, "name", str(b)).upper() for b in backends}
        return torch.backends.cuda.sdp_kernel(
            enable_flash="FLASH_ATTENTION" in names,
            enable_math="MATH" in names,
            enable_mem_efficient="EFFICIENT_ATTENTION" in names,
        )


def is_registered_backend(name: str) -> bool:
    from torch._dynamo import list_backends

    try:
        return name in list_backends(exclude_tags=())
    except TypeError:  # pragma: no cover
        return name in list_backends()


def inductor_cache_dir() -> str:
    """Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR`` or its default), without creating it."""
    import os

    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # torch < 2.3
        try:
            from torch._inductor.utils import default_cache_dir  # type: ignore
        except ImportError:  # pragma: no cover
            import getpass
            import tempfile

            return os.path.join(tempfile.gettempdir(), "torchinductor_" + getpass.getuser())
    return default_cache_dir()


@functools.lru_cache(maxsize=None)
def dynamo_control_flow_exceptions() -> tuple:
    """The exceptions a backend must let through to Dynamo: its signals, not compiler failures.

    Dynamo's ``OutputGraph.call_user_compiler`` treats two kinds raised from a backend as instructions: a
    ``RestartAnalysis`` (torch 2.6+: ``TensorifyScalarRestartAnalysis``, raised inside AOTAutograd/Inductor when a
    float input must be specialized: the frame is traced again) and ``SkipFrame`` (Inductor raises it, e.g. for
    bf16 on a GPU without bf16: the frame runs eagerly). Every other ``TorchDynamoException`` reaching a backend is a
    failure: ``BackendCompilerFailed`` and, on newer torch, ``InductorError`` (a ``BackendCompilerFailed``, which wraps
    every Inductor failure) and the other ``ShortenTraceback`` kinds. Catching the whole ``TorchDynamoException``
    family made every Inductor failure of newer torch (2.13) crash the caller instead of falling back. Both names exist
    in every torch from 2.1; looked up by name all the same."""
    import torch._dynamo.exc as exc

    return tuple(
        getattr(exc, n) for n in ("RestartAnalysis", "SkipFrame") if isinstance(getattr(exc, n, None), type)
    )


@functools.lru_cache(maxsize=None)
def dynamo_passes_skip_frame() -> bool:
    """Whether Dynamo lets a ``SkipFrame`` raised by a backend through (torch 2.2+: the frame runs eagerly) rather
    than wrapping it as ``BackendCompilerFailed`` (torch 2.1, which fails the caller's call). Told from the names its
    ``OutputGraph.call_user_compiler`` (or ``_call_user_compiler``) refers to; True where neither can be read."""
    try:
        from torch._dynamo.output_graph import OutputGraph
    except ImportError:  # pragma: no cover
        return True
    found = False
    for name in ("call_user_compiler", "_call_user_compiler"):
        fn = getattr(OutputGraph, name, None)
        code = getattr(inspect.unwrap(fn), "__code__", None) if fn is not None else None
        if code is None:
            continue
        found = True
        if "SkipFrame" in code.co_names:
            return True
    return not found


def _source_name(source: Any) -> Optional[str]:
    name = getattr(source, "name", None)  # a property on newer torch, a method on older
    if callable(name):
        name = name()
    return name if isinstance(name, str) else None


def _dynamic_candidates(gm: torch.fx.GraphModule, tx: Any) -> Optional[Dict[str, int]]:
    """``{source name: ndim}`` of the graph's tensor inputs that the caller passes (not the module's parameters
    and buffers, which ``dynamic=True`` keeps static too). Dynamo's ``GraphArg`` of each input is read off the
    placeholder's ``meta["grapharg"]``, else off the output graph being compiled (``tx.output.graphargs``);
    ``None`` when neither is there."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    graphargs = [n.meta.get("grapharg") for n in placeholders]
    if not any(graphargs):
        try:
            graphargs = list(getattr(getattr(tx, "output", None), "graphargs", None) or ())
        except Exception:  # noqa: BLE001
            graphargs = []
        placeholders = [None] * len(graphargs)
        if not graphargs:
            return None
    out: Dict[str, int] = {}
    for node, grapharg in zip(placeholders, graphargs):
        meta = node.meta if node is not None else {}
        source = getattr(grapharg, "source", None) or getattr(node, "_dynamo_source", None)
        try:
            example = getattr(grapharg, "example", None)
        except Exception:  # noqa: BLE001 - a freed weak reference (newer torch keeps examples weakly)
            example = None
        if example is None:
            example = meta.get("example_value")
        if source is None or not isinstance(example, torch.Tensor) or isinstance(example, torch.nn.Parameter):
            continue
        guard_source = getattr(source, "guard_source", None)
        guard_source = guard_source() if callable(guard_source) else guard_source
        if any(bool(getattr(guard_source, m, lambda: False)())
               for m in ("is_nn_module", "is_specialized_nn_module", "is_unspecialized_nn_module")):
            continue
        name = _source_name(source)
        if name is not None and example.dim() > 0:
            out[name] = example.dim()
    return out


def request_dynamic_recompile(gm: torch.fx.GraphModule) -> Optional[int]:
    """Make Dynamo compile the next recompile of the frame now being compiled with every dimension of ``gm``'s
    input tensors dynamic (what ``torch.compile(dynamic=True)`` does from the start); return how many inputs were
    marked, or ``None`` where the running torch gives a backend no way to (then nothing was changed).

    Called from inside a backend, while Dynamo traces the frame. It writes what Dynamo's automatic-dynamic shapes
    write after seeing a dimension change (and what ``torch._dynamo.mark_dynamic`` writes for a marked dimension):
    the frame's state, which ``torch._dynamo.reset()`` forgets. With it, the first shape change recompiles once into
    a graph with symbolic sizes, instead of one static recompile per changed dimension. Where
    ``torch._dynamo.config.automatic_dynamic_shapes`` is off Dynamo reads none of this (``torch.compile(
    dynamic=False)`` turns it off): ``None`` then too.

    - newer torch (``torch._dynamo.pgo``): each input's ``FrameStateSizeEntry`` is merged with an all-dynamic size,
      through ``pgo.process_automatic_dynamic`` (which finds the frame's code state).
    - older torch: ``tx.output.frame_state[name].size`` (a list; ``None`` marks a dimension dynamic).
    """
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except (ImportError, AttributeError):  # no current-translator API, or not inside Dynamo
        return None
    if tx is None or not getattr(torch._dynamo.config, "automatic_dynamic_shapes", False):
        return None
    names = _dynamic_candidates(gm, tx)
    if names is None:
        return None
    try:
        from torch._dynamo import pgo
    except ImportError:
        pgo = None
    process = getattr(pgo, "process_automatic_dynamic", None)
    entry_cls = getattr(pgo, "FrameStateSizeEntry", None)
    auto_dynamic = getattr(pgo, "auto_dynamic", None)
    if callable(process) and entry_cls is not None and hasattr(entry_cls, "make_size") and auto_dynamic is not None:
        for name, ndim in names.items():
            process(tx, name, entry_cls.make_size(size=(auto_dynamic,) * ndim))
        return len(names)
    frame_state = getattr(getattr(tx, "output", None), "frame_state", None)
    if not isinstance(frame_state, dict):
        return None
    marked = 0
    for name in names:
        entry = frame_state.get(name)
        size = getattr(entry, "size", False)
        if isinstance(size, list):
            entry.size = [None] * len(size)
            marked += 1
        elif entry is not None and size is None:  # already dynamic in every dimension
            marked += 1
    return marked if marked or not names else None  # inputs, none of them in a state this code understands
