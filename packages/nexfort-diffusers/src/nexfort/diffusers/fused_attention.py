"""Attention processors that read fused QKV projections and compute exactly what diffusers' unfused ones do.

diffusers' own fused processors do not always: ``FusedJointAttnProcessor2_0`` (SD3) skips the q/k norms
(``qk_norm="rms_norm"``: 1.1e-2 rel L2 off eager) and fails on a joint-attention layer called without a context
(SD3's dual-attention ``attn2``: ``'NoneType' object has no attribute 'ndim'``). The processors here are
``AttnProcessor2_0`` and ``JointAttnProcessor2_0`` (diffusers 0.42) line for line, except that the projections are
read from the fused layer (``to_qkv``, ``to_kv``, ``to_added_qkv``) where there is one, split at the widths of the
unfused layers (which stay, as views of the fused rows: :mod:`nexfort.diffusers.fused`), and from the unfused
layers where there is none (a self-attention layer called with a context, a cross-attention layer without one).
The attention itself is one method of each processor (``attention``), which the sequence-parallel processors of
:mod:`nexfort.diffusers.parallel_attention` override.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def _project(attn: Any, fused_name: str, names: Sequence[str], x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The outputs of the layers ``names`` of ``attn`` on ``x``: one matmul through the fused layer (its output
    split at the layers' widths) when ``attn`` has it, else the layers one by one."""
    fused = getattr(attn, fused_name, None)
    if fused is None:
        return tuple(getattr(attn, n)(x) for n in names)
    return tuple(fused(x).split([getattr(attn, n).out_features for n in names], dim=-1))


def _heads(attn: Any, batch_size: int, head_dim: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           norm_q: str = "norm_q", norm_k: str = "norm_k") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(batch, tokens, heads * head_dim)`` projections as ``(batch, heads, tokens, head_dim)``, with ``attn``'s
    q/k norms (the attributes ``norm_q``/``norm_k`` name) applied where it has them, as diffusers' processors do.
    No generator expression: torch 2.1's Dynamo breaks the graph on one."""
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if getattr(attn, norm_q, None) is not None:
        query = getattr(attn, norm_q)(query)
    if getattr(attn, norm_k, None) is not None:
        key = getattr(attn, norm_k)(key)
    return query, key, value


class FusedAttnProcessor:
    """``AttnProcessor2_0`` reading ``to_qkv`` (self-attention) or ``to_kv`` (cross-attention)."""

    _nexfort_copy = "FusedAttnProcessor"  # what it computes, for nexfort.diffusers.fused (kept by subclasses)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        cross = encoder_hidden_states is not None
        if encoder_hidden_states is None and getattr(attn, "to_qkv", None) is not None:
            query, key, value = _project(attn, "to_qkv", ("to_q", "to_k", "to_v"), hidden_states)
        else:
            query = attn.to_q(hidden_states)
            if encoder_hidden_states is None:
                encoder_hidden_states = hidden_states
            elif attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key, value = _project(attn, "to_kv", ("to_k", "to_v"), encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query, key, value = _heads(attn, batch_size, head_dim, query, key, value)

        hidden_states = self.attention(query, key, value, attention_mask, cross)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], cross: bool) -> torch.Tensor:
        """``(batch, heads, tokens, head_dim)`` in and out; ``cross``: keys from the context (cross-attention).
        Overridden by the sequence-parallel processor (:mod:`nexfort.diffusers.parallel_attention`)."""
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                              is_causal=False)


class FusedJointAttnProcessor:
    """``JointAttnProcessor2_0`` (SD3's joint attention, and its dual-attention layers called without a context)
    reading ``to_qkv`` and ``to_added_qkv``; the q/k norms (``norm_q``, ``norm_k``, ``norm_added_q``,
    ``norm_added_k``) apply as in the unfused processor."""

    _nexfort_copy = "FusedJointAttnProcessor"

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, *args: Any, **kwargs: Any) -> Any:
        batch_size = hidden_states.shape[0]

        query, key, value = _project(attn, "to_qkv", ("to_q", "to_k", "to_v"), hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query, key, value = _heads(attn, batch_size, head_dim, query, key, value)

        context = None
        if encoder_hidden_states is not None:
            e_query, e_key, e_value = _project(attn, "to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj"),
                                               encoder_hidden_states)
            context = _heads(attn, batch_size, head_dim, e_query, e_key, e_value, "norm_added_q", "norm_added_k")

        hidden_states, encoder_hidden_states = self.attention(query, key, value, context)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states.transpose(1, 2).reshape(batch_size, -1,
                                                                                  attn.heads * head_dim)
            encoder_hidden_states = encoder_hidden_states.to(query.dtype)
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states

    def attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  context: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Joint attention over the image tokens and the ``context``'s (query, key, value), all ``(batch, heads,
        tokens, head_dim)``: the image's and the context's outputs (None without a context). Overridden by the
        sequence-parallel processor (:mod:`nexfort.diffusers.parallel_attention`)."""
        tokens = query.shape[2]
        if context is not None:
            query = torch.cat([query, context[0]], dim=2)
            key = torch.cat([key, context[1]], dim=2)
            value = torch.cat([value, context[2]], dim=2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        if context is None:
            return out, None
        return out[:, :, :tokens], out[:, :, tokens:]
