"""GPU check: turnrl's rollout and learner on one CUDA device, in at most a few minutes.

A randomly initialised model of Qwen2.5-0.5B's shape (config in code, nothing downloaded)
in bf16 plays a synthetic multi-turn workload of random token ids: groups of episodes share
a prompt; each turn the HF engine samples a reply for every episode (one KV cache kept
across turns), then an observation chunk of random ids is appended. The episodes it
produced are then trained for 3 GRPO steps (the registered ``grpo`` advantages and loss,
``group_logprobs`` forward + backward, AdamW).

Reported: rollout tokens/s (sampled tokens), learner tokens/s (episode tokens through
forward + backward, per optimizer step), MFU of each against the device's bf16 dense peak,
the 3 losses, and the mean |learner - sampler| log-prob of the first step (the engine and
the learner should agree up to bf16 noise). FLOPs count the matmuls of the weights only
(attention scores excluded, so MFU is a slight underestimate): decode 2 x N_body per token
the model reads + 2 x V x C per sampled token (the LM head runs on the last position only);
training 6 x N_body per token (a group's shared prompt counted once) + 6 x V x C per
action token (the head runs on action positions only).

    python bench/gpu_check.py                                   # CUDA, bf16 -> bench/results/gpu_check.json
    python bench/gpu_check.py --device cpu --tiny --out /tmp/gpu_check.json   # smoke check
    python bench/gpu_check.py --profile /tmp/gpu_profile.txt   # + where the time goes (torch.profiler)

``--profile`` adds, after the timed parts, one profiled generate call (one turn) and one
profiled training step, and writes their operator tables (by self CPU time and by self
device time) to the file it names.

It needs only torch and transformers besides this checkout's turnrl (imported from here).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's turnrl, installed or not
from turnrl.algos import LossInputs, get_algorithm
from turnrl.algos.base import Aux, token_turn_ids
from turnrl.algos.logprobs import group_logprobs
from turnrl.engine.base import GenRequest, SamplingParams
from turnrl.engine.hf import HFEngine
from turnrl.types import Episode, Turn

# Qwen/Qwen2.5-0.5B config.json
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
                  max_position_embeddings=32768, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=2048)
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0)]
# what grpo reads of turnrl.config.AlgoConfig, at its defaults (that module needs pydantic)
GRPO = SimpleNamespace(name="grpo", scale_by_std=True, loss_agg="token_mean", clip_low=0.2, clip_high=0.28, kl_coef=0.0)
STOP, PAD = 1, 0  # ids: a random model samples the stop id rarely, so turns mostly run to their limit


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (CPU smoke check)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    ap.add_argument("--batch", type=int, help="episodes per rollout (default 64; tiny 8)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, help="default 128; tiny 16")
    ap.add_argument("--obs-len", type=int, help="observation ids appended after each reply (default 32; tiny 4)")
    ap.add_argument("--new-tokens", type=int, help="per-turn token limit (default 64; tiny 8)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-groups", type=int, default=1, help="groups per forward/backward (train.micro_groups)")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW. Adam's first step moves every weight by ~lr: "
                    "on the random 0.5B model (4 episodes, CPU) every token clipped from step 2 at 1e-5, "
                    "from step 3 at 1e-6")
    ap.add_argument("--peak-tflops", type=float, help="bf16 dense peak, when the device name is not known")
    ap.add_argument("--budget-s", type=float, default=270.0, help="wall-time budget: the rollout stops after "
                    "the turn that passes half of it, training before a step that would pass it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=Path, help="write torch.profiler tables of one turn and one step here")
    a = ap.parse_args(argv)
    a.batch = a.batch or (8 if a.tiny else 64)
    a.prompt_len = a.prompt_len or (16 if a.tiny else 128)
    a.obs_len = a.obs_len or (4 if a.tiny else 32)
    a.new_tokens = a.new_tokens or (8 if a.tiny else 64)
    if a.batch % a.group_size:
        ap.error("--batch must be a multiple of --group-size")
    return a


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_tflops(dev: torch.device, name: str, given: float | None) -> float | None:
    if given:
        return given
    if dev.type == "cuda":
        return next((v for k, v in PEAK_BF16_TFLOPS if k.lower() in name.lower()), None)
    return None


def rollout(engine: HFEngine, a, gen: torch.Generator, vocab: int, deadline: float) -> tuple[list[Episode], dict]:
    """Turns of generate + random observation ids; every episode plays every turn (fewer
    turns if the clock passes ``deadline``)."""
    rand = lambda n: torch.randint(2, vocab, (n,), generator=gen).tolist()
    prompts = [rand(a.prompt_len) for _ in range(a.batch // a.group_size)]
    ctx = [list(prompts[i // a.group_size]) for i in range(a.batch)]
    turns: list[list[Turn]] = [[] for _ in range(a.batch)]
    obs = [list(c) for c in ctx]  # the ids each episode's next turn adds before its action
    sp = SamplingParams(temperature=1.0, max_new_tokens=a.new_tokens, seed=a.seed)
    sync(engine.device)
    t0 = time.perf_counter()
    steps = 0  # decode steps: each turn runs as many as its longest reply has tokens
    for k in range(a.turns):
        res = engine.generate([GenRequest(i, c) for i, c in enumerate(ctx)], sp)
        steps += max(len(r.token_ids) for r in res)
        for i, r in enumerate(res):
            turns[i].append(Turn(obs[i], r.token_ids, r.logprobs, temperature=sp.temperature,
                                 reward=float(torch.rand((), generator=gen))))
            obs[i] = rand(a.obs_len)
            ctx[i] = ctx[i] + r.token_ids + (obs[i] if k + 1 < a.turns else [])
        if time.perf_counter() > deadline:
            break
    sync(engine.device)
    dt = time.perf_counter() - t0
    engine.release()
    eps = [Episode(t, group_id=i // a.group_size) for i, t in enumerate(turns)]
    sampled = sum(e.num_action_tokens for e in eps)
    # what the model read: each distinct prompt once, then every id but each row's last sample
    read = sum(e.num_tokens for e in eps) - (a.batch - len(prompts)) * a.prompt_len - a.batch
    return eps, {"turns_played": len(turns[0]), "seconds": dt, "tokens_sampled": sampled, "tokens_read": read,
                 "tokens_per_s": sampled / dt, "decode_steps": steps, "ms_per_decode_step": 1e3 * dt / steps}


def train_step(model, opt, algo, cfg, eps: list[Episode], chunk: int, micro_groups: int = 1) -> dict:
    """One GRPO step, ``micro_groups`` groups per micro-batch (``train.micro_groups``, as the
    trainer does): loss, grad norm, log-prob audit."""
    dev = next(model.parameters()).device
    adv = algo.advantages(eps, cfg, Aux(n_sampled=len(eps)))
    norm = algo.norm(eps, cfg, len(eps), sum(e.num_action_tokens for e in eps))

    def pad(rows, v=0.0):  # (B, T) on the model's device
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=v).to(dev)

    loss_sum, diffs = 0.0, []
    groups = sorted({e.group_id for e in eps})
    for k in range(0, len(groups), micro_groups):
        idx = [i for i, e in enumerate(eps) if e.group_id in groups[k:k + micro_groups]]
        sub = [eps[i] for i in idx]
        lps, _ = group_logprobs(model, sub, chunk, with_entropy=True)
        old = [torch.tensor([x for t in e.live_turns for x in t.action_logprobs]) for e in sub]
        diffs += [(lp.detach().cpu() - o).abs() for lp, o in zip(lps, old)]
        x = LossInputs(sub, pad(lps), pad(old), pad([adv[i] for i in idx]),
                       pad([torch.ones(len(o), dtype=torch.bool) for o in old], False),
                       pad([token_turn_ids(e) for e in sub], -1), algo.agg(cfg), norm)
        loss, _ = algo.loss(x, cfg)
        loss.backward()
        loss_sum += float(loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": loss_sum, "grad_norm": grad_norm, "audit": float(torch.cat(diffs).mean())}


def profile_tables(a, dev: torch.device, engine: HFEngine, model, opt, algo, eps: list[Episode], vocab: int) -> str:
    """Operator tables of one more generate call (a fresh prompt per group, one turn) and one
    more training step, each by self CPU time and by self device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    gen = torch.Generator().manual_seed(a.seed + 1)
    prompts = [torch.randint(2, vocab, (a.prompt_len,), generator=gen).tolist() for _ in range(a.batch // a.group_size)]
    reqs = [GenRequest(i, prompts[i // a.group_size]) for i in range(a.batch)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=a.new_tokens, seed=a.seed)
    parts = []
    for name, fn in (("one turn (generate)", lambda: (engine.generate(reqs, sp), engine.release())),
                     ("one training step", lambda: train_step(model, opt, algo, GRPO, eps, 1024, a.micro_groups))):
        model.train(name != "one turn (generate)")
        sync(dev)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            fn()
            sync(dev)
        wall = time.perf_counter() - t0
        ka = prof.key_averages()
        parts.append(f"== {name}: {wall:.2f} s wall (profiled) ==\n-- by self CPU time --\n"
                     + ka.table(sort_by="self_cpu_time_total", row_limit=30))
        if dev.type == "cuda":
            parts.append("-- by self device time --\n" + ka.table(sort_by="self_device_time_total", row_limit=30))
    return "\n".join(parts)


def main(argv=None) -> dict:
    a = parse_args(argv)
    t_start = time.perf_counter()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False); "
                 "for a CPU smoke check run with --device cpu --tiny")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    torch.manual_seed(a.seed)
    cfg = Qwen2Config(**(TINY if a.tiny else QWEN25_05B), bos_token_id=STOP, eos_token_id=STOP, pad_token_id=PAD)
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    head = cfg.vocab_size * cfg.hidden_size  # tied: the embedding matrix is the LM head
    n_body = n_params - head
    gen = torch.Generator().manual_seed(a.seed)
    engine = HFEngine(model, [STOP], PAD)
    engine.generate([GenRequest(0, [2, 3, 4])], SamplingParams(max_new_tokens=2))  # warm-up (kernels, allocator)
    engine.release()
    eps, ro = rollout(engine, a, gen, cfg.vocab_size, deadline=t_start + a.budget_s / 2)

    algo, acfg = get_algorithm("grpo"), GRPO
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    model.train()
    steps, truncated = [], False
    for s in range(a.steps):
        left = a.budget_s - (time.perf_counter() - t_start)
        if steps and left < 1.5 * steps[-1]["seconds"]:
            truncated = True
            break
        sync(dev)
        t0 = time.perf_counter()
        out = train_step(model, opt, algo, acfg, eps, 1024, a.micro_groups)
        sync(dev)
        steps.append({**out, "seconds": time.perf_counter() - t0})
        print(f"step {s + 1}: loss {out['loss']:+.5f}  grad_norm {out['grad_norm']:.3f}  "
              f"{steps[-1]['seconds']:.2f}s", file=sys.stderr)

    if a.profile:
        a.profile.parent.mkdir(parents=True, exist_ok=True)
        a.profile.write_text(profile_tables(a, dev, engine, model, opt, algo, eps, cfg.vocab_size) + "\n")

    tokens = sum(e.num_tokens for e in eps)
    body_tokens = tokens - (a.batch - a.batch // a.group_size) * a.prompt_len  # a group's prompt runs once
    action = sum(e.num_action_tokens for e in eps)
    timed = steps[1:] or steps  # the first step pays one-off costs (allocator, optimizer state)
    step_s = sum(st["seconds"] for st in timed) / len(timed)
    peak = peak_tflops(dev, name, a.peak_tflops)
    mfu = lambda flops, s: flops / s / (peak * 1e12) if peak else None
    result = {
        "device": str(dev), "device_name": name, "torch": torch.__version__,
        "transformers": transformers.__version__, "dtype": str(dtype).removeprefix("torch."),
        "model": {"shape": "tiny" if a.tiny else "Qwen2.5-0.5B (random init)", "params": n_params,
                  "non_embedding_params": n_body, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size},
        "workload": {k: getattr(a, k) for k in ("batch", "group_size", "turns", "prompt_len", "obs_len", "new_tokens",
                                               "micro_groups")},
        "peak_tflops": peak,
        "flops": "weights' matmuls only, attention scores excluded: decode 2*N_body*read + 2*V*C*sampled; "
                 "training 6*N_body*tokens (shared prompt once) + 6*V*C*action tokens",
        "rollout": {**ro, "mfu": mfu(2 * n_body * ro["tokens_read"] + 2 * head * ro["tokens_sampled"], ro["seconds"])},
        "learner": {"tokens_per_step": tokens, "action_tokens_per_step": action, "seconds_per_step": step_s,
                    "tokens_per_s": tokens / step_s, "mfu": mfu(6 * n_body * body_tokens + 6 * head * action, step_s)},
        "train": {"algorithm": "grpo", "optimizer": f"AdamW lr {a.lr:g}", "losses": [st["loss"] for st in steps],
                  "grad_norms": [st["grad_norm"] for st in steps], "step_seconds": [st["seconds"] for st in steps],
                  "audit_mean_abs_logprob_diff": steps[0]["audit"], "truncated_by_budget": truncated},
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "wall_s": time.perf_counter() - t_start,
    }
    print(json.dumps(result, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
