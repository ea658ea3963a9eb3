"""Attention for a decode step without padding as two matmuls instead of SDPA.

When no row of a batch is padded, transformers passes its SDPA function no mask, and for
a model with grouped KV heads that function then calls ``scaled_dot_product_attention``
with ``enable_gqa``. On a CPU in bf16 that call is slow at decode shapes: at batch 32
(SmolLM2-135M, 9 query heads over 3 KV heads, 90 cached slots) 1.33 ms per layer against
0.25 ms for ``softmax(q kᵀ · scale) v`` written as two matmuls, with the query heads that
share a KV head stacked as extra query rows (``bench/cpu_costs.py``). With a mask (padded
rows) transformers packs the heads itself and SDPA is as fast, so that case, longer
queries, and calls with features this path lacks (dropout, soft-capping, attention sinks,
position bias) go to transformers' SDPA function unchanged.

``use_short_query_attention(model)`` switches a transformers model to this function under
the name ``"turnrl_sdpa"``; its masks are SDPA's. The softmax runs in fp32, as
transformers' eager attention does.
"""
from __future__ import annotations

import torch

NAME = "turnrl_sdpa"


def short_query_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query (B, H, q, D), key and value (B, KV, L, D),
    ``attention_mask`` SDPA's boolean (B, 1, q, L) or None; returns ((B, q, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    kv = key.shape[1]
    special = dropout or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
    if q != 1 or attention_mask is not None or special or h % kv:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    g = h // kv  # query heads per KV head
    scale = d ** -0.5 if scaling is None else scaling
    rows = query.reshape(b, kv, g, d)  # the query heads sharing a KV head become rows
    scores = torch.matmul(rows, key.transpose(-1, -2)).float() * scale  # (B, KV, g, L)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, KV, g, D)
    return out.view(b, h, 1, d).transpose(1, 2).contiguous(), None


def use_short_query_attention(model) -> None:
    """Make ``model`` (a transformers model on SDPA attention) use :func:`short_query_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return  # eager, flash or flex were chosen on purpose: leave them
    AttentionInterface.register(NAME, short_query_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
