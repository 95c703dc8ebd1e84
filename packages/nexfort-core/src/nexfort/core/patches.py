"""Every change nexfort makes to the internals of torch or of a library it compiles, in one registry.

A :class:`Patch` says what it changes (``target``), how nexfort tells that the running version needs it
(``detects``), which feature needs it and for how long it stays applied (``needed``), how it is undone (``undo``),
the versions it exists for and the upstream issue where there is one. ``docs/patches.md`` lists them all. Core and
plugins register their own (:func:`register`); nothing here names a plugin.

Two kinds:

- **Process-wide** patches (a torch function or namespace): the patch's ``apply()`` changes the process and
  returns the function that undoes it (``None``: the running version does not need it, nothing changed). A
  feature *holds* the patch while it needs it (:func:`hold`, :func:`applied`, :func:`hold_until_compiled`); the
  first holder applies it, the last one to let go (:func:`release`) undoes it. A holder that can be weakly
  referenced also lets go when it is garbage-collected.
- **Instance** patches (an attribute of one object: a module's ``forward``): :func:`set_attr` and
  :func:`on_restore` record what they change on the object; :func:`restore` puts it back (``uncompile_pipe`` does,
  for every module of the pipeline). An object that is garbage-collected takes its patches with it (and its
  ``when_collected`` callbacks run, for state kept outside the object).

:func:`leftovers` says what is applied now (the tests check it is nothing after each test); :func:`restore_all`
undoes everything.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Tuple

__all__ = ["Patch", "register", "registered", "get", "hold", "release", "applied", "hold_until_compiled",
           "compilation_holds",
           "is_applied", "set_attr", "on_restore", "restore", "patches_of", "leftovers", "restore_all"]

Undo = Callable[[], None]


@dataclass(frozen=True)
class Patch:
    """One patch of torch's or a library's internals (see the module docstring)."""

    name: str  #: unique, dotted: "torch.guard_namespace", "diffusers.PatchEmbed.forward"
    target: str  #: what is changed, e.g. "torch.fx.experimental.symbolic_shapes.SYMPY_INTERP"
    detects: str  #: how nexfort tells that the running version needs it
    needed: str  #: which feature needs it, and while what it stays applied
    undo: str  #: how it is undone
    versions: str  #: the versions it exists for (where it changes anything)
    upstream: str = ""  #: the upstream issue or fix, where there is one
    owner: str = "nexfort-core"  #: the distribution that registers it
    #: process-wide patches: apply it, return its undo (None: not needed by the running version)
    apply: Optional[Callable[[], Optional[Undo]]] = None

    @property
    def process_wide(self) -> bool:
        return self.apply is not None


_lock = threading.RLock()
_registry: Dict[str, Patch] = {}
#: process-wide patches applied now: name -> (undo, {holder key: description})
_applied: Dict[str, Tuple[Undo, Dict[Any, str]]] = {}
#: instance patches: id(obj) -> _Record
_objects: Dict[int, "_Record"] = {}


def register(patch: Patch) -> Patch:
    """Add ``patch`` to the registry (again: the same definition is a no-op, another one with its name an error)."""
    if not isinstance(patch, Patch):
        raise TypeError(f"nexfort.core.patches.register takes a Patch, got {type(patch).__name__}")
    with _lock:
        old = _registry.get(patch.name)
        if old is not None and old != patch:
            raise ValueError(f"a different patch named {patch.name!r} is registered already (by {old.owner})")
        _registry[patch.name] = patch
    return patch


def _load_core() -> None:
    """Core's own entries register when their module is imported; import it before looking anything up."""
    import nexfort.core.torch_patches  # noqa: F401


def registered() -> List[Patch]:
    """Every registered patch, by name (core's, and those of the plugins imported so far)."""
    _load_core()
    with _lock:
        return [_registry[n] for n in sorted(_registry)]


def get(name: str) -> Patch:
    _load_core()
    with _lock:
        patch = _registry.get(name)
        if patch is None:
            raise KeyError(f"no nexfort patch named {name!r}; registered: {', '.join(sorted(_registry)) or 'none'}")
        return patch


# ------------------------------------------------------------------------------------------ process-wide
def _holder_key(holder: Hashable) -> Tuple[Any, bool]:
    """A key for ``holder`` that does not keep it alive, and whether it can be weakly referenced (then a finalizer
    lets go of its holds when it is collected, before its id can be reused)."""
    try:
        weakref.ref(holder)
    except TypeError:
        return ("value", holder), False
    return ("id", id(holder)), True


