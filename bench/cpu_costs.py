"""Where CPU time goes for SmolLM2-135M, in one run; writes bench/results/cpu_costs.json.

- learner forward+backward of one GRPO-like group (turnrl's learner path), in fp32, under
  bf16 autocast, and with the model held in bf16 (``model.dtype = "bf16"``: what the
  trainer does, fp32 master weights aside); and of a group whose episodes differ in length
  (as the UFO demo's), in one padded batch and in batches of similar length;
- one batched decode step of the engine's model call at several batch sizes, fp32 and bf16,
  against the time of the matmuls alone that such a step needs (every linear layer and the
  LM head at the same shapes), so the gap is what the framework adds;
- one layer's attention at a decode step, transformers' SDPA function against turnrl's
  short-query attention, and one sampling step at T = 0.7 (batch 32 and 128),
  ``torch.multinomial`` per row and the engine's earlier sampler against its sampler now.

    python bench/cpu_costs.py
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from turnrl.engine.kv import GrowingCache

from turnrl.algos.logprobs import group_logprobs
from turnrl.models import load_model
from turnrl.types import Episode, Turn

ROOT = Path(__file__).resolve().parent.parent


def learner_seconds(model, autocast: bool = False, repeats: int = 2) -> tuple[float, int]:
    """One GRPO-like group: 8 episodes sharing a 55-token prompt, two 20-token turns each."""
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()
    prompt = rand(55)
    eps = [Episode([Turn(prompt, rand(20), [0.0] * 20), Turn(rand(25), rand(20), [0.0] * 20)], 0) for _ in range(8)]
    tokens = sum(len(e.token_ids) for e in eps)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            lps, _ = group_logprobs(model, eps)
        (-sum(l.sum() for l in lps)).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return min(times[1:]), tokens


def uneven_group_seconds(model, repeats: int = 2) -> dict:
    """The learner on one group whose episodes differ in length as the UFO demo's do: a
    70-token prompt, then 1 to 5 attempts of 12 tokens with 14-token feedback between them
    (13 to 117 tokens past the shared prompt; 42% of a padded batch is padding). One padded
    batch against the batches of similar length that ``group_logprobs`` forms on a CPU
    (``BUCKET_OVERHEAD_TOKENS``)."""
    from turnrl.algos import logprobs

    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()
    prompt = rand(70)
    eps = [Episode([Turn(prompt, rand(12), [0.0] * 12)] + [Turn(rand(14), rand(12), [0.0] * 12) for _ in range(a - 1)], 0)
           for a in (1, 1, 1, 3, 4, 5, 5, 5)]
    out = {"tokens": sum(len(e.token_ids) for e in eps)}
    saved = dict(logprobs.BUCKET_OVERHEAD_TOKENS)
    try:
        for name, table in (("one_batch", {}), ("length_batches", saved)):
            logprobs.BUCKET_OVERHEAD_TOKENS.clear()
            logprobs.BUCKET_OVERHEAD_TOKENS.update(table)
            times = []
            for _ in range(repeats + 1):  # the first call warms up
                t0 = time.perf_counter()
                lps, _ = group_logprobs(model, eps)
                (-sum(l.sum() for l in lps)).backward()
                model.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
            out[name] = round(min(times[1:]), 2)
    finally:
        logprobs.BUCKET_OVERHEAD_TOKENS.clear()
        logprobs.BUCKET_OVERHEAD_TOKENS.update(saved)
    out["speedup"] = round(out["one_batch"] / out["length_batches"], 2)
    return out


@torch.no_grad()
def decode_step_seconds(model, batch: int, context: int = 80, steps: int = 8, repeats: int = 5) -> float:
    """Seconds per decode step (the best of ``repeats`` runs of ``steps`` steps, as the
    matmul timing below takes its best run)."""
    ids = torch.randint(100, 1000, (batch, context))
    best = float("inf")
    for _ in range(repeats):
        cache = GrowingCache()  # the engine's cache
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        t0 = time.perf_counter()
        for i in range(steps):
            model(input_ids=ids[:, :1], attention_mask=torch.ones(batch, context + i + 1, dtype=torch.long),
                  position_ids=torch.full((batch, 1), context + i), cache=cache, use_cache=True, logits_to_keep=1)
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


@torch.no_grad()
def matmul_seconds(model, batch: int, repeats: int = 5, head_rows: int | None = None) -> float:
    """The matmuls of one forward alone (the best of ``repeats``): x (batch, in) @ W.T for
    every linear layer of the decoder, with its own weights and dtype, and ``head_rows``
    rows (default ``batch``: a decode step) through the LM head."""
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    xs = [torch.randn(batch, m.in_features, dtype=m.weight.dtype) for m in linears]
    xh = torch.randn(batch if head_rows is None else head_rows, head.in_features, dtype=head.weight.dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for m, x in zip(linears, xs):
            torch.nn.functional.linear(x, m.weight)
        torch.nn.functional.linear(xh, head.weight)
        best = min(best, time.perf_counter() - t0)
    return best


def _best_ms(fn, repeats: int = 50) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


@torch.no_grad()
def attention_ms(model, batch: int = 32, cached: int = 90) -> dict:
    """One layer's attention at a decode step (one query per row against ``cached`` slots of
    the engine's cache, some rows left-padded): transformers' SDPA function against
    turnrl's short-query one."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from turnrl.attention import short_query_attention

    c = model.config
    heads, kv, d = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, 1, d, generator=g).to(dtype)
    # the engine's cache hands attention views of buffers with spare room (turnrl/engine/kv.py)
    k, v = (torch.randn(batch, kv, cached + 64, d, generator=g).to(dtype)[..., :cached, :] for _ in range(2))
    mask = torch.ones(batch, 1, 1, cached, dtype=torch.bool)
    mask[::4, ..., :10] = False
    module = SimpleNamespace(num_key_value_groups=heads // kv, is_causal=True)
    # no row padded: transformers passes no mask, and its SDPA function then takes enable_gqa
    return {case: {"sdpa": round(_best_ms(lambda: sdpa_attention_forward(module, q, k, v, m)), 3),
                   "turnrl": round(_best_ms(lambda: short_query_attention(module, q, k, v, m)), 3)}
            for case, m in (("padded_rows", mask), ("no_padding", None))}


def sampling_ms(batch: int = 32, vocab: int = 49152, calls: int = 40) -> dict:
    """One sampling step at T = 0.7, one generator per row, mean ms over ``calls`` calls on
    4 rotating logit tensors (a step never sees the last step's logits, so no call finds
    its input in cache): ``torch.multinomial`` per row (what the engine did first), one
    float64 running sum over the whole row with the softmax in a second buffer (what it did
    until this round), and the engine's ``_sample`` now (two-level search, softmax in place)."""
    from turnrl.engine.base import SamplingParams
    from turnrl.engine.hf import HFEngine

    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(batch, vocab, generator=g) * 3 for _ in range(4)]
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]

    def multinomial(x):
        probs = torch.softmax(x / 0.7, -1)
        return torch.cat([torch.multinomial(probs[b], 1, generator=gen) for b, gen in enumerate(gens)])

    def one_running_sum(x):
        probs = torch.softmax(x / 0.7, -1)
        u = 1 - torch.stack([torch.rand((), generator=gen) for gen in gens])
        cdf = probs.double().cumsum(-1)
        ids = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None]).clamp_(max=vocab - 1).squeeze(-1)
        return ids, probs.gather(-1, ids[:, None]).log()

    def mean_ms(fn, n):
        for x in logits:  # warm-up
            fn(x)
        t0 = time.perf_counter()
        for i in range(n):
            fn(logits[i % 4])
        return round((time.perf_counter() - t0) / n * 1e3, 2)

    sp = SamplingParams(temperature=0.7)
    return {"multinomial_per_row": mean_ms(multinomial, 8), "one_running_sum": mean_ms(one_running_sum, calls),
            "engine": mean_ms(lambda x: HFEngine._sample(x, sp, gens), calls)}


