"""Hook specifications of nexfort: everything between core and its plugins goes through these.

Plugins (the project's own ``nexfort-passes``, ``nexfort-cache``, ``nexfort-diffusers`` and any third
party's) implement them with :data:`nexfort.core.hookimpl` and are found through the ``nexfort`` entry-point
group. Core never imports a plugin by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, Mapping, Optional, Sequence

import pluggy

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python < 3.8
    Protocol = object  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from nexfort.core.flags import ModeFlag
    from nexfort.core.graph_pass import GraphPass
    from nexfort.core.schema import NexfortConfig

hookspec = pluggy.HookspecMarker("nexfort")


class QuantizationAPI(Protocol):
    """What :func:`nexfort_quantization` returns: linear-layer quantization of a module in place (nexfort-passes'
    ``nexfort.passes.quant`` module is one). ``QuantizationError`` is the error it raises for bad input and
    ``Selection`` a saved choice of the layers kept in high precision (``read(path)``, ``save(path)``,
    ``check_model``, ``check``, ``reselect``)."""

    QuantizationError: type
    Selection: type

    def config_for(self, name: str, device: Any = None, **kwargs: Any) -> Any:
        """The quantization config of the type ``name`` (an unknown name raises, naming the valid ones)."""

    def check_top_percentage(self, top_percentage: Any) -> float:
        """``top_percentage`` (0-100] as a float, else an error naming it."""

    def excluding(self, names: Iterable[str]) -> Callable[[Any, str], bool]:
        """A filter that keeps the layers whose qualified name contains none of ``names``."""

    def fingerprint(self, model: Any) -> Dict[str, Any]:
        """What identifies ``model``'s linear layers (names and shapes) for a saved selection."""

    def quantize_(self, model: Any, config: Any, filter_fn: Any = None) -> Any:
        """Quantize ``model``'s linear layers in place; returns how many (with ``summary()``)."""

    def quantize_selected(self, model: Any, config: Any, selection: Any, filter_fn: Any = None) -> Any:
        """Quantize the layers ``selection`` chose."""

    def select_layers(self, model: Any, config: Any, calibration: Any, top_percentage: float = 100,
                      filter_fn: Any = None) -> Any:
        """Measure each candidate layer's error on ``calibration`` and choose the ``top_percentage`` to quantize."""


@hookspec
def nexfort_config_schema() -> Optional[Mapping[str, type]]:
    """Declare the option namespaces a plugin owns.

    Return a mapping ``{namespace: dataclass}``; the dataclass's fields are the plugin's switches and their
    defaults, and become ``options.<namespace>.<field>`` of the configuration (``options={"attention.enabled":
    False}``). A namespace must not collide with a core namespace or with another plugin's: that is an error
    raised when the configuration is resolved. Return ``None`` when the plugin has no options.
    """


@hookspec
def nexfort_mode_flags() -> Optional[Sequence["ModeFlag"]]:
    """Declare the mode flags a plugin brings (the names a mode string may use, next to core's).

    Return a sequence of :class:`nexfort.core.api.ModeFlag` (``None`` or empty: none). Each flag's ``values`` pick
    options (any namespace: core's, this plugin's from :func:`nexfort_config_schema`, another plugin's) and, for a
    preset, the flags it stands for; every flag that is not a preset gets the switch ``config.flags.<name with '-'
    -> '_'>``, which the plugin's hooks read. A name or switch that another flag (core's or a plugin's) already has,
    a malformed flag, or values that name an unknown option or a value of the wrong type are errors raised when a
    configuration is resolved, naming the plugin. Called once per process (and again after
    ``nexfort.core.api.clear_caches()``): the answer must not depend on a configuration.
    """


@hookspec
def nexfort_validate_config(config: "NexfortConfig") -> Optional[Sequence[str]]:
    """Check the values of this plugin's options (``config.options.<its namespace>``) beyond their types.

    Core has already checked every key and every value's type against the plugin's schema
    (:func:`nexfort_config_schema`; a lone string given for a ``List[str]`` field arrives as a one-element list).
    This hook checks what a type cannot say: ranges (a negative size, a NaN threshold), names that must come from
    a registry, combinations. Called once for each resolved configuration, before anything is compiled
    (``resolve_config``: ``nexfort_compile`` raises before it returns; ``torch.compile(backend="nexfort")`` on its
    first call, before any graph is compiled).

    Return ``None`` (or an empty sequence) when the options are valid; otherwise one message per problem, each
    naming the option, the bad value (quoted with :func:`nexfort.core.errors.shown`, at most ~200 characters) and
    what is valid, e.g. ``"Unknown attention kernel 'fa3'; did you mean 'fa4'? Valid attention kernels: fa4."``.
    Core raises one :class:`nexfort.core.errors.NexfortConfigError` with all of them. The answer must not depend on
    the hardware or on optional packages (a configuration is valid or not on every machine), must be quick, and
    should not raise: an exception propagates as it is.
    """


@hookspec
def nexfort_inductor_config(config: "NexfortConfig") -> Optional[Mapping[str, Any]]:
    """Contribute Inductor settings (keys of ``torch._inductor.config``) for this configuration.

    All results are merged in plugin-registration order; the user's explicit ``options.inductor.*`` and
    ``options.triton.*`` are applied last and win. Keys the running torch does not have are reported as
    errors, so feature-detect (``nexfort.core.compat``) before contributing a key that is not in every torch.
    """


