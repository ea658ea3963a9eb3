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
        # k independent single-attempt samples per task, side by side in one batch, so
        # the engine encodes each prompt once (Pass@k baseline of UFO, arXiv 2507.14295)
        k = ev.pass_k
        rc = RolloutConfig(replace(sp, temperature=ev.pass_temperature, seed=cfg.train.seed + 100),
                           max_context=cfg.rollout.max_context)
        repeated = [s for s in seeds for _ in range(k)]
        per_batch = max(k, ev.batch_size // k * k)
        samples = _run(engine, chat, env_factory(cfg, "eval", max_turns=1), repeated, rc, per_batch)
        correct = {s: 0 for s in seeds}
        for ep, s in zip(samples, repeated):
            correct[s] += int(bool(ep.turns[0].info.get("correct")))
        metrics[f"pass@{k}"] = sum(pass_at_k(k, c, k) for c in correct.values()) / len(seeds)
        metrics["pass@1"] = sum(pass_at_k(k, c, 1) for c in correct.values()) / len(seeds)
    return metrics, episodes
