"""Multi-turn rollout throughput: turnrl's engine (one KV cache kept across turns) vs the
naive approach (re-encode the whole conversation each turn with ``model.generate``), each
in fp32 and with the model in bf16 (what ``model.dtype = "bf16"`` samples with); tokens
are compared between the two where the dtype is the same. Both use the model as
``load_model`` returns it (turnrl's short-query attention included), so the ratio
measures the engine alone. A third run per dtype, ``engine_stock_sdpa``, is the engine
with the model switched back to transformers' own SDPA attention: the A/B of
``turnrl/attention.py`` over whole rollouts.

Same model (SmolLM2-135M-Instruct), same 5-turn episodes (greedy decoding, a task no
reply can solve, so every episode runs all 5 turns), same batch. Writes
bench/results/rollout_throughput.json.

``matmul_floor`` sets the time 4× the naive loop would need against what the engine's
work costs in matmuls alone on this machine: every linear layer and the LM head at the
shapes of each forward the engine ran (its own schedule), and at an ideal schedule's (every
decode step a full batch, prefill without padding).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from cpu_costs import matmul_seconds  # bench/: the matmuls of one forward alone

from turnrl.attention import NAME as ATTENTION
from turnrl.build import build_engine
from turnrl.engine.base import SamplingParams
from turnrl.envs import ArithmeticTasks, RetryEnv, Task
from turnrl.models import load_model, load_tokenizer
from turnrl.rollout import RolloutConfig, collect

ROOT = Path(__file__).resolve().parent.parent
EPISODES, TURNS, MAX_NEW = 32, 5, 32


class Unsolvable:
    """Arithmetic questions whose reference answer no reply matches: every episode lasts 5 turns."""

    def __init__(self):
        self.src = ArithmeticTasks("eval")

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        t = self.src[i]
        return Task(t.id, t.question, "unreachable", "exact", "last_number", operands=t.operands)


def envs(n: int = EPISODES):
    return [RetryEnv(Unsolvable(), max_turns=TURNS) for _ in range(n)]


def run_engine_stock_sdpa(model, tok, n: int = EPISODES):
    """``run_engine`` with transformers' SDPA attention instead of ``turnrl/attention.py``'s."""
    model.set_attn_implementation("sdpa")
    try:
        return run_engine(model, tok, n)
    finally:
        model.set_attn_implementation(ATTENTION)


def run_engine(model, tok, n: int = EPISODES, forwards: list | None = None):
    """With ``forwards``, each model call of the run is appended to it as (rows, new
    tokens per row, real new tokens in all rows)."""
    engine, chat = build_engine(model, tok)
    hook = None
    if forwards is not None:
        def record(_, args, kwargs):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            forwards.append((ids.shape[0], ids.shape[1], int(mask[:, -ids.shape[1]:].sum())))
        hook = model.register_forward_pre_hook(record, with_kwargs=True)
    t0 = time.time()
    try:
        eps = collect(envs(n), list(range(n)), list(range(n)), engine, chat,
                      RolloutConfig(SamplingParams(temperature=0, max_new_tokens=MAX_NEW), max_context=4096))
    finally:
        if hook is not None:
            hook.remove()
    dt = time.time() - t0
    return dt, [[t.action_ids for t in e.turns] for e in eps]


def matmul_floor(model, forwards: list[tuple[int, int, int]], action_tokens: int, batch: int = EPISODES) -> dict:
    """What the engine's run cannot go below on this machine: the seconds its forwards spend
    in matmuls alone (no attention, no framework), in the engine's own schedule (every
    forward as it ran, padded slots included) and in an ideal one (every decode step full,
    ``batch`` rows, and each prefill only its real tokens)."""
    cache: dict[tuple[int, int], float] = {}
    def mm(rows: int, head_rows: int) -> float:
        if (rows, head_rows) not in cache:
            cache[rows, head_rows] = matmul_seconds(model, rows, repeats=3, head_rows=head_rows)
        return cache[rows, head_rows]
    decode = [f for f in forwards if f[1] == 1]
    prefill = [f for f in forwards if f[1] > 1]
    schedule = sum(mm(b * w, b) for b, w, _ in forwards)
    ideal = -(-action_tokens // batch) * mm(batch, batch) + sum(mm(real, b) for b, _, real in prefill)
    return {"forwards": len(forwards), "decode_steps": len(decode),
            "mean_rows_per_decode_step": round(sum(b for b, _, _ in decode) / max(1, len(decode)), 1),
            "matmul_seconds_engine_schedule": round(schedule, 2), "matmul_seconds_full_decode_batches": round(ideal, 2)}


@torch.no_grad()
def run_naive(model, tok, n: int = EPISODES):
    """Re-render and re-encode every conversation each turn; one batched generate per turn."""
    es = envs(n)
    convs = [[m.as_dict() for m in e.reset(i)] for i, e in enumerate(es)]
    actions = [[] for _ in es]
    live = list(range(len(es)))
    tok.padding_side = "left"
    t0 = time.time()
    while live:
        texts = [tok.apply_chat_template(convs[i], tokenize=False, add_generation_prompt=True) for i in live]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        still = []
        for row, i in enumerate(live):
            ids = out[row, batch["input_ids"].shape[1]:].tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            actions[i].append(ids)
            text = tok.decode(ids, skip_special_tokens=True)
            step = es[i].step(text)
            convs[i].append({"role": "assistant", "content": text})
            convs[i] += [m.as_dict() for m in step.messages]
            if not (step.terminated or step.truncated):
                still.append(i)
        live = still
    return time.time() - t0, actions


def main() -> int:
    tok = load_tokenizer("smollm2-135m")
    fp32 = load_model("smollm2-135m").eval()
    result = {"model": "SmolLM2-135M-Instruct", "episodes": EPISODES, "turns_per_episode": TURNS,
              "max_new_tokens_per_turn": MAX_NEW, "decoding": "greedy", "threads": torch.get_num_threads()}
    actions = {}
    for name, model in (("fp32", fp32), ("bf16", copy.deepcopy(fp32).to(torch.bfloat16))):  # bf16: model.dtype = "bf16"
        row = {}
        forwards: list = []
        for how, run in (("engine", run_engine), ("naive_generate", run_naive), ("engine_stock_sdpa", run_engine_stock_sdpa)):
            run(model, tok, n=4)  # warm-up, untimed: the first calls in a dtype set up its kernels
            seconds, acts = run(model, tok, forwards=forwards) if how == "engine" else run(model, tok)
            n = sum(len(x) for ep in acts for x in ep)
            row[how] = {"seconds": round(seconds, 2), "action_tokens": n, "tokens_per_second": round(n / seconds, 1)}
            actions[name, how] = acts
        def identical(other: str) -> str:  # turns with the engine's tokens, of the engine's turns
            same = sum(x == y for ea, eb in zip(actions[name, "engine"], actions[name, other]) for x, y in zip(ea, eb))
            return f"{same}/{sum(len(ep) for ep in actions[name, 'engine'])}"

        row["identical_turns"] = identical("naive_generate")
        row["speedup"] = round(row["engine"]["tokens_per_second"] / row["naive_generate"]["tokens_per_second"], 2)
        row["identical_turns_stock_sdpa"] = identical("engine_stock_sdpa")
        row["attention_speedup"] = round(row["engine"]["tokens_per_second"] / row["engine_stock_sdpa"]["tokens_per_second"], 2)
        # Issue 10 asks for 4x the naive loop: set that time against the matmuls the work needs
        floor = matmul_floor(model, forwards, row["engine"]["action_tokens"])
        floor["seconds_for_4x_naive"] = round(row["naive_generate"]["seconds"] / 4, 2)
        floor["engine_over_its_matmuls"] = round(row["engine"]["seconds"] / floor["matmul_seconds_engine_schedule"], 2)
        row["matmul_floor"] = floor
        result[name] = row
    tps = lambda name, how: result[name][how]["tokens_per_second"]
    result["speedup_bf16_engine_vs_fp32_naive"] = round(tps("bf16", "engine") / tps("fp32", "naive_generate"), 2)
    result["speedup_bf16_engine_vs_fastest_naive"] = round(
        tps("bf16", "engine") / max(tps("fp32", "naive_generate"), tps("bf16", "naive_generate")), 2)
    out = ROOT / "bench" / "results" / "rollout_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
