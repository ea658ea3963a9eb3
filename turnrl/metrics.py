"""Turn-level metrics of multi-attempt episodes (UFO, arXiv 2507.14295).

Every function reads only what any env reports: the ``Step.correct`` / ``valid`` /
``answer`` fields, which the rollout writes into each turn's record (``Turn.info``)
under those names, and the turn flags. Rates say in their docstring what they
count over; a rate with an empty denominator is 0.0.
"""
from __future__ import annotations

from math import comb

import numpy as np

from turnrl.envs.answers import normalize
from turnrl.types import Episode, Turn

#: metrics that get a 95% bootstrap interval in eval results (besides every succ@k and pass@k)
HEADLINE = ("self_correction_rate", "answer_change_rate", "repeated_answer_rate", "invalid_format_rate")


def solved_at(ep: Episode) -> int | None:
    """1-based attempt that solved the episode (live turns only), or None."""
    for k, t in enumerate(ep.live_turns, 1):
        if t.info.get("correct"):
            return k
    return None


def succ_at_k(episodes: list[Episode], max_k: int) -> dict[int, float]:
    """Succ@k: fraction of episodes solved within k attempts with feedback."""
    n = max(1, len(episodes))
    first = [solved_at(e) for e in episodes]
    return {k: sum(1 for s in first if s is not None and s <= k) / n for k in range(1, max_k + 1)}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples with c correct (Chen et al. 2021, arXiv 2107.03374)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _answer(t: Turn) -> str | None:
    a = t.info.get("answer")
    return None if a is None or not t.info.get("valid", True) else normalize(str(a))


def turn_counts(ep: Episode) -> dict[str, tuple[int, int]]:
    """(numerator, denominator) of each turn-level rate for one episode, so rates pool
    over episodes and bootstrap by resampling episodes."""
    turns = ep.live_turns
    wrong_then = [(a, b) for a, b in zip(turns, turns[1:]) if not a.info.get("correct")]
    retried = len(turns) > 1 and not turns[0].info.get("correct")
    changed = [(x, y) for x, y in ((_answer(a), _answer(b)) for a, b in wrong_then) if x is not None and y is not None]
    seen: set[str] = set()
    repeats = later = 0
    for i, t in enumerate(turns):
        a = _answer(t)
        if a is None:
            continue
        if i > 0:
            later += 1
            repeats += a in seen
        seen.add(a)
    return {
        # episodes wrong at attempt 1 and solved at a later attempt (over episodes wrong at
        # attempt 1 that got a second attempt)
        "self_correction_rate": (int(retried and solved_at(ep) is not None), int(retried)),
        # a different answer after feedback (over wrong turns followed by a turn, both with valid answers)
        "answer_change_rate": (sum(1 for x, y in changed if x != y), len(changed)),
        # an answer already given earlier in the episode (over valid answers at attempt >= 2)
        "repeated_answer_rate": (repeats, later),
        # turns the env found no parseable answer in (over all live turns)
        "invalid_format_rate": (sum(1 for t in turns if t.void), len(turns)),
        # retry turns (attempt >= 2) that are right (over retry turns)
        "retry_accuracy": (sum(1 for t in turns[1:] if t.info.get("correct")), len(turns) - 1 if turns else 0),
        "cut_by_length_rate": (sum(1 for t in turns if t.cut_by_length), len(turns)),
    }


def unique_answer_ratio(episodes: list[Episode]) -> float:
    """Mean over episodes with >= 1 valid answer of E/T (distinct / valid answers)."""
    ratios = []
    for e in episodes:
        answers = [a for a in map(_answer, e.live_turns) if a is not None]
        if answers:
            ratios.append(len(set(answers)) / len(answers))
    return sum(ratios) / len(ratios) if ratios else 0.0


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def episode_metrics(episodes: list[Episode], max_turns: int) -> dict[str, float]:
    turns = [t for e in episodes for t in e.live_turns]
    n_eps, n_turns = max(1, len(episodes)), max(1, len(turns))
    succ = succ_at_k(episodes, max_turns)
    solved = [s for s in map(solved_at, episodes) if s is not None]
    counts = [turn_counts(e) for e in episodes]
    out = {f"succ@{k}": v for k, v in succ.items()}
    out["multi_turn_gain"] = succ[max_turns] - succ[1]
    out["mean_attempts_to_solve"] = _ratio(sum(solved), len(solved))
    for name in counts[0] if counts else ():
        out[name] = _ratio(sum(c[name][0] for c in counts), sum(c[name][1] for c in counts))
    out.update({
        "unique_answer_ratio": unique_answer_ratio(episodes),
        "reward": sum(e.total_reward for e in episodes) / n_eps,
        "turns_per_episode": len(turns) / n_eps,
        "tokens_per_episode": sum(e.num_action_tokens for e in episodes) / n_eps,
        "latency_s_per_episode": sum(e.latency_s for e in episodes) / n_eps,
        "tokens_per_turn": sum(t.num_tokens for t in turns) / n_turns,
        "context_truncation_rate": sum(1 for e in episodes if e.truncated_by == "context") / n_eps,
    })
    if any("state_missing" in t.info for t in turns):  # markovian context: replies without a state block
        out["state_missing_rate"] = sum(1 for t in turns if t.info.get("state_missing")) / n_turns
    if any(t.context_ids is not None for t in turns):  # rebuilt contexts: how long the longest one grew
        out["peak_context_tokens"] = float(max((len(t.context_ids or []) for t in turns), default=0))
    if any("sim_tokens" in t.info for t in turns):  # a simulated user answered (MINT-style envs)
        out["simulator_tokens_per_episode"] = sum(t.info.get("sim_tokens", 0) for t in turns) / n_eps
        out["simulator_latency_s_per_episode"] = sum(t.info.get("sim_latency_s", 0.0) for t in turns) / n_eps
        out["simulator_errors"] = float(sum(1 for t in turns if t.info.get("sim_error")))
    return out


def bootstrap_ci(num: np.ndarray, den: np.ndarray | None = None, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` over resampled units
    (``den`` None: the mean of ``num``). Units are episodes or tasks; fixed seed, so
    the same data always gives the same interval (Efron & Tibshirani 1993, ch. 13)."""
    num = np.asarray(num, dtype=np.float64)
    if num.size == 0:
        return 0.0, 0.0
    idx = np.random.default_rng(seed).integers(0, num.size, size=(n_boot, num.size))
    if den is None:
        stats = num[idx].mean(axis=1)
    else:
        d = np.asarray(den, dtype=np.float64)[idx].sum(axis=1)
        stats = np.divide(num[idx].sum(axis=1), d, out=np.zeros(n_boot), where=d > 0)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def episode_intervals(episodes: list[Episode], max_turns: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals, resampling episodes, of every succ@k and the HEADLINE rates."""
    first = [solved_at(e) for e in episodes]
    out = {f"succ@{k}": bootstrap_ci(np.array([s is not None and s <= k for s in first]), seed=seed)
           for k in range(1, max_turns + 1)}
    counts = [turn_counts(e) for e in episodes]
    for name in HEADLINE:
        out[name] = bootstrap_ci(np.array([c[name][0] for c in counts]), np.array([c[name][1] for c in counts]), seed=seed)
    return out
