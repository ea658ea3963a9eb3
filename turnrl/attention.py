"""Attention for short queries (decode steps, short suffixes) as two matmuls instead of SDPA.

``softmax(q kᵀ · scale + mask) v`` written as two matmuls, the query heads that share a KV
head stacked as extra query rows, never copies the KV heads; the softmax runs in fp32, as
transformers' eager attention does. Where it runs, measured on 2 CPU cores with
SmolLM2-135M (9 query heads over 3 KV heads):

- a decode step with no padded row, any dtype: transformers then passes no mask, and its
  SDPA function calls ``scaled_dot_product_attention`` with ``enable_gqa``, which is slow
  on a CPU in bf16 (batch 32, 90 cached slots: 1.40 ms per layer against 0.34;
  ``bench/cpu_costs.py``);
- queries of up to ``SHORT_QUERY`` tokens with a mask (padded rows, the suffix a new turn
  adds). Per call SDPA looks as fast there, but over whole rollouts (32 five-turn greedy
  episodes, ``bench/engines.py``'s workload) this path was faster with transformers 5.19
  (vLLM's venv, hand runs): 225–237 against 136–149 action tokens/s in bf16, 111–132
  against 70–107 in fp32. With transformers 5.24 ``bench/rollout_throughput.py`` keeps
  the A/B (``engine_stock_sdpa``), and it is within that script's noise: one run gave
  137.9 against 117.8 in fp32 and 195.9 against 190.4 in bf16, the next 121.7 against
  131.1 and 206.3 against 215.3.

The learner in bf16 on a CPU (calls inside ``learner_attention()``, which
``group_logprobs`` enters) takes this path too, for queries of any length while the score
matrix stays small (``LEARNER_SCORES`` entries, about 10 MB in fp32): there the CPU's
flash-attention backward is slow. One group of ``bench/cpu_costs.py`` (8 episodes of 65
tokens over a 55-token prompt) spent 0.36 s of its 2.27 s step in that backward, 2.7× its
fp32 time. Per layer, forward and backward, SDPA against this path (hand runs): 12.1
against 4.0 ms at 8 × 65 queries over 120 keys, 16.6 against 8.3 at 8 × 120 × 120, 29
against 21 at 8 × 150 × 205; past about 8 × 200 × 255 SDPA is faster. In fp32 SDPA is as
fast or faster, so it keeps it.

Longer queries in inference (prefill) and calls with features this path lacks (dropout,
soft-capping, attention sinks, position bias) go to transformers' SDPA function
unchanged. ``use_short_query_attention(model)`` switches a transformers model to
this function under the name ``"turnrl_sdpa"``; its masks are SDPA's. A fully masked row
(a left-padding slot's query) gets 0, as from SDPA.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

NAME = "turnrl_sdpa"
#: queries up to this many tokens use the matmul path
SHORT_QUERY = 32
#: the learner in bf16 on a CPU uses it while batch × heads × queries × keys stays at most this
LEARNER_SCORES = 2_500_000


_LEARNER = contextvars.ContextVar("turnrl_learner_attention", default=False)


@contextlib.contextmanager
def learner_attention():
    """Within it, attention calls are the learner's (``group_logprobs``: the trained forward and
    the old and reference log-probs alike, so that all three round the same way)."""
    token = _LEARNER.set(True)
    try:
        yield
    finally:
        _LEARNER.reset(token)


def _learner_path(query: torch.Tensor, length: int) -> bool:
    """The learner in bf16 (or fp16) on a CPU, over a score matrix small enough to hold."""
    return (_LEARNER.get() and query.device.type == "cpu" and query.dtype != torch.float32
            and query.numel() // query.shape[-1] * length <= LEARNER_SCORES)


def short_query_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: query (B, H, q, D), key and value (B, KV, L, D),
    ``attention_mask`` SDPA's boolean (B, 1, q, L) or None; returns ((B, q, H, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    kv, length = key.shape[1], key.shape[2]
    special = dropout or any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "sinks", "position_bias"))
    learner = _learner_path(query, length)
    causal = attention_mask is None and q > 1  # SDPA would pass is_causal: the mask is built below
    if ((q > SHORT_QUERY or causal) and not learner) or special or h % kv \
            or (attention_mask is not None and attention_mask.dtype != torch.bool) \
            or (causal and not (getattr(module, "is_causal", True) if is_causal is None else is_causal)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if causal:  # the queries are the last q of the keys: query i sees keys up to length - q + i
        attention_mask = torch.ones(q, length, dtype=torch.bool, device=query.device).tril(length - q)[None, None]
    g = h // kv  # query heads per KV head
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


def use_short_query_attention(model) -> None:
    """Make ``model`` (a transformers model on SDPA attention) use :func:`short_query_attention`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return  # eager, flash or flex were chosen on purpose: leave them
    AttentionInterface.register(NAME, short_query_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