def hold(name: str, holder: Hashable) -> bool:
    """``holder`` needs the process-wide patch ``name``: apply it if nobody held it. True when it is in effect;
    False when the running version does not need it (nothing changed, nothing held: the next hold asks again).
    Holding twice is holding once."""
    patch = get(name)
    if not patch.process_wide:
        raise ValueError(f"{name!r} is an instance patch: use set_attr/on_restore")
    key, weak = _holder_key(holder)
    with _lock:
        if name not in _applied:
            undo = patch.apply()
            if undo is None:
                return False
            _applied[name] = (undo, {})
        holders = _applied[name][1]
        if key not in holders:
            holders[key] = _describe(holder)
            if weak:
                weakref.finalize(holder, _release_key, key)
    return True


def _describe(holder: Any) -> str:
    text = holder if isinstance(holder, str) else repr(holder) if isinstance(holder, _CompilationHold) else \
        f"{type(holder).__name__} at {id(holder):#x}"
    return str(text)[:120]


def _release_key(key: Any) -> List[str]:
    undone = []
    with _lock:
        for name in list(_applied):
            undo, holders = _applied[name]
            if holders.pop(key, None) is not None and not holders:
                del _applied[name]
                undo()
                undone.append(name)
    return undone


def release(holder: Hashable) -> List[str]:
    """``holder`` no longer needs the patches it holds; undo those nobody else holds. Returns their names."""
    return _release_key(_holder_key(holder)[0])


@contextlib.contextmanager
def applied(*names: str) -> Iterator[None]:
    """The process-wide patches ``names`` held for the duration of the block."""
    token = object()
    try:
        for name in names:
            hold(name, ("block", id(token)))
        yield
    finally:
        release(("block", id(token)))


def is_applied(name: str) -> bool:
    with _lock:
        return name in _applied


_COMPILATION = "the Dynamo compilation running now"
_end_callback: List[Callable[..., None]] = []


def _in_dynamo_compilation() -> bool:
    try:
        from torch._guards import TracingContext
    except ImportError:  # pragma: no cover
        return False
    get_ctx = getattr(TracingContext, "try_get", None)
    try:
        return (get_ctx() if get_ctx is not None else TracingContext.get()) is not None
    except Exception:  # noqa: BLE001 - TracingContext.get() raises outside a compilation on some torch
        return False


class _CompilationHold:
    """Holds a patch for one Dynamo compilation on a torch without a compile-end callback (see
    :func:`compilation_holds`)."""

    def __repr__(self) -> str:
        return "a Dynamo compilation (until its graph's first call)"


_pending: List[_CompilationHold] = []  # taken by compilation_holds()


def hold_until_compiled(name: str) -> bool:
    """Hold ``name`` until the Dynamo compilation now running ends (Dynamo builds a frame's guards after the
    backend returned: a patch that guards need must outlive the backend's call). Outside a Dynamo compilation
    nothing is applied (False). Where torch has no compile-end callback (``torch._dynamo.callback_handler``,
    torch < 2.3), the backend takes the hold with :func:`compilation_holds` and lets go of it at the first call of
    the graph it returns (Dynamo has built the frame's guards by then), or when that graph is collected uncalled."""
    if not _in_dynamo_compilation():
        return False
    import torch

    handler = getattr(torch._dynamo, "callback_handler", None)
    if handler is None or not hasattr(handler, "register_end_callback"):
        token = _CompilationHold()
        needed = hold(name, token)
        if needed:
            with _lock:
                _pending.append(token)
        return needed
    needed = hold(name, _COMPILATION)
    if not needed:
        return needed
    with _lock:
        if _end_callback and any(cb is _end_callback[0] for cb in getattr(handler, "end_callbacks", ())):
            return needed  # armed already

        def compilation_ended(*_args: Any) -> None:
            # a new list rather than remove(): torch is iterating over the old one
            handler.end_callbacks = [cb for cb in handler.end_callbacks if cb is not compilation_ended]
            _end_callback.clear()
            release(_COMPILATION)

        _end_callback[:] = [compilation_ended]
        handler.register_end_callback(compilation_ended)
    return needed


def compilation_holds() -> Optional[Callable[[], None]]:
    """The holds :func:`hold_until_compiled` took in the compilation now running, where torch has no compile-end
    callback, as one function that lets go of them (idempotent); None where there are none (every torch with the
    callback). The backend calls it before returning a graph and calls the function at that graph's first call,
    after Dynamo built the frame's guards; the function keeps the holds alive, so a graph collected uncalled lets
    go of them too."""
    with _lock:
        tokens = _pending[:]
        _pending.clear()
    if not tokens:
        return None

    def let_go() -> None:
        while tokens:
            release(tokens.pop())

    return let_go