def main() -> int:
    fp32 = load_model("smollm2-135m")
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    fp32.train(), bf16.train()
    t_fp32, n = learner_seconds(fp32)
    t_auto, _ = learner_seconds(fp32, autocast=True)
    t_bf16, _ = learner_seconds(bf16)
    uneven = {"fp32": uneven_group_seconds(fp32), "bf16": uneven_group_seconds(bf16)}
    fp32.eval(), bf16.eval()
    decode, matmul = {}, {}
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        decode[name] = {str(b): round(decode_step_seconds(model, b), 4) for b in (1, 8, 32, 64)}
        matmul[name] = {str(b): round(matmul_seconds(model, b), 4) for b in (1, 8, 32, 64)}
    result = {
        "model": "SmolLM2-135M-Instruct", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "learner_tokens": n,
        "learner_fwd_bwd_seconds": {"fp32": round(t_fp32, 2), "bf16_autocast": round(t_auto, 2), "bf16_model": round(t_bf16, 2)},
        "learner_tokens_per_second": {"fp32": round(n / t_fp32, 1), "bf16_autocast": round(n / t_auto, 1),
                                      "bf16_model": round(n / t_bf16, 1)},
        "bf16_model_speedup": round(t_fp32 / t_bf16, 2),
        "learner_uneven_group_fwd_bwd_seconds": uneven,
        "decode_step_seconds_by_batch": decode,
        "decode_matmul_seconds_by_batch": matmul,
        "decode_step_over_matmul_batch_32": {k: round(decode[k]["32"] / matmul[k]["32"], 2) for k in decode},
        "attention_ms_per_layer_decode_batch_32": {"fp32": attention_ms(fp32), "bf16": attention_ms(bf16)},
        "sampling_ms_per_step_t0.7": {str(b): sampling_ms(b) for b in (32, 128)},
    }
    out = ROOT / "bench" / "results" / "cpu_costs.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
