"""The one place that knows how torch's internals differ between versions (2.1 -> current).

Feature detection only: nothing here (or anywhere in nexfort) parses ``torch.__version__`` to decide
behaviour. Each function's docstring says which torch versions differ and how; ``docs/torch-matrix.md`` says which
feature the tests found working on which torch.
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
    """Wrap ``run(graph)`` as a value for ``post_grad_custom_post_pass`` that Inductor's caches key on ``uuid``.

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


def compile_fx(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    config_patches: Dict[str, Any],
    post_grad: Optional[Callable[[Any], None]] = None,
    post_grad_uuid: Optional[str] = None,
) -> Any:
    """Lower through Inductor with ``config_patches``; run ``post_grad(graph)`` on the ATen graph.

    Where Inductor has the ``post_grad_custom_post_pass`` hook (2.2+) the pass goes there (cache-safe, see
    :func:`make_post_grad_pass`). On torch 2.1 (no hook, no FX graph cache) it runs inside a wrapper of
    ``inner_compile``, which is safe there because no cache can skip it.
    """
    from torch._inductor.compile_fx import compile_fx as _compile_fx
    from torch._inductor.compile_fx import compile_fx_inner

    patches = dict(config_patches)
    decomps = inductor_decompositions()
    kw: Dict[str, Any] = {} if decomps is None else {"decompositions": decomps}
    if post_grad is None:
        return _compile_fx(gm, example_inputs, config_patches=patches, **kw)
    if has_inductor_knob("post_grad_custom_post_pass"):
        existing = patches.get("post_grad_custom_post_pass")
        if existing is not None:
            raise ValueError(
                "options.inductor.post_grad_custom_post_pass is owned by nexfort's pass plugins; "
                "contribute a GraphPass with stage='post_grad' instead"
            )
        patches["post_grad_custom_post_pass"] = make_post_grad_pass(post_grad, post_grad_uuid or "")
        return _compile_fx(gm, example_inputs, config_patches=patches, **kw)

    def inner_compile(graph_module: torch.fx.GraphModule, *args: Any, **kwargs: Any) -> Any:
        post_grad(graph_module.graph)
        graph_module.recompile()
        return compile_fx_inner(graph_module, *args, **kwargs)

    return _compile_fx(gm, example_inputs, inner_compile=inner_compile, config_patches=patches, **kw)


def _flag_target(name: str) -> Optional[tuple]:
    """``(object, attribute, on value, off value)`` of one of torch's global backend flags, or ``None`` when
    the running torch lacks it. TF32 goes through the ``fp32_precision`` API where torch has it (newer torch
    raises when the legacy and new APIs are mixed)."""
    if name not in _BACKEND_FLAGS:
        raise KeyError(name)
    if name == "matmul_allow_tf32" and _F32_MATMUL.usable():
        return _F32_MATMUL, "precision", "high", "highest"
    precision = _FP32_PRECISION.get(name)
    if precision is not None:
        obj = precision()
        if obj is not None and _safe_hasattr(obj, "fp32_precision"):
            return obj, "fp32_precision", "tf32", "ieee"
    obj, attr = _BACKEND_FLAGS[name]()
    if obj is None or not _safe_hasattr(obj, attr):
        return None
    return obj, attr, True, False


def _safe_hasattr(obj: Any, attr: str) -> bool:
    """``hasattr`` that survives torch < 2.5's ``torch.backends.cuda.matmul``, which raises AssertionError
    ("Unknown attribute ...") instead of AttributeError for a flag it lacks."""
    try:
        return hasattr(obj, attr)
    except Exception:  # noqa: BLE001
        return False


def set_backend_flag(name: str, value: bool) -> Optional[bool]:
    """Set one of torch's global backend flags by nexfort's override name; return the previous value.

    Returns ``None`` (and sets nothing) when the running torch lacks the flag."""
    target = _flag_target(name)
    if target is None:
        return None
    obj, attr, on, off = target
    old = getattr(obj, attr) == on
    setattr(obj, attr, on if value else off)
    return old


def get_backend_flag(name: str) -> Optional[bool]:
    """The current value of a backend flag by nexfort's override name (``None`` when torch lacks it)."""
    target = _flag_target(name)
    if target is None:
        return None
    obj, attr, on, _ = target
    return getattr(obj, attr) == on


def has_backend_flag(name: str) -> bool:
    return _flag_target(name) is not None


