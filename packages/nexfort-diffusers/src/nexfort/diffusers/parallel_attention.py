"""Sequence parallelism for the diffusers transformers whose attention diffusers' context parallelism does not
reach: PixArt-α/Σ (``AttnProcessor2_0``) and SD3 (``JointAttnProcessor2_0``).

diffusers 0.42's context parallelism (``ContextParallelConfig``, ``ModelMixin.enable_parallelism``) shards the
sequence with hooks (a ``_cp_plan``) and runs Ulysses/ring attention inside processors that call
``dispatch_attention_fn(..., parallel_config=...)``. PixArt's and SD3's processors do not, and the models carry no
plan. What this module adds, the rest being diffusers':

- :data:`PLANS`: the image tokens are split at the first block's input and gathered at ``proj_out`` (the
  unpatchify after it reads the height and width of the unsplit input); the text is not split.
- :class:`ParallelAttnProcessor` (PixArt): nexfort's copy of ``AttnProcessor2_0`` (:mod:`.fused_attention`, which
  reads fused QKV projections where there are any) whose self-attention goes through diffusers' context-parallel
  attention (Ulysses all-to-all, ring, or both: ``dispatch_attention_fn``). The cross-attention needs no
  communication: every rank's image queries attend to the whole text, which every rank holds.
- :class:`ParallelJointAttnProcessor` (SD3): joint attention over the image tokens (split) and the text tokens
  (whole on every rank, so that any text length works, SD3's 333 tokens too): Ulysses all-to-all of the image
  heads, the text's heads of this rank sliced locally, one SDPA over both, the image back by all-to-all and the text
  output all-gathered over the heads. Exact. Ring attention is not offered here (the text keys would be counted
  once per ring rank).
- Ring attention on the CPU: diffusers' ring attention needs the log-sum-exp of each chunk, and its only CPU
  backend (``native``) raises ``Native attention does not support return_lse=True``; the PixArt processor gives it
  ATen's CPU flash-attention kernel, which returns it (:func:`_cpu_lse_attention`).

All collectives are functional collectives (``torch.distributed._functional_collectives``): traced into the compiled
graph without a graph break.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from nexfort.diffusers.fused_attention import FusedAttnProcessor, FusedJointAttnProcessor

#: processors replaced, by the denoiser class they belong to: (diffusers' and nexfort's fused copy) -> nexfort's
REPLACED = {
    "PixArtTransformer2DModel": (("AttnProcessor2_0", "FusedAttnProcessor"), "ParallelAttnProcessor"),
    "SD3Transformer2DModel": (("JointAttnProcessor2_0", "FusedJointAttnProcessor"), "ParallelJointAttnProcessor"),
}


def plans() -> Dict[str, Dict[str, Any]]:
    """diffusers' ``cp_plan`` for each model of :data:`REPLACED` (image tokens split at the first block, gathered
    at ``proj_out``)."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    plan = {"transformer_blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3)},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3)}
    return {name: plan for name in REPLACED}


def _wait(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed._functional_collectives as funcol

    return x.wait() if isinstance(x, funcol.AsyncCollectiveTensor) else x


def _all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Equal chunks of dim 0: chunk ``j`` to rank ``j`` of ``group``; chunk ``i`` of the result from rank ``i``.
    Flattened first, as diffusers' own all-to-all (Inductor's codegen wants a contiguous 1-D buffer)."""
    import torch.distributed._functional_collectives as funcol

    shape = x.shape
    return _wait(funcol.all_to_all_single(x.contiguous().flatten(), None, None, group)).reshape(shape)


def _seq_to_heads(x: torch.Tensor, degree: int, group: Any) -> torch.Tensor:
    """``(batch, heads, local tokens, dim)`` -> ``(batch, heads / degree, all tokens, dim)`` (Ulysses)."""
    b, h, s, d = x.shape
    x = _all_to_all(x.reshape(b, degree, h // degree, s, d).transpose(0, 1), group)
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // degree, degree * s, d)


def _heads_to_seq(x: torch.Tensor, degree: int, group: Any) -> torch.Tensor:
    """The inverse of :func:`_seq_to_heads`."""
    b, h, n, d = x.shape
    x = _all_to_all(x.reshape(b, h, degree, n // degree, d).permute(2, 0, 1, 3, 4), group)
    return x.transpose(0, 1).reshape(b, degree * h, n // degree, d)


def _cpu_lse_forward_op(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0, is_causal: bool = False,
                        scale: Optional[float] = None, enable_gqa: bool = False, return_lse: bool = False,
                        _save_ctx: bool = True, _parallel_config: Any = None) -> Any:
    """diffusers' attention ``forward_op`` (``(batch, tokens, heads, dim)`` in and out, the log-sum-exp as
    ``(batch, tokens, heads)``) with ATen's CPU flash-attention kernel (inference only)."""
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
    out = out.transpose(1, 2)
    return (out, lse.transpose(1, 2)) if return_lse else out