@hookspec
def nexfort_compile_context(config: "NexfortConfig") -> Optional[ContextManager[Any]]:
    """Return a context manager that nexfort enters around Inductor's lowering of each graph, or ``None``.

    For settings that Inductor reads from somewhere other than ``torch._inductor.config`` (e.g. its virtualized
    heuristics handler): whatever the context changes must be undone when it exits, so that nothing outside
    nexfort's compiles sees it. Contexts are entered in the order pluggy calls the hooks and exited in reverse; one
    that raises fails the graph's compile like any compile error (nexfort falls back to eager).
    """


@hookspec
def nexfort_graph_passes(config: "NexfortConfig") -> Optional[Sequence["GraphPass"]]:
    """Contribute graph passes for this configuration.

    Return the passes that this configuration enables (an empty sequence or ``None`` for none). Each is a
    :class:`nexfort.core.graph_pass.GraphPass` whose ``stage`` says where it runs (``"pre_grad"``: on the
    torch-level FX graph Dynamo captured; ``"post_grad_early"``: on the ATen graph inside Inductor, before
    Inductor's own post-grad passes, where patterns of Inductor's pattern matcher match; ``"post_grad"``: on the
    ATen graph after them) and whose
    ``uuid()`` changes whenever its behaviour can change, so that Inductor's caches never return code compiled
    with another version of the pass. Passes of one stage run in ascending ``priority``.
    """


@hookspec
def nexfort_transform_module(module: "torch.nn.Module", config: "NexfortConfig") -> Optional[str]:
    """Transform a whole ``nn.Module`` in place before it is compiled (only through ``nexfort_compile`` and
    ``compile_pipe``, which see the module; ``torch.compile(backend="nexfort")`` only sees graphs).

    Keep parameters shared with the original where at all possible (in-place LoRA fusing must keep working).
    Return a one-line description of what was done, or ``None`` when nothing was.
    """


@hookspec
def nexfort_claims_feature(feature: str, config: "NexfortConfig") -> Optional[bool]:
    """Say whether this plugin implements the mode flag whose switch is ``feature`` (``"max_optimize"``).

    Asked for the flags that only plugin code implements (``ModeFlag.needs_plugin``, e.g. core's ``max-optimize``)
    when they are on: core raises a clear error when no installed plugin claims one, so no flag is ever accepted and
    then ignored. A plugin need not claim the flags it declares itself. Return ``True`` to claim it, ``None``
    otherwise.
    """


@hookspec(firstresult=True)
def nexfort_cache_store(config: "NexfortConfig") -> Optional[Any]:
    """Provide the store behind nexfort's compiled-artifact cache for this configuration.

    ``firstresult``: the first plugin that returns a store wins (the most recently registered plugin is
    asked first). Return ``None`` to let another plugin answer.
    """


@hookspec(firstresult=True)
def nexfort_recall_fact(name: str, config: "NexfortConfig") -> Optional[str]:
    """Return what :func:`nexfort_record_fact` recorded under ``name`` for this environment (torch build,
    devices), e.g. a feature probe's outcome, so that a new process need not probe again; ``None`` when
    unknown. ``firstresult``. The value is JSON text; core checks its shape and probes again if it is wrong.
    """


@hookspec
def nexfort_record_fact(name: str, value: str, config: "NexfortConfig") -> None:
    """Remember ``value`` (JSON text) under ``name`` for this environment. The return value is ignored;
    a plugin that cannot store it says so in a log, never raises."""


@hookspec
def nexfort_cache_dirs() -> Optional[Sequence[str]]:
    """Name directories that ``python -m nexfort.utils.clear_inductor_cache`` should clear.

    Return the paths of caches this plugin writes (they may not exist), or ``None``.
    """


@hookspec
def nexfort_pre_compile(gm: "torch.fx.GraphModule", example_inputs: Sequence[Any], config: "NexfortConfig",
                        pass_fingerprint: Sequence[str]) -> None:
    """Called for each graph before nexfort's passes and Inductor run (e.g. a cache loads its artifacts).

    ``pass_fingerprint`` identifies the graph passes this graph is compiled with (those of
    :func:`nexfort_graph_passes`, built once per graph by core): ``"<stage>:<name>:<uuid>"`` per pass, sorted; a
    plugin that keys on what the passes do (a cache) uses it instead of asking the pass plugins again. An
    implementation may leave out any argument it does not need. Must not modify ``gm``. Exceptions propagate (and
    fall back to eager like any compile failure), so a plugin that can recover (a corrupt cache entry) handles its
    own errors and warns.
    """


@hookspec
def nexfort_post_compile(gm: "torch.fx.GraphModule", example_inputs: Sequence[Any], config: "NexfortConfig",
                         compiled: Any) -> Optional[Callable[[], None]]:
    """Called for each graph after Inductor compiled it successfully (e.g. a cache saves its artifacts).

    ``compiled`` is what the backend returns to Dynamo. Return ``None``, or a function of no arguments that core
    calls once, after the graph's first call returned: Inductor's GPU kernels autotune on their first run
    (runtime autotuning, coordinate descent), so what that records exists only then (a cache saves it). An
    exception from that function is logged with one warning and never reaches the caller.
    """


@hookspec(firstresult=True)
def nexfort_quantization() -> Optional[QuantizationAPI]:
    """Provide module quantization (:class:`QuantizationAPI`) to the plugins that quantize whole pipelines
    (nexfort-diffusers' ``quantize_pipe``), so that they need not import the plugin that implements it.

    ``firstresult``: the first plugin that returns one wins. Return ``None`` to let another plugin answer; with no
    answer, the caller raises an ``ImportError`` saying what to install.
    """
