"""Where CPU time goes for SmolLM2-135M: learner forward+backward in fp32 vs bf16
autocast, and one batched decode step of the engine's model call at several batch sizes.
Writes bench/results/cpu_costs.json.

    python bench/cpu_costs.py
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from turnrl.algos.logprobs import group_logprobs
from turnrl.models import load_model
from turnrl.types import Episode, Turn

ROOT = Path(__file__).resolve().parent.parent


def learner_seconds(model, dtype: torch.dtype | None, repeats: int = 2) -> tuple[float, int]:
    """One GRPO-like group: 8 episodes sharing a 55-token prompt, two 20-token turns each."""
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(100, 40000, (n,), generator=g).tolist()
    prompt = rand(55)
    eps = [Episode([Turn(prompt, rand(20), [0.0] * 20), Turn(rand(25), rand(20), [0.0] * 20)], 0) for _ in range(8)]
    tokens = sum(len(e.token_ids) for e in eps)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.time()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            lps, _ = group_logprobs(model, eps)
        (-sum(l.sum() for l in lps)).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.time() - t0)
    return min(times[1:]), tokens


@torch.no_grad()
def decode_step_seconds(model, batch: int, context: int = 80, steps: int = 8) -> float:
    ids = torch.randint(100, 1000, (batch, context))
    cache = DynamicCache()
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    t0 = time.time()
    for i in range(steps):
        model(input_ids=ids[:, :1], attention_mask=torch.ones(batch, context + i + 1, dtype=torch.long),
              position_ids=torch.full((batch, 1), context + i), cache=cache, use_cache=True, logits_to_keep=1)
    return (time.time() - t0) / steps


def main() -> int:
    model = load_model("smollm2-135m")
    model.train()
    fp32, n = learner_seconds(model, None)
    bf16, _ = learner_seconds(model, torch.bfloat16, repeats=1)
    model.eval()
    decode = {str(b): round(decode_step_seconds(model, b), 4) for b in (1, 8, 32, 64)}
    result = {
        "model": "SmolLM2-135M-Instruct", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "learner_tokens": n,
        "learner_fwd_bwd_seconds": {"fp32": round(fp32, 2), "bf16_autocast": round(bf16, 2)},
        "learner_tokens_per_second": {"fp32": round(n / fp32, 1), "bf16_autocast": round(n / bf16, 1)},
        "bf16_slowdown": round(bf16 / fp32, 1),
        "decode_step_seconds_by_batch": decode,
    }
    out = ROOT / "bench" / "results" / "cpu_costs.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
