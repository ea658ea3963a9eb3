"""Advantage estimators: pure functions ``(episodes, cfg, aux) -> list[Tensor]``, one tensor
per episode with one value per trained action token (see :mod:`turnrl.algos.base`).

Rewards are per turn (``Turn.reward``); only live turns count (replayed RISE prefixes are
context). Groups are the episodes sharing ``group_id`` (same task and seed).
"""
from __future__ import annotations

import torch

from turnrl.algos.base import Aux, broadcast, groups_of
from turnrl.algos.core import episode_returns, group_advantages
from turnrl.types import Episode


def _per_episode(values: torch.Tensor, episodes: list[Episode]) -> list[torch.Tensor]:
    return [broadcast([float(v)] * len(e.live_turns), e) for v, e in zip(values, episodes)]


def _turn_rewards(ep: Episode) -> list[float]:
    return [float(t.reward) for t in ep.live_turns]


def discounted(rewards: list[float], gamma: float) -> list[float]:
    """``G_t = sum_{j>=t} gamma**(j-t) r_j`` for every t."""
    out, g = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


# -- trajectory level --------------------------------------------------------------------

def grpo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """GRPO (arXiv 2402.03300): ``(R - mean_group) / (std_group + eps)`` on every token."""
    adv = group_advantages(episode_returns(episodes), [e.group_id for e in episodes], scale_by_std=cfg.scale_by_std)
    return _per_episode(adv, episodes)


def dr_grpo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """Dr. GRPO (arXiv 2503.20783): ``R - mean_group``, no std division."""
    adv = group_advantages(episode_returns(episodes), [e.group_id for e in episodes], scale_by_std=False)
    return _per_episode(adv, episodes)


def rloo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """RLOO (arXiv 2402.14740): ``R_i - mean_{j != i} R_j`` within the group (leave one out);
    a group of one gets 0."""
    r = episode_returns(episodes)
    adv = torch.zeros_like(r)
    for idx in groups_of(episodes).values():
        if len(idx) > 1:
            g = r[idx]
            adv[idx] = g - (g.sum() - g) / (len(idx) - 1)
    return _per_episode(adv, episodes)


def reinforce_pp(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """REINFORCE++ with baseline (arXiv 2501.03262): subtract the group mean return, then
    whiten over every trained token of the batch (global mean and std, not per group)."""
    per_ep = dr_grpo(episodes, cfg, aux)
    flat = torch.cat(per_ep) if per_ep else torch.zeros(0)
    if flat.numel() < 2:
        return per_ep
    mean, std = flat.mean(), flat.std(unbiased=False)
    return [(a - mean) / (std + 1e-6) for a in per_ep]


# -- turn level --------------------------------------------------------------------------

def turn_returns(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """Per-turn discounted returns ``G_t = sum_{j>=t} gamma**(j-t) r_j`` (gamma = turn_gamma)
    with a leave-one-out baseline per turn index: turn t of episode i is credited
    ``G_t^i - mean{G_t^j : j != i in the group, episode j has a turn t}`` (0 baseline when no
    other episode reached turn t). No std division.

    Why this variant is unbiased when episodes differ in length: a baseline only biases the
    policy gradient if it depends on the episode's own actions. Normalising over the turns
    at index t *including* the episode itself (or dividing by a std that includes it) makes
    the baseline depend on whether and how the policy reached turn t — the bias verl RFC
    #7244 describes when the policy decides when to stop. Here episode i's baseline is built
    only from the other, independently sampled episodes of its group, so
    ``E[grad log pi(a_t|s_t) * b] = 0`` holds at every turn, whatever the lengths."""
    gamma = cfg.turn_gamma
    G = [discounted(_turn_rewards(e), gamma) for e in episodes]
    out = []
    groups = groups_of(episodes)
    for i, e in enumerate(episodes):
        peers = [j for j in groups[e.group_id] if j != i]
        adv = []
        for t, g in enumerate(G[i]):
            others = [G[j][t] for j in peers if len(G[j]) > t]
            adv.append(g - (sum(others) / len(others) if others else 0.0))
        out.append(broadcast(adv, e))
    return out


def gigpo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """GiGPO (arXiv 2505.10978): episode advantage as GRPO, plus a step advantage. Turns of a
    group taken from the same anchor state (``Turn.state``, from ``Env.state()``) form a step
    group; each turn's discounted return (gamma = gigpo_gamma, 0.95) is normalised within its
    step group, ``(G - mean) / (std + eps)`` (0 for a step group of one). Final advantage =
    episode advantage + gigpo_step_weight * step advantage."""
    ep_adv = group_advantages(episode_returns(episodes), [e.group_id for e in episodes], scale_by_std=True)
    G = [discounted(_turn_rewards(e), cfg.gigpo_gamma) for e in episodes]
    buckets: dict[tuple, list[tuple[int, int]]] = {}
    for i, e in enumerate(episodes):
        for t, turn in enumerate(e.live_turns):
            if turn.state is None:
                raise ValueError(f"gigpo: turn {t} of episode {i} (group {e.group_id}) has no anchor state; "
                                 "the env must implement Env.state()")
            buckets.setdefault((e.group_id, turn.state), []).append((i, t))
    step_adv = [[0.0] * len(g) for g in G]
    for members in buckets.values():
        if len(members) < 2:
            continue
        vals = torch.tensor([G[i][t] for i, t in members])
        norm = (vals - vals.mean()) / (vals.std(unbiased=False) + 1e-6)
        for (i, t), v in zip(members, norm.tolist()):
            step_adv[i][t] = v
    w = cfg.gigpo_step_weight
    return [broadcast([float(ep_adv[i]) + w * s for s in step_adv[i]], e) for i, e in enumerate(episodes)]


def igpo(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """IGPO (arXiv 2510.14967): ``aux.beliefs[i][k]`` is the policy's belief in the gold answer
    (geometric-mean probability of its tokens, teacher-forced) in the context live turn k was
    sampled in. Turn reward of turn k < last: the information gain ``b_{k+1} - b_k``; last
    turn: the outcome (the episode's return). All turn rewards of a group are normalised
    together, ``(r - mean) / (std + eps)``, then summed forward with gamma = igpo_gamma to give
    each turn's advantage, broadcast over its tokens."""
    if aux.beliefs is None:
        raise ValueError("igpo needs per-turn beliefs (aux.beliefs)")
    rewards = []
    for e, b in zip(episodes, aux.beliefs):
        n = len(e.live_turns)
        if len(b) < n:
            raise ValueError(f"igpo: {len(b)} beliefs for an episode with {n} live turns")
        outcome = sum(_turn_rewards(e))
        rewards.append([b[k + 1] - b[k] for k in range(n - 1)] + [outcome])
    norm = [list(r) for r in rewards]
    for idx in groups_of(episodes).values():
        flat = torch.tensor([x for i in idx for x in rewards[i]])
        if flat.numel() < 2:  # one turn reward in the group: centred on itself, 0 (as GRPO's group of one)
            for i in idx:
                norm[i] = [0.0] * len(rewards[i])
            continue
        mean, std = float(flat.mean()), float(flat.std(unbiased=False))
        for i in idx:
            norm[i] = [(x - mean) / (std + 1e-6) for x in rewards[i]]
    return [broadcast(discounted(r, cfg.igpo_gamma), e) for r, e in zip(norm, episodes)]


def returns_only(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """The raw episode return on every token (REFUEL's loss takes rewards, not advantages)."""
    return _per_episode(episode_returns(episodes), episodes)
