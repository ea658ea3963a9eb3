"""SeeUPO (arXiv 2602.06554): critic-free, sequence-level, turn by turn in reverse order.

A multi-turn episode is read as a chain of single-turn bandits, one per turn index. The
update runs one optimizer pass per turn index, last turn first (backward induction); the
pass for turn t credits each episode's turn t with a group-relative advantage of its
return from turn t on, computed under the later turns *as already updated*:

- ``G_{T-1} = r_{T-1}`` for the episode's last live turn, and
  ``G_t = r_t + rho_{t+1} * G_{t+1}`` (gamma = 1), where
  ``rho_j = clip(exp(sum over turn j's tokens of (logprobs - old_logprobs)), 1 - c, 1 + c)``
  is the sequence-level importance ratio of turn j under the updated policy
  (``aux.logprobs``, recomputed by the trainer before each pass) against the policy that
  sampled it (``aux.old_logprobs``); c = ``seeupo_clip``. In the first pass (the last turn)
  no later turn exists and every ratio would be 1.
- advantage of turn t = ``G_t - mean{G_t^j : episode j of the group has a turn t}``
  (GRAE: the group mean *including* the episode itself, no std division), broadcast over
  turn t's tokens; every other token gets 0 (the trainer trains only turn t's tokens in
  that pass).

Episodes the update does not train (masked) have no learner log-probs; their later turns
count with ratio 1 in their group's baseline.
"""
from __future__ import annotations

import math

import torch

from turnrl.algos.base import Aux, broadcast, groups_of, turn_lengths
from turnrl.types import Episode


def phases(episodes: list[Episode], cfg) -> list[int]:
    """Live-turn indices from the largest any episode has down to 0."""
    longest = max((len(e.live_turns) for e in episodes), default=0)
    return list(range(longest - 1, -1, -1))


def turn_ratios(ep: Episode, logprobs, old_logprobs, clip: float) -> list[float]:
    """``rho_j`` of every live turn j of ``ep`` (1.0 for all when no log-probs are given)."""
    lens = turn_lengths(ep)
    if logprobs is None or old_logprobs is None:
        return [1.0] * len(lens)
    if len(logprobs) != sum(lens) or len(old_logprobs) != sum(lens):
        raise ValueError(f"seeupo: {len(logprobs)} log-probs for an episode with {sum(lens)} trained tokens")
    out, pos = [], 0
    for n in lens:
        s = float((logprobs[pos:pos + n] - old_logprobs[pos:pos + n]).sum())
        pos += n
        out.append(min(max(math.exp(min(s, 50.0)), 1.0 - clip), 1.0 + clip))
    return out


def returns_from(rewards: list[float], ratios: list[float], t: int) -> float:
    """``G_t = r_t + rho_{t+1} G_{t+1}``, gamma = 1."""
    g = 0.0
    for j in range(len(rewards) - 1, t - 1, -1):
        g = rewards[j] + (ratios[j + 1] * g if j + 1 < len(rewards) else 0.0)
    return g


def seeupo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    t = aux.phase
    if t is None:
        raise ValueError("seeupo updates turn by turn: aux.phase (the turn index of this pass) is not set")
    G: list[float | None] = []
    for i, e in enumerate(episodes):
        rewards = [float(x.reward) for x in e.live_turns]
        if len(rewards) <= t:
            G.append(None)
            continue
        lp = aux.logprobs[i] if aux.logprobs is not None else None
        old = aux.old_logprobs[i] if aux.old_logprobs is not None else None
        G.append(returns_from(rewards, turn_ratios(e, lp, old, cfg.seeupo_clip), t))
    out = []
    groups = groups_of(episodes)
    for i, e in enumerate(episodes):
        n = len(e.live_turns)
        if G[i] is None:
            out.append(broadcast([0.0] * n, e))
            continue
        peers = [G[j] for j in groups[e.group_id] if G[j] is not None]
        per_turn = [0.0] * n
        per_turn[t] = G[i] - sum(peers) / len(peers)
        out.append(broadcast(per_turn, e))
    return out
