"""Attention for short queries (decode steps) as two matmuls instead of SDPA.

On a CPU, ``scaled_dot_product_attention`` is slow for the shapes a decode step has: one
query per row against a KV cache of a few hundred slots. Its flash kernel tiles over query
blocks, and a block of one query leaves most of it idle. In bf16 it is worse still: at batch
32 (SmolLM2-135M, 9 query heads over 3 KV heads, 90 cached slots) one call took 2.2 ms,
42% of the whole decode step. Written as ``softmax(q kᵀ · scale + mask) v``, the same
attention takes 0.2 ms, and it never copies the KV heads. The query heads that share a KV
head are stacked as extra query rows.

``use_short_query_attention(model)`` switches a transformers model to this function under
the name ``"turnrl_sdpa"``. Queries longer than ``SHORT_QUERY`` tokens still go to
transformers' SDPA path (for prompt prefill and the learner's full sequences it is as fast
or faster), and so do calls with features this path lacks (dropout, soft-capping, attention
sinks, position bias). The masks are SDPA's. The softmax runs in fp32, as transformers'
eager attention does. A fully masked row (a left-padding slot's query) gets 0, as from SDPA.
"""
from __future__ import annotations

import torch

NAME = "turnrl_sdpa"
#: queries up to this many tokens use the matmul path
SHORT_QUERY = 32


def short_query_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query (B, H, q, D), key and value (B, KV, L, D),
    ``attention_mask`` SDPA's boolean (B, 1, q, L) or None; returns ((B, q, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    kv, length = key.shape[1], key.shape[2]
    special = dropout or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
    if q > SHORT_QUERY or special or (attention_mask is None and q > 1) or h % kv \
            or (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    g = h // kv  # query heads per KV head
    key, value, attention_mask = _whole_buffers(key, value, attention_mask)
    length = key.shape[2]
    scale = d ** -0.5 if scaling is None else scaling
    rows = query.reshape(b, kv, g * q, d)  # query heads sharing a KV head become extra rows
    if key.dtype == torch.float32:
        scores = torch.matmul(rows, key.transpose(-1, -2))  # (B, KV, g*q, L)
    else:  # bf16 matmul copies a transposed operand first: the keys (large) stay as they are
        scores = torch.matmul(key, rows.transpose(-1, -2)).transpose(-1, -2)  # (B, KV, g*q, L)
    scores = scores.to(torch.float32, memory_format=torch.contiguous_format).view(b, kv, g, q, length) * scale
    probs = torch.softmax(scores if attention_mask is None else
                          scores.masked_fill(~attention_mask[:, :, None], torch.finfo(torch.float32).min), dim=-1)
    if attention_mask is not None:
        probs = probs * attention_mask[:, :, None]  # a fully masked row reads nothing (0), as in SDPA
    probs = probs.to(value.dtype).view(b, kv, g * q, length)
    out = torch.matmul(probs, value)  # (B, KV, g*q, D)
    return out.view(b, h, q, d).transpose(1, 2).contiguous(), None


def _whole_buffers(key, value, mask):
    """A ``GrowingCache`` hands over views of its buffers (not contiguous: a matmul would
    copy them); read the whole zero-filled buffers instead, their empty slots masked out."""
    k, v = getattr(key, "whole", None), getattr(value, "whole", None)
    if k is None or v is None or mask is None or k.shape != v.shape or k.shape[:2] != key.shape[:2]:
        return key, value, mask
    return k, v, torch.nn.functional.pad(mask, (0, k.shape[2] - key.shape[2]), value=False)


def use_short_query_attention(model) -> None:
    """Make ``model`` (a transformers model on SDPA attention) use :func:`short_query_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return  # eager, flash or flex were chosen on purpose: leave them
    AttentionInterface.register(NAME, short_query_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
