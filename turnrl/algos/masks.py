"""Masks and filters: one stage before the update.

Each is a pure function ``(episodes, cfg) -> keep`` where ``keep[i][k]`` says whether live
turn k of episode i is trained. Trajectory masks set a whole episode; group filters a whole
group. They run *after* advantages are computed: a masked trajectory's reward still enters
its group's statistics (SimpleTIR). ``apply_masks`` ANDs the chosen ones and counts, per
reason, the episodes each one removed entirely and the turns it removed.
"""
from __future__ import annotations

from typing import Callable

import torch

from turnrl.algos.core import episode_returns, top_std_keep, zero_variance_keep
from turnrl.types import Episode

Keep = list[list[bool]]


def _all(ep: Episode, value: bool) -> list[bool]:
    return [value] * len(ep.live_turns)


def void_turns(episodes: list[Episode], cfg) -> Keep:
    """SimpleTIR (arXiv 2509.02479): a trajectory with a void turn (no code and no answer)
    gets loss mask 0 as a whole; its reward still counts in the group statistics."""
    return [_all(e, not any(t.void for t in e.live_turns)) for e in episodes]


def over_turn(episodes: list[Episode], cfg) -> Keep:
    """Mini-o3 (arXiv 2509.07969): trajectories cut by the turn cap get loss mask 0 instead
    of being penalised."""
    return [_all(e, e.truncated_by != "max_turns") for e in episodes]


def overlong(episodes: list[Episode], cfg) -> Keep:
    """Overlong masking (DAPO, arXiv 2503.14476): a turn cut by the per-turn token limit is
    not trained; the episode's other turns are."""
    return [[not t.cut_by_length for t in e.live_turns] for e in episodes]


def repeat(episodes: list[Episode], cfg) -> Keep:
    """Trajectories that give a valid answer they already gave (the repetition UFO, arXiv
    2507.14295, targets) are left out of the update."""
    out = []
    for e in episodes:
        answers = [t.info.get("answer") for t in e.live_turns if not t.void and t.info.get("answer") is not None]
        out.append(_all(e, len(answers) == len(set(answers))))
    return out


def zero_variance(episodes: list[Episode], cfg) -> Keep:
    """DAPO dynamic sampling (arXiv 2503.14476) / StarPO-S: drop groups whose returns are
    all equal. Their advantages are zero under the estimators that centre episode returns on
    the group (the default mask there); per-turn and critic estimators can give such a group
    non-zero advantages, so it is not their default (``Algorithm.default_masks``)."""
    keep = zero_variance_keep(episode_returns(episodes), [e.group_id for e in episodes])
    return [_all(e, bool(k)) for e, k in zip(episodes, keep)]


def top_variance(episodes: list[Episode], cfg) -> Keep:
    """StarPO-S (RAGEN, arXiv 2504.20073) / RAGEN-2 SNR-aware filtering (arXiv 2604.06268):
    keep the ``top_variance_fraction`` of groups with the highest return variance (at least
    one group; ties keep the lower group id)."""
    keep = top_std_keep(episode_returns(episodes), [e.group_id for e in episodes], cfg.top_variance_fraction)
    return [_all(e, bool(k)) for e, k in zip(episodes, keep)]


MASKS: dict[str, Callable[[list[Episode], object], Keep]] = {
    "void": void_turns, "over_turn": over_turn, "overlong": overlong, "repeat": repeat,
    "zero_variance": zero_variance, "top_variance": top_variance,
}


def apply_masks(episodes: list[Episode], cfg, names: list[str]) -> tuple[Keep, dict[str, float]]:
    """AND of the named masks; counts ``masked_<reason>`` (episodes it removed entirely) and
    ``masked_turns_<reason>`` (turns it removed) per mask, independently of the others."""
    keep = [_all(e, True) for e in episodes]
    counts: dict[str, float] = {}
    for name in names:
        m = MASKS[name](episodes, cfg)
        counts[f"masked_{name}"] = float(sum(1 for e, k in zip(episodes, m) if e.live_turns and not any(k)))
        counts[f"masked_turns_{name}"] = float(sum(k.count(False) for k in m))
        keep = [[a and b for a, b in zip(k0, k1)] for k0, k1 in zip(keep, m)]
    return keep, counts


def token_keep(ep: Episode, keep_turns: list[bool]) -> torch.Tensor:
    """Per-turn keep flags -> per trained token, shape (n_tokens,)."""
    lens = [len(t.action_ids) for t in ep.live_turns]
    return torch.repeat_interleave(torch.tensor(keep_turns, dtype=torch.bool), torch.tensor(lens, dtype=torch.long))