@contextlib.contextmanager
def backend_flags(values: Dict[str, bool]):
    """Set backend flags (``{override name: value}``) for the duration of the block; restore the exact previous
    values (``fp32_precision`` included) after it. Flags the running torch lacks are ignored."""
    saved = []
    try:
        for name, value in values.items():
            target = _flag_target(name)
            if target is None:
                continue
            obj, attr, on, off = target
            want, cur = (on if value else off), getattr(obj, attr)
            if cur != want:
                saved.append((obj, attr, cur))
                setattr(obj, attr, want)
        yield
    finally:
        for obj, attr, cur in reversed(saved):
            setattr(obj, attr, cur)


@functools.lru_cache(maxsize=None)
def dynamo_guards_backend_flag(name: str) -> bool:
    """Whether Dynamo's global-state guard covers this backend flag (probed, not versioned).

    A backend must not change such a flag while Dynamo traces: torch 2.2-2.4 then fail the frame ("Global state
    changed while dynamo tracing"), newer torch silently restores it (the TF32 ``fp32_precision``). The matmul
    TF32 / reduced-precision-reduction flags are covered from torch 2.2 (``GlobalStateGuard``); cuDNN's are not;
    torch 2.1 has no such guard."""
    target = _flag_target(name)
    if target is None:
        return False
    guards = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
    guard_cls = getattr(guards, "GlobalStateGuard", None)
    if guard_cls is None:  # torch 2.1: Dynamo guards no global backend state
        return False
    obj, attr, on, off = target
    cur = getattr(obj, attr)
    guard = guard_cls()
    setattr(obj, attr, off if cur == on else on)
    try:
        return not guard.check()
    finally:
        setattr(obj, attr, cur)


class _Float32MatmulPrecision:
    """``torch.set/get_float32_matmul_precision`` as one attribute.

    TF32 for matmuls is set through this API where it can be: it keeps torch's legacy state and the newer
    ``fp32_precision`` state in agreement. Setting only ``torch.backends.cuda.matmul.fp32_precision`` leaves them
    disagreeing, and then ``torch.get_float32_matmul_precision()``, which Inductor's GEMM autotuning calls, raises
    "PyTorch is checking the matmul precision without a specific backend name ... mix of the legacy and new APIs"
    (seen with ``max-autotune:low-precision`` on an H100, torch 2.11).
    """

    @property
    def precision(self) -> str:
        return torch.get_float32_matmul_precision()

    @precision.setter
    def precision(self, value: str) -> None:
        torch.set_float32_matmul_precision(value)

    def usable(self) -> bool:
        """False where torch lacks the API, or where the process already mixed the two APIs (the getter raises):
        then the ``fp32_precision`` attribute is used, as that process chose."""
        if not hasattr(torch, "set_float32_matmul_precision"):
            return False
        try:
            torch.get_float32_matmul_precision()
        except RuntimeError:
            return False
        return True


_F32_MATMUL = _Float32MatmulPrecision()

_FP32_PRECISION: Dict[str, Callable[[], Any]] = {
    "matmul_allow_tf32": lambda: torch.backends.cuda.matmul,
    "conv_allow_tf32": lambda: getattr(torch.backends.cudnn, "conv", None),
}

