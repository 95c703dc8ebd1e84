"""Regional compilation: compile a denoiser's repeated blocks, not the whole model (``options.diffusers.regional``).

A diffusion transformer is 24-57 copies of one block. Compiled whole, Dynamo traces every copy and Inductor
lowers, fuses and generates code for every copy. Compiled block by block (``nn.Module.compile`` on each), the
copies share one code object: Dynamo traces the first block once and the others reuse its graph (their
parameters are inputs of it), so the cold compile is about one block's work. The blocks keep their parameters
(LoRA fusing and ``load_state_dict`` reach them); the few layers around them (patch and timestep embeddings, the
final norm and projection) run eagerly. The price: no fusion across a block boundary and a guard check per block.

Which blocks: the model's own ``_repeated_blocks`` (class names; diffusers declares them for some models) where it
has them, else every ``nn.ModuleList`` whose two or more members are all of one class (outermost first: a list
inside a chosen block is part of that block).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, List, Tuple

import torch


def blocks_share_graphs() -> bool:
    """Whether Dynamo lets instances of one block class share a compiled graph (``inline_inbuilt_nn_modules``,
    on by default since torch 2.5); before, it guards on each instance and compiles every block again."""
    try:
        import torch._dynamo.config as dynamo_config
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(dynamo_config, "inline_inbuilt_nn_modules", False))


def repeated_blocks(module: torch.nn.Module) -> List[Tuple[str, torch.nn.Module]]:
    """``(qualified name, block)`` of each repeated block of ``module`` (see the module docstring)."""
    declared = getattr(type(module), "_repeated_blocks", None) or ()
    declared = {declared} if isinstance(declared, str) else set(declared)
    found: List[Tuple[str, torch.nn.Module]] = []

    def walk(prefix: str, parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            full = f"{prefix}{name}"
            if declared:
                if type(child).__name__ in declared:
                    found.append((full, child))
                    continue
            elif isinstance(child, torch.nn.ModuleList) and len(child) >= 2 and len({type(c) for c in child}) == 1:
                found.extend((f"{full}.{i}", c) for i, c in enumerate(child))
                continue
            walk(f"{full}.", child)

    walk("", module)
    return found


def compile_regions(module: torch.nn.Module, compile_block: Callable[[torch.nn.Module], Any]) -> int:
    """Compile each repeated block of ``module`` in place with ``compile_block``, and make ``module``'s own call
    look compiled (``_compiled_call_impl``: its eager call, which runs the compiled blocks) so that call wrappers
    (:func:`nexfort.diffusers.dynamic.wrap_compiled_call`) apply to it as to a whole-model compile. Returns the
    number of blocks (0: none found, nothing done)."""
    blocks = repeated_blocks(module)
    if blocks and not blocks_share_graphs():
        warnings.warn(f"nexfort: regional compilation on torch {torch.__version__}: Dynamo does not share a compiled "
                      "graph between blocks here (torch._dynamo.config.inline_inbuilt_nn_modules is off), so every "
                      "block compiles on its own; compile the whole model instead (torch 2.5+ shares them).",
                      stacklevel=4)
    for _, block in blocks:
        compile_block(block)
    if blocks:
        module._compiled_call_impl = functools.partial(type(module)._call_impl, module)
    return len(blocks)


def uncompile_regions(module: torch.nn.Module) -> int:
    """Undo in-place compilation of ``module`` and every submodule (``nn.Module.compile``). Returns how many."""
    n = 0
    for m in module.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
            n += 1
    return n
