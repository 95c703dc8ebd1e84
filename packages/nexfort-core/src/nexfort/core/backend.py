"""The ``nexfort`` torch.compile backend: configuration -> plugin passes -> TorchInductor.

Registered through the ``torch_dynamo_backends`` entry point (this module never calls
``register_backend``: on torch 2.5+ a second registration of the same name is an error).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Callable, Dict, List, Sequence

import torch

from nexfort.core import compat
from nexfort.core.config import parse_spec, resolve_config
from nexfort.core.counters import counters
from nexfort.core.errors import NexfortConfigError
from nexfort.core.flags import check_features  # noqa: F401 - re-exported (its former home)
from nexfort.core.graph_pass import GraphPass, combined_uuid, fingerprint, run_passes
from nexfort.core.patches import applied, compilation_holds, hold_until_compiled
from nexfort.core.plugins import get_plugin_manager
from nexfort.core.torch_patches import GUARD_NAMESPACE, RECHECK_AUTOTUNE_CACHE

logger = logging.getLogger("nexfort")

_warned: set = set()


def _warn_once(key: str, message: str, once: bool = True) -> None:
    if once and key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, stacklevel=3)


def nexfort_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable:
    """``torch.compile(model, backend="nexfort", options={...})`` lands here for each captured graph.

    torch passes ``mode=`` and ``options=`` only when they were given (2.15 adds ``name=``); a ``mode`` given to
    torch.compile itself is read as nexfort's mode string.
    """
    mode = kwargs.pop("mode", None)
    options = kwargs.pop("options", None)
    spec = parse_spec(options)  # the one place this entry point reads what the user passed
    if mode is not None:
        spec = {**spec, "mode": mode}
    cfg = resolve_config(spec)
    _apply_late_options(gm, example_inputs, cfg)
    return compile_graph(gm, example_inputs, cfg)


_LATE_ADVICE = ("Pass it to torch.compile itself (torch.compile(m, backend='nexfort', {key}={value!r})) or use "
                "nexfort.compilers.nexfort_compile(m, {key}={value!r}), which does.")


def _apply_late_options(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], cfg: Any) -> None:
    """``dynamic``/``fullgraph`` given in ``torch.compile(backend="nexfort", options={...})``: Dynamo decided both
    before this backend saw a graph. What a backend can still do, it does:

    - ``dynamic: true``: a graph Dynamo captured with static shapes is compiled as it is, and Dynamo is told to make
      the frame's next recompile dynamic (:func:`compat.request_dynamic_recompile`): over any number of shapes the
      frame recompiles once, into a graph with symbolic sizes. (``torch.compile(dynamic=True)`` skips even that
      one recompile.) Where the running torch gives a backend no way to, a warning says so.
    - ``dynamic: false``: cannot be honoured (Dynamo's automatic dynamic shapes recompile with symbolic sizes after
      a shape change, before the backend runs): a warning says what to do.
    - ``fullgraph: true``: cannot be honoured (a graph break splits the frame before any backend sees a graph):
      a warning says what to do.
    """
    if cfg.dynamic is True:
        if not _has_symbolic_inputs(example_inputs):
            marked = compat.request_dynamic_recompile(gm)
            if marked is None:
                _warn_once("late-dynamic-true",
                           f"nexfort: options {{'dynamic': True}}: the installed torch {torch.__version__} gives a "
                           "backend no way to make Dynamo's recompiles dynamic here (no API for it, or "
                           "torch._dynamo.config.automatic_dynamic_shapes is off), so graphs are captured with static "
                           "shapes and shape changes recompile (Dynamo's automatic dynamic shapes, where on, make "
                           "changed dimensions dynamic one at a time). "
                           + _LATE_ADVICE.format(key="dynamic", value=True))
            else:
                _log_once("late-dynamic-true",
                          "nexfort: options {'dynamic': True}: Dynamo captured this graph with static shapes (it "
                          "decides before a backend runs); its frame's first shape change recompiles it once with "
                          "dynamic shapes. torch.compile(..., dynamic=True) avoids that one recompile.")
    elif cfg.dynamic is False:
        _warn_once("late-dynamic-false",
                   "nexfort: options {'dynamic': False} cannot be applied by a backend: Dynamo decides the shapes "
                   "before a backend sees a graph, and after a shape change its automatic dynamic shapes recompile "
                   "with symbolic sizes. " + _LATE_ADVICE.format(key="dynamic", value=False))
    if cfg.fullgraph:
        _warn_once("late-fullgraph",
                   "nexfort: options {'fullgraph': True} cannot be applied by a backend: Dynamo splits a frame at "
                   "its graph breaks before a backend sees any graph, so graph breaks are not errors here. "
                   + _LATE_ADVICE.format(key="fullgraph", value=True))


def _log_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    logger.info(message)


class NexfortBackend:
    """A backend bound to one resolved configuration (what ``nexfort_compile`` hands to torch.compile)."""

    __name__ = "nexfort"

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable:
        return compile_graph(gm, example_inputs, self.config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NexfortBackend) and other.config is self.config

    def __hash__(self) -> int:
        return id(self.config)


def apply_overrides(cfg: Any) -> Dict[str, bool]:
    """Apply ``options.overrides`` (torch's global backend flags); return the ones to scope to the compiled graph.

    A flag that Dynamo's global-state guard does not cover (cuDNN's) is set process-wide, as in eager. A flag it
    covers (the matmul TF32 / reduced-precision flags, torch 2.2+) must not change while Dynamo traces
    (torch 2.2-2.4 fail the frame, newer torch silently undoes it), so it is returned: the graph is compiled and
    run under it (:func:`_run_under_flags`), and the process's value is left as it was.
    """
    scoped: Dict[str, bool] = {}
    for name, value in cfg.options.overrides.items():
        if value is None:
            continue
        if not compat.has_backend_flag(name):
            _warn_once("override-" + name, f"nexfort: overrides.{name} is not available in torch "
                       f"{torch.__version__}; left unchanged.")
            continue
        if compat.dynamo_guards_backend_flag(name):
            scoped[name] = bool(value)
            continue
        old = compat.set_backend_flag(name, bool(value))
        if old != bool(value):
            logger.info("nexfort: set %s=%s (overrides.%s)", name, value, name)
    return scoped


def _copy_attrs(run: Callable, compiled: Callable) -> Callable:
    """Give the wrapper ``run`` what Inductor/AOTAutograd read from ``compiled`` (its calling convention)."""
    for attr in ("_boxed_call", "__name__", "__qualname__", "__doc__"):
        if hasattr(compiled, attr):
            try:
                setattr(run, attr, getattr(compiled, attr))
            except (AttributeError, TypeError):  # pragma: no cover
                pass
    run.__wrapped__ = compiled  # type: ignore[attr-defined]
    return run


def _run_under_flags(compiled: Callable, flags: Dict[str, bool]) -> Callable:
    """``compiled`` run with backend flags set for each call (restored after it, so Dynamo's guards hold)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with compat.backend_flags(flags):
            return compiled(*args, **kwargs)

    return _copy_attrs(run, compiled)


def _after_first_call(compiled: Callable, callbacks: List[Callable[[], None]]) -> Callable:
    """``compiled``, which calls ``callbacks`` once after its first call returned (the plugins'
    ``nexfort_post_compile`` results); their exceptions are logged, never raised."""
    pending = list(callbacks)

    def run(*args: Any, **kwargs: Any) -> Any:
        out = compiled(*args, **kwargs)
        if pending:
            todo = pending[:]
            pending.clear()
            for cb in todo:
                try:
                    cb()
                except Exception as e:  # noqa: BLE001 - a plugin's follow-up never breaks the model's call
                    _warn_once(f"after-first-{type(e).__name__}",
                               f"nexfort: a plugin's after-first-call step failed ({type(e).__name__}: {e}).")
                    logger.debug("nexfort: after-first-call failure", exc_info=True)
        return out

    return _copy_attrs(run, compiled)


def _clone_cudagraph_outputs(compiled: Callable) -> Callable:
    """``compiled`` whose CUDA-graph outputs are copied out of the graph's memory pool after each replay.

    A CUDA graph writes its outputs into the same static memory on every replay, so a caller that keeps an output
    across calls (a scheduler keeping the previous step's prediction, a benchmark comparing outputs later) would
    read overwritten data; torch's own ``reduce-overhead`` raises "accessing tensor output of CUDAGraphs that has
    been overwritten by a subsequent run" there. One copy of the outputs (the denoiser's: a latent-sized tensor)
    costs microseconds and makes every output the caller's own.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        out = compiled(*args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(o.clone() if isinstance(o, torch.Tensor) and o.is_cuda else o for o in out)
        return out.clone() if isinstance(out, torch.Tensor) and out.is_cuda else out

    return _copy_attrs(run, compiled)


def collect_passes(cfg: Any) -> List[GraphPass]:
    pm = get_plugin_manager()
    passes: List[GraphPass] = []
    for result in pm.hook.nexfort_graph_passes(config=cfg):
        for p in result or ():
            if not isinstance(p, GraphPass):
                raise TypeError(f"nexfort_graph_passes must return GraphPass objects, got {p!r}")
            passes.append(p)
    return passes


def inductor_patches(cfg: Any) -> Dict[str, Any]:
    """Plugins' Inductor settings, then the configuration's (flags and user), which win: plain Python values
    (the configuration's lists and mappings are OmegaConf containers, which Inductor can neither use nor pickle
    into its FX-graph-cache key; a list where Inductor's default is a tuple becomes a tuple)."""
    from omegaconf import OmegaConf

    from nexfort.core.validate import check_inductor_key

    pm = get_plugin_manager()
    patches: Dict[str, Any] = {}
    for contribution in pm.hook.nexfort_inductor_config(config=cfg):
        for k, v in (contribution or {}).items():
            check_inductor_key(k, v, f"inductor.{k} (from a plugin)")
            patches[k] = v
    patches.update(OmegaConf.to_container(cfg.options.inductor, resolve=True))
    patches = {k: compat.inductor_value(k, v) for k, v in patches.items()}
    if cfg.memory_format == "channels_last" and compat.has_inductor_knob("force_layout_optimization"):
        patches.setdefault("force_layout_optimization", True)
    if cfg.flags.freezing and torch.is_grad_enabled():
        _warn_once("freezing-grad", "nexfort: 'freezing' only applies to graphs compiled under torch.no_grad() "
                   "or torch.inference_mode(); this graph was compiled with grad enabled, so its weights stay "
                   "parameters.")
    return patches


def _has_symbolic_inputs(example_inputs: Sequence[Any]) -> bool:
    for x in example_inputs:
        if isinstance(x, torch.SymInt):
            return True
        if isinstance(x, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in x.shape):
            return True
    return False


#: What Dynamo attaches to the graph module it hands a backend, besides the graph (torch 2.x). AOTAutograd reads
#: them: without ``meta["dynamo_compile_id"]`` and ``_param_name_to_source`` it takes the graph for one not
#: captured by Dynamo, so no parameter is a static input and a CUDA graph copies every weight on every replay
#: (measured on an H100, torch 2.11, PixArt-α 512x768 fp16, same lease: 12.84 instead of 11.15 ms, +1.1 GB).
_DYNAMO_GM_ATTRS = ("_param_name_to_source", "_source_to_user_stacks", "_backend_id")


def _copy_graph_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of ``gm`` with its own graph (passes rewrite it), sharing the parameters and keeping Dynamo's
    metadata, so that what follows treats the copy exactly like the original."""
    work = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    work.meta = dict(getattr(gm, "meta", {}))
    for attr in _DYNAMO_GM_ATTRS:
        if attr in gm.__dict__:
            setattr(work, attr, gm.__dict__[attr])
    # Dynamo marks each placeholder with the source of its input (a plain attribute: deepcopy drops it)
    old = [n for n in gm.graph.nodes if n.op == "placeholder"]
    new = [n for n in work.graph.nodes if n.op == "placeholder"]
    for a, b in zip(old, new):
        if hasattr(a, "_dynamo_source"):
            b._dynamo_source = a._dynamo_source
    return work


def _while_fx_graph_cache(patches: Dict[str, Any]) -> contextlib.AbstractContextManager:
    """The warm-autotune fix (:data:`RECHECK_AUTOTUNE_CACHE`) while Inductor compiles with its FX graph cache on
    (the kernels it loads from there call the method it fixes); nothing otherwise."""
    import torch._inductor.config as inductor_config

    on = bool(patches.get("fx_graph_cache", getattr(inductor_config, "fx_graph_cache", False)))
    return applied(RECHECK_AUTOTUNE_CACHE) if on else contextlib.nullcontext()


def _let_go_of_compilation_holds() -> None:
    """Now, not at a first call: the compilation returns no graph (torch < 2.3; a no-op elsewhere)."""
    let_go = compilation_holds()
    if let_go is not None:
        let_go()


def _eager(gm: torch.fx.GraphModule) -> Callable:
    """``gm`` run eagerly as the compiled graph: Dynamo still builds the frame's guards after this returns, so the
    compilation's holds last until its first call (torch < 2.3; elsewhere plain ``gm.forward``)."""
    let_go = compilation_holds()
    return gm.forward if let_go is None else _after_first_call(gm.forward, [let_go])


def compile_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], cfg: Any) -> Callable:
    """Compile one Dynamo graph under a resolved configuration."""
    check_features(cfg)  # configuration errors are never "fallen back" from
    hold_until_compiled(GUARD_NAMESPACE)  # Dynamo builds this frame's guards after the backend returned
    scoped_flags = apply_overrides(cfg)
    patches = inductor_patches(cfg)
    passes = collect_passes(cfg)
    pre = [p for p in passes if p.stage == "pre_grad"]
    early = [p for p in passes if p.stage == "post_grad_early"]
    post = [p for p in passes if p.stage == "post_grad"]
    pm = get_plugin_manager()
    try:
        pm.hook.nexfort_pre_compile(gm=gm, example_inputs=example_inputs, config=cfg,
                                    pass_fingerprint=fingerprint(passes))
        work = gm
        if pre:
            # rewrite a copy of the graph (sharing the module's parameters): the original stays intact for
            # the eager fallback
            work = _copy_graph_module(gm)
            if run_passes(pre, work):
                work.graph.lint()
                work.recompile()
        post_fn = (lambda graph: run_passes(post, graph)) if post else None
        early_fn = (lambda graph: run_passes(early, graph)) if early else None
        with compat.backend_flags(scoped_flags), _while_fx_graph_cache(patches), contextlib.ExitStack() as contexts:
            for context in pm.hook.nexfort_compile_context(config=cfg):
                if context is not None:
                    contexts.enter_context(context)
            compiled = compat.compile_fx(work, example_inputs, patches, post_fn, combined_uuid(post),
                                         early=early_fn, early_uuid=combined_uuid(early))
        after_first = [f for f in pm.hook.nexfort_post_compile(gm=gm, example_inputs=example_inputs, config=cfg,
                                                                compiled=compiled) if callable(f)]
        let_go = compilation_holds()  # torch < 2.3: the guard namespace until the first call (guards built by then)
        if let_go is not None:
            after_first.append(let_go)
        if after_first:
            compiled = _after_first_call(compiled, after_first)
        if patches.get("triton.cudagraphs"):
            compiled = _clone_cudagraph_outputs(compiled)
        if scoped_flags:
            compiled = _run_under_flags(compiled, scoped_flags)
        counters["backend"]["graphs"] += 1
        if _has_symbolic_inputs(example_inputs):
            counters["backend"]["dynamic_graphs"] += 1
        return compiled
    except (NexfortConfigError, *compat.dynamo_control_flow_exceptions()) as e:
        if type(e).__name__ == "SkipFrame" and not compat.dynamo_passes_skip_frame():
            # torch 2.1 wraps a backend's SkipFrame as a compiler failure of the caller's call: run the graph
            # eagerly instead, which is what Dynamo does with the frame on newer torch (not a failure: no fallback)
            counters["backend"]["eager_graphs"] += 1
            logger.info("nexfort: a graph asked to run eagerly (%s); this torch's Dynamo cannot skip the frame", e)
            return _eager(gm)
        _let_go_of_compilation_holds()  # no graph: nothing of this call needs them (a restart holds them again)
        raise  # configuration errors are the user's to fix; Dynamo's restart signals are not failures
    except Exception as e:  # noqa: BLE001 - any compiler failure
        if cfg.options.compiler.on_error == "raise":
            _let_go_of_compilation_holds()  # no graph: the compilation ends with this error
            raise
        counters["backend"]["fallbacks"] += 1
        n = len(gm.graph.nodes)
        _warn_once(f"fallback-{type(e).__name__}",
                   f"nexfort: compiling a graph of {n} nodes failed ({type(e).__name__}: {str(e)[:500]}); "
                   "running that graph eagerly. Set options={'compiler.on_error': 'raise'} to raise instead.",
                   once=bool(cfg.options.compiler.warn_once))
        logger.debug("nexfort: compile failure", exc_info=True)
        return _eager(gm)