_BACKEND_FLAGS: Dict[str, Callable[[], Any]] = {
    "conv_benchmark": lambda: (torch.backends.cudnn, "benchmark"),
    "conv_allow_tf32": lambda: (torch.backends.cudnn, "allow_tf32"),
    "matmul_allow_tf32": lambda: (torch.backends.cuda.matmul, "allow_tf32"),
    "matmul_allow_fp16_reduction": lambda: (torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction"),
    "matmul_allow_bf16_reduction": lambda: (torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction"),
    # torch 2.7+
    "matmul_allow_fp16_accumulation": lambda: (torch.backends.cuda.matmul, "allow_fp16_accumulation"),
}


def backend_flag_names() -> Sequence[str]:
    return tuple(_BACKEND_FLAGS)


def mark_dynamic(t: torch.Tensor, dim: int, min: Optional[int] = None, max: Optional[int] = None) -> None:
    """``torch._dynamo.mark_dynamic`` (min/max only where the running torch takes them, 2.3+)."""
    fn = torch._dynamo.mark_dynamic
    if (min is not None or max is not None) and "min" in inspect.signature(fn).parameters:
        fn(t, dim, min=min, max=max)
    else:
        fn(t, dim)


_UPSAMPLE_NEAREST_OK: Dict[str, Optional[bool]] = {}


def inductor_upsample_nearest_scale_factor_ok(probe: bool = True, config: Any = None) -> Optional[bool]:
    """Whether Inductor computes ``F.interpolate(x, scale_factor=2.0, mode="nearest")`` right under
    ``torch.inference_mode()``; ``None`` when it cannot be told here (no working C++ compiler, ...), or when
    ``probe`` is False and it has not been told yet in this process.

    torch 2.2's Inductor lowering of ``aten.upsample_nearest2d.default`` takes the op's ``scales_h``/``scales_w``
    (the scale factor, 2.0) for the input/output ratio (0.5): each output reads input index ``2 * i``, out of
    bounds with no check (pytorch/pytorch#116848: NaN/garbage in diffusers' VAE decoder and UNet upsamplers,
    fixed in torch 2.3, which inverts the scale). Only inference mode reaches that lowering with scales (the
    op's ``.vec`` overload keeps them); ``no_grad`` decomposes the op in Python first. The same lowering cannot
    take symbolic sizes there either ("Cannot convert expression to float" under ``dynamic=True``). Told by
    compiling and running the op once on a small CPU tensor (a view into a larger buffer, so a wrong index reads
    the buffer, not beyond it) and comparing with eager, once per process (never from inside a compilation:
    ``compile_pipe`` asks first). With a ``config``, the outcome is remembered through the plugins
    (:mod:`nexfort.core.facts`: the cache plugin's store when its cache is on), so that a warm process skips the
    probe's two compilations (9 s of C++ compile on a GPU machine with a fresh Inductor directory)."""
    if "ok" in _UPSAMPLE_NEAREST_OK or not probe:
        return _UPSAMPLE_NEAREST_OK.get("ok")
    from nexfort.core import facts

    told = facts.remembered("inductor_upsample_nearest2d", {"ok": bool, "dynamic_ok": bool},
                            _probe_upsample_nearest, config)
    _UPSAMPLE_NEAREST_OK.update(told if told is not None else {"ok": None})
    return _UPSAMPLE_NEAREST_OK["ok"]


def _probe_upsample_nearest() -> Optional[Dict[str, bool]]:
    """``{"ok": ..., "dynamic_ok": ...}`` told by compiling (see :func:`inductor_upsample_nearest_scale_factor_ok`),
    ``None`` when it cannot be told here."""
    import torch.nn.functional as F

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2.0, mode="nearest")

    def up_dynamic(t: torch.Tensor) -> torch.Tensor:  # (another code object: its own Dynamo cache entry)
        return F.interpolate(t, scale_factor=2.0, mode="nearest")

    big = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    try:
        with torch.inference_mode():
            x = big[:, :, :3, :3]
            out = torch.compile(up, backend="inductor", dynamic=False)(x)
            ok: Optional[bool] = bool(torch.equal(out, up(x)))
    except Exception:  # pragma: no cover (no C++ compiler, ...)
        ok = None
    if ok is None:
        return None
    return {"ok": ok, "dynamic_ok": _upsample_nearest_dynamic_ok(up_dynamic, big)}


def _upsample_nearest_dynamic_ok(up: Callable[[torch.Tensor], torch.Tensor], big: torch.Tensor) -> bool:
    """Whether Inductor compiles nearest upsampling with symbolic sizes into one graph that is right at two
    sizes. torch 2.2-2.3's lowering of ``aten.upsample_nearest2d`` reads the input size as a number
    (``evaluate_static_shape``): a guard on every upsampled size (the SDXL UNet recompiled at every resolution
    under ``dynamic=True``), or on torch 2.2 an error; inference mode reaches that lowering (see
    :func:`inductor_upsample_nearest_scale_factor_ok`)."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    try:
        compiled = torch.compile(up, backend="inductor", dynamic=True)
        with torch.inference_mode():
            for h, w in ((3, 4), (5, 6)):
                x = big[:, :, :h, :w]
                if not torch.equal(compiled(x), up(x)):
                    return False
    except Exception:
        return False
    return counters["stats"]["unique_graphs"] - graphs == 1


def inductor_decompositions() -> Optional[Dict[Any, Callable[..., Any]]]:
    """The decomposition table for Inductor's ``compile_fx``, or ``None`` for Inductor's own.

    Where Inductor's nearest-upsampling lowering was found wrong in this process
    (:func:`inductor_upsample_nearest_scale_factor_ok`, torch 2.2) or found to specialize symbolic sizes
    (:func:`_upsample_nearest_dynamic_ok`, torch 2.2-2.3), ``aten.upsample_nearest2d`` is decomposed
    with torch's own Python decomposition (``torch._decomp``: an index computation, which is what ``no_grad``
    runs and what takes symbolic sizes) instead of reaching that lowering."""
    if (
        inductor_upsample_nearest_scale_factor_ok(probe=False) is not False
        and _UPSAMPLE_NEAREST_OK.get("dynamic_ok") is not False
    ):
        return None
    from torch._decomp import decomposition_table
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    aten = torch.ops.aten
    for op in (aten.upsample_nearest2d.default, aten.upsample_nearest2d.vec):
        if op in decomposition_table:
            table[op] = decomposition_table[op]
    return table


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
