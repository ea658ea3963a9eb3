"""Held-out evaluation: Succ@k with feedback and Pass@k from independent samples."""
from __future__ import annotations

from dataclasses import replace

from turnrl.build import env_factory, seed_offset
from turnrl.config import RunConfig
from turnrl.engine.base import SamplingParams
from turnrl.metrics import episode_metrics, pass_at_k
from turnrl.rollout import RolloutConfig, collect
from turnrl.types import Episode


def _run(engine, chat, make_env, seeds, rcfg: RolloutConfig, batch_size: int) -> list[Episode]:
    eps = []
    for s in range(0, len(seeds), batch_size):
        chunk = seeds[s:s + batch_size]
        eps += collect([make_env() for _ in chunk], chunk, chunk, engine, chat, rcfg)
    return eps


def evaluate(engine, chat, cfg: RunConfig) -> tuple[dict[str, float], list[Episode]]:
    """Multi-turn episodes on eval seeds ``0..n-1`` (greedy by default) and, if
    ``eval.pass_k > 0``, ``pass_k`` single-attempt samples per task for Pass@k."""
    ev = cfg.eval
    seeds = [seed_offset(cfg, "eval") + i for i in range(ev.num_tasks)]
    max_new = ev.max_new_tokens or cfg.rollout.max_new_tokens
    sp = SamplingParams(temperature=ev.temperature, max_new_tokens=max_new, seed=cfg.train.seed + 7)
    rcfg = RolloutConfig(sp, max_context=cfg.rollout.max_context)
    episodes = _run(engine, chat, env_factory(cfg, "eval"), seeds, rcfg, ev.batch_size)
    metrics = episode_metrics(episodes, cfg.env.max_turns)
    if ev.pass_k > 0:
        single = env_factory(cfg, "eval", max_turns=1)
        correct = {s: 0 for s in seeds}
        for j in range(ev.pass_k):
            rc = RolloutConfig(replace(sp, temperature=ev.pass_temperature, seed=cfg.train.seed + 100 + j),
                               max_context=cfg.rollout.max_context)
            for ep, s in zip(_run(engine, chat, single, seeds, rc, ev.batch_size), seeds):
                correct[s] += int(bool(ep.turns[0].info.get("correct")))
        k = ev.pass_k
        metrics[f"pass@{k}"] = sum(pass_at_k(k, c, k) for c in correct.values()) / len(seeds)
        metrics["pass@1"] = sum(pass_at_k(k, c, 1) for c in correct.values()) / len(seeds)
    return metrics, episodes
