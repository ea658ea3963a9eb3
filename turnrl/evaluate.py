"""Held-out evaluation: Succ@k with feedback, Pass@k from independent samples, the
turn-level rates of :mod:`turnrl.metrics` and their bootstrap intervals.

One code path for every caller (``turnrl eval``, the trainer's periodic evaluation,
``--compare``); what differs is the runner that plays the episodes: the built-in
engine (token level, one KV cache across turns) or an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import replace
from typing import Callable, Protocol

import numpy as np

from turnrl.build import env_factory, episode_turns, has_split, seed_offset
from turnrl.config import RunConfig
from turnrl.diagnostics import check_collapse_config, collapse_metrics, model_of
from turnrl.engine.base import SamplingParams
from turnrl.envs.base import Env, env_call
from turnrl.logging import EvalProgress
from turnrl.metrics import bootstrap_ci, episode_intervals, episode_metrics, pass_at_k
from turnrl.results import EvalResult, episode_record
from turnrl.logging import machine_record
from turnrl.rollout import RolloutConfig, collect, context_fields
from turnrl.types import Episode


class Runner(Protocol):
    name: str  # what is being evaluated, for reports

    def run(self, make_env: Callable[[], Env], seeds: list[int], cfg: RolloutConfig, batch_size: int,
            done: Callable[[int], None] = lambda n: None) -> list[Episode]:
        """One episode per seed, in order; ``done(n)`` as each ``n`` more are finished."""


class EngineRunner:
    """Episodes on the built-in engine, ``batch_size`` at a time."""

    def __init__(self, engine, chat, name: str = "", tokenizer=None):
        self.engine, self.chat, self.name = engine, chat, name
        self.tokenizer = tokenizer if tokenizer is not None else chat.tok

    def run(self, make_env, seeds, cfg, batch_size, done=lambda n: None):
        eps = []
        for s in range(0, len(seeds), batch_size):
            chunk = seeds[s:s + batch_size]
            eps += collect([make_env() for _ in chunk], chunk, chunk, self.engine, self.chat, cfg)
            done(len(chunk))
        return eps


def _run(runner: Runner, make_env, seeds: list[int], cfg: RolloutConfig, batch_size: int, bar) -> list[Episode]:
    """``runner.run``, reporting progress where the runner takes ``done`` (a runner
    written before it existed still works, without a count)."""
    if "done" in inspect.signature(runner.run).parameters:
        return runner.run(make_env, seeds, cfg, batch_size, done=bar.advance)
    return runner.run(make_env, seeds, cfg, batch_size)


def eval_seeds(cfg: RunConfig) -> list[int]:
    """The fixed held-out seeds: ``0..n-1`` of the eval split (custom envs: offset)."""
    return [seed_offset(cfg, "eval") + i for i in range(cfg.eval.num_tasks)]


def distinct_instances(make_env: Callable[[], Env], seeds: list[int]) -> tuple[int, str]:
    """How many distinct instances ``seeds`` play, and by what key: the env's
    ``instance()``, or (where it returns None) the opening messages."""
    env, keys, by = make_env(), set(), "instance"
    for s in seeds:
        opening = env_call(env, s, None)
        key = getattr(env, "instance", lambda: None)()
        if key is None:
            key, by = tuple((m.role, m.content) for m in opening), "opening"
        keys.add(key)
    return len(keys), by


def evaluate(runner: Runner, cfg: RunConfig, step: int | None = None) -> EvalResult:
    """Multi-turn episodes on the eval seeds (greedy by default) and, if
    ``eval.pass_k > 0``, ``eval.pass_samples`` (n >= k) single-attempt samples per task
    for the unbiased Pass@k estimator. With ``log.progress``, a progress bar counts them."""
    with EvalProgress(cfg.log.progress, step) as bar:
        return _evaluate(runner, cfg, step, bar)


def _evaluate(runner: Runner, cfg: RunConfig, step: int | None, bar: "EvalProgress") -> EvalResult:
    ev = cfg.eval
    check_collapse_config(runner, ev)
    t0 = time.time()
    seeds = eval_seeds(cfg)
    max_new = ev.max_new_tokens or cfg.rollout.max_new_tokens
    sp = SamplingParams(temperature=ev.temperature, max_new_tokens=max_new, seed=cfg.train.seed + 7)
    rcfg = RolloutConfig(sp, max_context=cfg.rollout.max_context, **context_fields(cfg.rollout))
    make_env = env_factory(cfg, "eval")
    distinct, distinct_by = distinct_instances(make_env, seeds)
    probe = make_env()
    split_size = getattr(probe, "num_instances", lambda: None)()
    dropped = getattr(getattr(probe, "tasks", None), "dropped", None)  # eval questions also in the training file
    n = ev.pass_samples if ev.pass_k > 0 else 0
    bar.start("multi-turn", len(seeds))
    episodes = _run(runner, make_env, seeds, rcfg, ev.batch_size, bar)
    errored = [e for e in episodes if e.info.get("error")]
    scored = [e for e in episodes if not e.info.get("error")]  # endpoint failures are not the policy's
    turns = episode_turns(cfg)
    metrics = episode_metrics(scored, turns)
    intervals = episode_intervals(scored, turns)
    metrics["episodes"] = float(len(scored))
    metrics["errored_episodes"] = float(len(errored))
    metrics["distinct_instances"] = float(distinct)
    if ev.pass_k > 0:
        pass_metrics, pass_intervals, errored_samples = _pass_at_k(runner, cfg, seeds, n, sp, bar)
        metrics.update(pass_metrics)
        intervals.update(pass_intervals)
        metrics["errored_episodes"] += errored_samples
    metrics["eval_seconds"] = time.time() - t0
    tok = getattr(runner, "tokenizer", None)
    model = model_of(runner)
    machine = None if model is None else machine_record(model)  # what eval_seconds were measured on
    meta = {
        "model": runner.name, "dtype": machine and machine["policy_dtype"], "env": cfg.env.name, "split": "eval", "seeds": seeds,
        "max_turns": turns, "step": step, "temperature": ev.temperature,
        "max_new_tokens": max_new, "pass_k": ev.pass_k, "pass_n": n, "pass_temperature": ev.pass_temperature,
        "distinct_instances": distinct, "distinct_by": distinct_by, "split_instances": split_size,
        "held_out": "env split" if has_split(cfg) else f"seed offset {seed_offset(cfg, 'eval')} (the env takes no split)",
        "eval_dropped_as_in_train": dropped,
        "reports_correct": any(t.info.get("correct") is not None for e in scored for t in e.live_turns),
        "task": cfg.task.model_dump(mode="json") if cfg.env.name == "retry" else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine,  # None over HTTP and with vLLM
    }
    # template-collapse diagnostic (RAGEN-2); its time is in collapse_seconds, not eval_seconds
    bar.start("collapse diagnostic", None)
    c_metrics, c_intervals, meta["collapse"] = collapse_metrics(scored, model, ev.collapse_sample)
    metrics.update(c_metrics)
    intervals.update(c_intervals)
    return EvalResult(metrics, intervals, meta, [episode_record(e, tok) for e in episodes])


def _pass_at_k(runner: Runner, cfg: RunConfig, seeds: list[int], n: int, sp: SamplingParams,
               bar: "EvalProgress") -> tuple[dict, dict, int]:
    """Pass@1 and Pass@k (k = ``eval.pass_k``), their intervals and the errored samples, from ``n``
    >= k independent single-attempt samples per task, side by side in one batch so the
    engine encodes each prompt once (the Pass@k baseline of UFO, arXiv 2507.14295); with
    n > k the unbiased estimator is more than "any of k" (Chen et al. 2021). Errored samples
    (an endpoint that failed) are counted and left out; a task left with fewer than k
    samples cannot give Pass@k and is left out too."""
    ev, k = cfg.eval, cfg.eval.pass_k
    rc = RolloutConfig(replace(sp, temperature=ev.pass_temperature, seed=cfg.train.seed + 100),
                       max_context=cfg.rollout.max_context, **context_fields(cfg.rollout))
    repeated = [s for s in seeds for _ in range(n)]
    per_batch = max(n, ev.batch_size // n * n)
    bar.start(f"pass@{k} samples", len(repeated))
    samples = _run(runner, env_factory(cfg, "eval", max_turns=1), repeated, rc, per_batch, bar)
    correct, tried = {s: 0 for s in seeds}, {s: 0 for s in seeds}
    for ep, s in zip(samples, repeated):
        if ep.info.get("error"):
            continue
        tried[s] += 1
        correct[s] += int(bool(ep.turns and ep.turns[0].info.get("correct")))
    kept = [s for s in seeds if tried[s] >= k]
    metrics, intervals = {}, {}
    for kk in sorted({1, k}):
        per_task = np.array([pass_at_k(tried[s], correct[s], kk) for s in kept])
        metrics[f"pass@{kk}"] = float(per_task.mean()) if kept else 0.0
        intervals[f"pass@{kk}"] = bootstrap_ci(per_task)
    return metrics, intervals, sum(1 for e in samples if e.info.get("error"))

