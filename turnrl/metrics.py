"""Turn-level metrics of multi-attempt episodes (UFO, arXiv 2507.14295)."""
from __future__ import annotations

from math import comb

from turnrl.types import Episode


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


def unique_answer_ratio(episodes: list[Episode]) -> float:
    """Mean over episodes with >= 1 valid answer of E/T (distinct / valid answers)."""
    ratios = []
    for e in episodes:
        answers = [t.info.get("answer") for t in e.live_turns if t.info.get("valid")]
        if answers:
            ratios.append(len(set(map(str, answers))) / len(answers))
    return sum(ratios) / len(ratios) if ratios else 0.0


def episode_metrics(episodes: list[Episode], max_turns: int) -> dict[str, float]:
    turns = [t for e in episodes for t in e.live_turns]
    n_eps, n_turns = max(1, len(episodes)), max(1, len(turns))
    succ = succ_at_k(episodes, max_turns)
    solved = [s for s in map(solved_at, episodes) if s is not None]
    retries = [t for e in episodes for t in e.live_turns[1:]]
    out = {f"succ@{k}": v for k, v in succ.items()}
    out.update({
        "multi_turn_gain": succ[max_turns] - succ[1],
        "mean_attempts_to_solve": sum(solved) / len(solved) if solved else 0.0,
        "unique_answer_ratio": unique_answer_ratio(episodes),
        "retry_accuracy": sum(1 for t in retries if t.info.get("correct")) / len(retries) if retries else 0.0,
        "invalid_format_rate": sum(1 for t in turns if t.void) / n_turns,
        "cut_by_length_rate": sum(1 for t in turns if t.cut_by_length) / n_turns,
        "reward": sum(e.total_reward for e in episodes) / n_eps,
        "turns_per_episode": len(turns) / n_eps,
        "action_tokens_per_episode": sum(e.num_action_tokens for e in episodes) / n_eps,
        "context_truncation_rate": sum(1 for e in episodes if e.truncated_by == "context") / n_eps,
    })
    return out