def _no_backward_op(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("nexfort's CPU ring attention is for inference only (no backward)")


def _cpu_lse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, parallel_config: Any) -> torch.Tensor:
    """diffusers' context-parallel attention (its ring/Ulysses templates) with :func:`_cpu_lse_forward_op`."""
    try:
        from diffusers.models.attention_dispatch import _templated_context_parallel_attention
    except ImportError as e:  # pragma: no cover - another diffusers
        raise ImportError(f"nexfort's CPU ring attention uses diffusers 0.42's "
                          f"_templated_context_parallel_attention, which this diffusers lacks ({e}); "
                          f"pip install 'diffusers>=0.42,<0.43'") from None
    return _templated_context_parallel_attention(q, k, v, None, 0.0, False, None, False, False,
                                                 forward_op=_cpu_lse_forward_op, backward_op=_no_backward_op,
                                                 _parallel_config=parallel_config)


class ParallelAttnProcessor(FusedAttnProcessor):
    """PixArt's attention (``AttnProcessor2_0``, fused projections read where there are any) with the
    self-attention through diffusers' context-parallel attention once ``enable_parallelism`` has set
    ``_parallel_config``; the cross-attention stays local (every rank holds the whole text)."""

    _attention_backend = None
    _parallel_config = None

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], cross: bool) -> torch.Tensor:
        pc = self._parallel_config
        if cross or pc is None:
            return super().attention(query, key, value, attention_mask, cross)
        if attention_mask is not None:
            raise ValueError("nexfort sequence parallelism: a self-attention mask is not supported (the image "
                             "tokens are split over the ranks); PixArt's pipelines pass none")
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # diffusers' (B, S, H, D)
        if q.device.type == "cpu" and pc.context_parallel_config.ring_degree > 1:
            out = _cpu_lse_attention(q, k, v, pc)
        else:
            from diffusers.models.attention_dispatch import dispatch_attention_fn

            out = dispatch_attention_fn(q, k, v, backend=self._attention_backend, parallel_config=pc)
        return out.transpose(1, 2)


class ParallelJointAttnProcessor(FusedJointAttnProcessor):
    """SD3's joint attention (``JointAttnProcessor2_0``, fused projections read where there are any) with the image
    tokens split over the Ulysses ranks and the text whole on every rank (see the module's docstring)."""

    _attention_backend = None
    _parallel_config = None

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  context: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        pc = self._parallel_config
        if pc is None:
            return super().attention(query, key, value, context)
        import torch.distributed._functional_collectives as funcol

        cp = pc.context_parallel_config
        degree, group, rank = cp.ulysses_degree, cp._ulysses_mesh.get_group(), cp._ulysses_local_rank
        q, k, v = (_seq_to_heads(x, degree, group) for x in (query, key, value))
        tokens = q.shape[2]
        if context is not None:
            heads = query.shape[1] // degree
            eq, ek, ev = (x[:, rank * heads:(rank + 1) * heads] for x in context)
            q, k, v = torch.cat([q, eq], dim=2), torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        image = _heads_to_seq(out[:, :, :tokens], degree, group)
        if context is None:
            return image, None
        text = _wait(funcol.all_gather_tensor(out[:, :, tokens:].contiguous(), gather_dim=1, group=group))
        return image, text


def install_processors(model: torch.nn.Module) -> int:
    """Replace the attention processors of a model of :data:`REPLACED` by nexfort's sequence-parallel ones
    (before ``enable_parallelism``, which sets their ``_parallel_config``). Every attention module is checked
    first: one whose processor is not one nexfort's processor computes exactly (another processor, a module option
    it does not read) raises ``ValueError`` naming it, and nothing is changed. Returns the modules changed."""
    from nexfort.diffusers import parallel_attention
    from nexfort.diffusers.fused import copy_of

    known, new_name = REPLACED[type(model).__name__]
    todo = []
    for name, m in model.named_modules():
        proc = getattr(m, "processor", None)
        if proc is None or not callable(getattr(m, "set_processor", None)):
            continue
        if type(proc).__name__ == new_name:
            continue
        copy, why = copy_of(m) if type(proc).__name__ in known else (None, "")
        if copy is None:
            raise ValueError(
                f"nexfort sequence parallelism: {type(model).__name__}.{name} uses {type(proc).__name__}"
                f"{f' ({why})' if why else ''}; it supports {' and '.join(known)} here. Restore diffusers' "
                f"default processors (model.set_default_attn_processor() is not it: that installs AttnProcessor; "
                f"reload the model) before parallelize_pipe.")
        todo.append(m)
    shared = getattr(parallel_attention, new_name)()
    for m in todo:
        m.set_processor(shared)
    return len(todo)