# ------------------------------------------------------------------------------------------ instance patches
class _Record:
    """What nexfort changed on one object: ``(patch name, undo)`` in order, and callbacks for its collection."""

    def __init__(self, obj: Any) -> None:
        self.type_name = type(obj).__name__
        self.changes: List[Tuple[str, Undo]] = []
        self.attrs: set = set()  # (patch, attribute) set through set_attr
        self.when_collected: List[Undo] = []
        self.finalizer = weakref.finalize(obj, _object_collected, id(obj))


def _object_collected(oid: int) -> None:
    with _lock:
        record = _objects.pop(oid, None)
    for cb in record.when_collected if record is not None else ():
        cb()


def _record_for(obj: Any) -> _Record:
    try:
        weakref.ref(obj)
    except TypeError:
        raise TypeError(f"nexfort.core.patches: instance patches are recorded on objects that can be weakly "
                        f"referenced (modules, pipelines); {type(obj).__name__} cannot") from None
    with _lock:
        record = _objects.get(id(obj))
        if record is None:
            record = _objects[id(obj)] = _Record(obj)
        return record


_MISSING = object()


def set_attr(obj: Any, attr: str, value: Any, patch: str) -> None:
    """``obj.attr = value`` as part of the instance patch ``patch``; :func:`restore` puts back what ``obj`` had
    (deletes the attribute where ``obj`` had none of its own: its class's applies again). Setting an attribute
    this patch set already keeps the first original."""
    if get(patch).process_wide:
        raise ValueError(f"{patch!r} is a process-wide patch: use hold/applied")
    record = _record_for(obj)
    old = getattr(obj, "__dict__", {}).get(attr, _MISSING)
    objref = weakref.ref(obj)

    def undo() -> None:
        o = objref()
        if o is None:
            return
        if old is _MISSING:
            o.__dict__.pop(attr, None)
        else:
            setattr(o, attr, old)

    with _lock:
        if (patch, attr) not in record.attrs:
            record.attrs.add((patch, attr))
            record.changes.append((patch, undo))
    setattr(obj, attr, value)


def on_restore(obj: Any, patch: str, undo: Undo, when_collected: Optional[Undo] = None) -> None:
    """Record ``undo`` (of the instance patch ``patch``) to run when ``obj`` is restored; ``when_collected`` runs
    instead if ``obj`` is garbage-collected first (for state the patch keeps outside ``obj``)."""
    get(patch)
    record = _record_for(obj)
    with _lock:
        record.changes.append((patch, undo))
        if when_collected is not None:
            record.when_collected.append(when_collected)


def restore(obj: Any, recurse: bool = True) -> List[str]:
    """Undo every instance patch on ``obj`` (and, for a module with ``recurse``, on its submodules), newest first.
    Returns the names of the patches undone (one per object)."""
    objs = list(obj.modules()) if recurse and hasattr(obj, "modules") and callable(obj.modules) else [obj]
    undone: List[str] = []
    for o in objs:
        with _lock:
            record = _objects.pop(id(o), None)
        if record is None:
            continue
        record.finalizer.detach()
        for _name, undo in reversed(record.changes):
            undo()
        for name, _ in record.changes:
            if name not in undone:
                undone.append(name)
    return undone


def patches_of(obj: Any) -> List[str]:
    """The instance patches applied to ``obj`` itself."""
    with _lock:
        record = _objects.get(id(obj))
        return [] if record is None else list(dict.fromkeys(n for n, _ in record.changes))


# ------------------------------------------------------------------------------------------ all of them
def leftovers() -> List[str]:
    """What is applied now, one line per patch: process-wide ones with their holders, instance ones with the
    objects (still alive) that carry them. Empty: torch and every library are as nexfort found them."""
    out = []
    with _lock:
        for name, (_, holders) in sorted(_applied.items()):
            out.append(f"{name} (held by {', '.join(sorted(holders.values()))})")
        per_patch: Dict[str, List[str]] = {}
        for record in _objects.values():
            for name in dict.fromkeys(n for n, _ in record.changes):
                per_patch.setdefault(name, []).append(record.type_name)
        for name, types in sorted(per_patch.items()):
            out.append(f"{name} (on {len(types)} live object(s): {', '.join(sorted(set(types)))})")
    return out


def restore_all() -> List[str]:
    """Undo every patch: release every holder of the process-wide ones, restore every object. Returns the names."""
    undone = []
    with _lock:
        applied_now = list(_applied.items())
        _applied.clear()
        objs = list(_objects.items())
    for name, (undo, _) in applied_now:
        undo()
        undone.append(name)
    for oid, record in objs:
        with _lock:
            if _objects.pop(oid, None) is None:
                continue
        record.finalizer.detach()
        for name, undo in reversed(record.changes):
            undo()
            if name not in undone:
                undone.append(name)
    return undone
