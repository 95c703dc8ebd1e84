"""The base class of nexfort graph passes: a name, a stage, a cache-safe uuid and a counter."""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
from typing import Any, Optional, Sequence, Tuple

import torch

from nexfort.core.counters import counters

STAGES = ("pre_grad", "post_grad_early", "post_grad")


class GraphPass(abc.ABC):
    """One graph transformation contributed by a plugin.

    Subclasses set :attr:`name` and :attr:`stage` and implement :meth:`apply`, which rewrites in place and
    returns how many rewrites it made (the counter ``nexfort.core.counters["pass"][name]`` adds them up).

    ``"pre_grad"`` passes get the ``torch.fx.GraphModule`` that Dynamo captured (torch-level ops) before it
    reaches Inductor, so Inductor's caches key on the rewritten graph. ``"post_grad"`` passes get the ATen
    ``torch.fx.Graph`` inside Inductor after Inductor's own post-grad passes (``post_grad_custom_post_pass``);
    ``"post_grad_early"`` passes get it before them (``post_grad_custom_pre_pass``: the decomposed graph as AOT
    autograd traced it, before Inductor unfuses ``addmm`` biases into pointwise kernels and the like; the stage for
    patterns of Inductor's pattern matcher, which are traced to that same graph). On torch 2.1 (neither hook)
    both post-grad stages run before Inductor's passes. Their :meth:`uuid` enters Inductor's cache key, so it
    hashes the source files of the pass, its options and the torch version: any change is a cache miss, never
    stale code.
    """

    name: str = ""
    stage: str = "pre_grad"
    priority: int = 100

    def __init__(self, options: Any = None) -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__} must set a non-empty 'name'")
        if self.stage not in STAGES:
            raise TypeError(f"{type(self).__name__}.stage is {self.stage!r}; valid stages: {', '.join(STAGES)}")
        self.options = options

    @abc.abstractmethod
    def apply(self, target: Any) -> int:
        """Rewrite ``target`` (a GraphModule for pre_grad, a Graph for the post-grad stages); return the rewrite
        count."""

    def source_files(self) -> Sequence[str]:
        """Files whose content defines the pass's behaviour (default: the modules of its class and of its bases
        below :class:`GraphPass`)."""
        files = []
        for cls in type(self).__mro__:
            if cls in GraphPass.__mro__:  # GraphPass, abc.ABC, object: not the pass's behaviour
                continue
            try:
                files.append(inspect.getfile(cls))
            except TypeError:  # built-in
                pass
        return sorted(set(files))

    def uuid(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(torch.__version__.encode())
        for path in self.source_files():
            with open(path, "rb") as f:
                h.update(f.read())
        h.update(_stable_repr(self.options).encode())
        return h.hexdigest()

    def __call__(self, target: Any) -> int:
        n = int(self.apply(target) or 0)
        counters["pass"][self.name] += n
        return n

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.stage})>"


def _stable_repr(options: Any) -> str:
    if options is None:
        return "null"
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(options, DictConfig):
            options = OmegaConf.to_container(options, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    try:
        import dataclasses

        if dataclasses.is_dataclass(options):
            options = dataclasses.asdict(options)
    except TypeError:  # pragma: no cover
        pass
    return json.dumps(options, sort_keys=True, default=repr)


def run_passes(passes: Sequence[GraphPass], target: Any) -> int:
    total = 0
    for p in sorted(passes, key=lambda p: p.priority):
        total += p(target)
    return total


def combined_uuid(passes: Sequence[GraphPass]) -> Optional[str]:
    if not passes:
        return None
    h = hashlib.sha256()
    for p in sorted(passes, key=lambda p: p.priority):
        h.update(p.uuid().encode())
    return h.hexdigest()


def fingerprint(passes: Sequence[GraphPass]) -> Tuple[str, ...]:
    """What identifies these passes' behaviour: ``"<stage>:<name>:<uuid>"`` per pass, sorted (handed to the
    plugins' ``nexfort_pre_compile`` as ``pass_fingerprint``, so that none builds the passes again)."""
    return tuple(sorted(f"{p.stage}:{p.name}:{p.uuid()}" for p in passes))
