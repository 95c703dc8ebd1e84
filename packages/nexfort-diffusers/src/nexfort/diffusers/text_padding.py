"""Cross-attention over the valid text tokens only: the same result, without the padded keys.

PixArt pads its T5 prompt to 120 tokens and masks the padding (``encoder_attention_mask``, 1 = keep, 0 = drop); a
realistic prompt has 10-40 valid tokens, so most of the cross-attention (and of the text's key/value projections)
works on keys that the mask then removes. ``encoder_attention_mask`` becomes the additive bias
``(1 - mask) * -10000`` in PixArt's forward: a masked key's softmax weight is ``exp(-10000 + ...)``, exactly 0 in
float32 (the softmax's precision in every SDPA kernel), as long as the row has at least one valid key. The text
tokens are otherwise processed one by one (the caption projection is per token). So when every row of the batch has
a valid token, dropping the tokens after the last valid one (over the whole batch) gives the same output; when all
the tokens that remain are valid, the mask itself is dropped too (a bias of 0 everywhere), which lets the attention
run without a mask (and so through the ``attention_kernel`` pass's faster kernels).

The length kept is rounded up to :data:`MULTIPLE` tokens (fewer distinct shapes: fewer recompilations); the
tokens kept past the last valid one stay masked. The host reads the mask once per mask tensor: a pipeline hands the
denoiser the same mask object at every step (the choice is cached against that object and its version counter,
through a weak reference, so a new mask, or one changed in place, is read again; an inference-mode tensor has no
version counter, so it is compared with a copy of the mask seen).

Models it applies to (:data:`MODELS`): those whose ``encoder_attention_mask`` only masks cross-attention keys and
whose text tokens are processed independently. Anything else is left alone, as is a mask that is not a 2-D 0/1
mask of the text's shape, or a batch with a row of no valid token (its softmax over all-masked keys is not that
of fewer keys). Off with ``options={"diffusers.trim_text_padding": False}``.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from nexfort.diffusers._classes import is_class as _is_class

logger = logging.getLogger("nexfort")

#: denoiser classes (by name) whose text padding may be trimmed, see the module's docstring
MODELS = ("PixArtTransformer2DModel",)
#: the kept text length is a multiple of this many tokens (or the whole text)
MULTIPLE = 8


def trims_text_padding(module: Any) -> bool:
    return any(_is_class(module, name) for name in MODELS)


def _plan(mask: torch.Tensor, multiple: int) -> Optional[Tuple[int, bool]]:
    """``(tokens to keep, whether they are all valid)`` for a 2-D 0/1 keep-mask, or None to leave it alone."""
    m = mask.detach()
    if m.dtype == torch.bool:
        valid = m
    else:
        if not bool(((m == 0) | (m == 1)).all()):
            return None  # a soft mask: a bias of its own, not padding
        valid = m != 0
    valid = valid.cpu()
    if not bool(valid.any(dim=1).all()):
        return None  # a row without a valid token attends to its padding: trimming would change it
    seq = valid.shape[1]
    last = int(valid.any(dim=0).nonzero().max()) + 1
    keep = min(seq, -(-last // multiple) * multiple)
    return keep, bool(valid[:, :keep].all())


class TextPaddingTrimmer:
    """``kwargs -> kwargs`` for a denoiser's call: the text and its mask cut to the valid tokens (see module)."""

    def __init__(self, multiple: int = MULTIPLE) -> None:
        self.multiple = multiple
        self._last: Optional[Tuple[Any, int, Optional[Tuple[int, bool]]]] = None  # (weakref, version, plan)
        self.trimmed = 0  # calls whose text was cut (for tests and logs)

    def plan(self, mask: torch.Tensor) -> Optional[Tuple[int, bool]]:
        last = self._last
        if last is not None and last[0]() is mask and self._unchanged(mask, last[1]):
            return last[2]
        plan = _plan(mask, self.multiple)
        try:
            # an inference tensor has no version counter: keep a copy of it to compare with (one small check)
            self._last = (weakref.ref(mask), mask.clone() if mask.is_inference() else mask._version, plan)
        except TypeError:  # pragma: no cover - a tensor type without weak references: read it every call
            self._last = None
        if plan is not None and plan[0] < mask.shape[1]:
            logger.debug("nexfort: text padding: %d of %d tokens kept%s", plan[0], mask.shape[1],
                         ", mask dropped" if plan[1] else "")
        return plan

    @staticmethod
    def _unchanged(mask: torch.Tensor, seen: Any) -> bool:
        if torch.is_tensor(seen):
            return bool(torch.equal(mask, seen))
        return not mask.is_inference() and mask._version == seen

    def __call__(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        mask, text = kwargs.get("encoder_attention_mask"), kwargs.get("encoder_hidden_states")
        if not (torch.is_tensor(mask) and torch.is_tensor(text)) or mask.dim() != 2 or text.dim() != 3:
            return kwargs
        if tuple(mask.shape) != tuple(text.shape[:2]) or mask.is_floating_point() and mask.requires_grad:
            return kwargs
        plan = self.plan(mask)
        if plan is None:
            return kwargs
        keep, all_valid = plan
        if keep == mask.shape[1] and not all_valid:
            return kwargs
        out = dict(kwargs)
        out["encoder_hidden_states"] = text[:, :keep].contiguous()
        out["encoder_attention_mask"] = None if all_valid else mask[:, :keep].contiguous()
        self.trimmed += 1
        return out


def text_padding_trimmer(module: Any, config: Any) -> Optional[Callable[[Dict[str, Any]], Dict[str, Any]]]:
    """The trimmer for ``module`` under ``config`` (max-optimize on and ``diffusers.trim_text_padding``), or None."""
    if not trims_text_padding(module) or not bool(getattr(config.flags, "max_optimize", False)):
        return None
    try:
        on = bool(config.options.diffusers.trim_text_padding)
    except Exception:  # noqa: BLE001 - the diffusers plugin's namespace is absent (plugin blocked)
        return None
    return TextPaddingTrimmer() if on else None
