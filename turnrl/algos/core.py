"""Pure functions for GRPO-family algorithms: returns, advantages, filters, losses.

No I/O, no globals: episodes or tensors in, tensors out.
"""
from __future__ import annotations

import math

import torch

from turnrl.types import Episode


def episode_returns(episodes: list[Episode]) -> torch.Tensor:
    """Undiscounted sum of the turn rewards of each live turn, shape (N,)."""
    return torch.tensor([sum(t.reward for t in ep.live_turns) for ep in episodes], dtype=torch.float32)


def group_advantages(returns: torch.Tensor, group_ids: list[int], scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: ``(R - mean_group) / (std_group + eps)`` (arXiv 2402.03300); with
    ``scale_by_std=False`` no std division, as in Dr. GRPO (arXiv 2503.20783). std is the
    population std (ddof=0). Shape (N,) -> (N,)."""
    gid = torch.tensor(group_ids)
    adv = torch.zeros_like(returns)
    for g in gid.unique():
        m = gid == g
        r = returns[m]
        a = r - r.mean()
        if scale_by_std:
            a = a / (r.std(unbiased=False) + eps)
        adv[m] = a
    return adv


def zero_variance_keep(returns: torch.Tensor, group_ids: list[int]) -> torch.Tensor:
    """DAPO dynamic sampling / StarPO-S: drop groups whose returns are all equal (they
    carry zero advantage). Returns a bool keep-mask (N,)."""
    gid = torch.tensor(group_ids)
    keep = torch.ones_like(returns, dtype=torch.bool)
    for g in gid.unique():
        m = gid == g
        if returns[m].max() - returns[m].min() < 1e-9:
            keep[m] = False
    return keep


def top_std_keep(returns: torch.Tensor, group_ids: list[int], fraction: float) -> torch.Tensor:
    """RAGEN StarPO-S: keep the ``fraction`` of groups with the highest return std, rounded
    down (at least one group: 0.25 of 6, 10 and 14 groups keeps 1, 2 and 3). Ties keep the
    earlier group. Bool keep-mask (N,)."""
    gid = torch.tensor(group_ids)
    groups = gid.unique().tolist()
    stds = [float(returns[gid == g].std(unbiased=False)) for g in groups]
    n_keep = max(1, math.floor(fraction * len(groups) + 1e-9))  # + 1e-9: 0.29 * 100 is 28.999...
    order = sorted(range(len(groups)), key=lambda i: (-stds[i], i))[:n_keep]
    kept = {groups[i] for i in order}
    return torch.tensor([int(g) in kept for g in gid.tolist()])


def ppo_clip_token_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss with separate bounds ("clip-higher", DAPO arXiv 2503.14476):
    ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)``. Returns (loss, clipped) (same shape)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref), per token: ``exp(d) - d - 1``, d = ref - pi."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, mode: str, norm: float) -> torch.Tensor:
    """Sum a (B, T) per-token loss over ``mask`` and divide by ``norm``.

    The caller picks ``norm`` over the *whole* step so micro-batches add up exactly:
    ``token_mean``: norm = action tokens in the step (DAPO); ``seq_mean``: each row is
    first averaged over its own tokens, norm = sequences in the step (GRPO);
    ``token_sum_norm``: norm = a constant (Dr. GRPO's max length)."""
    masked = token_loss * mask
    if mode == "seq_mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / norm
    if mode in ("token_mean", "token_sum_norm"):
        return masked.sum() / norm
    raise ValueError(f"unknown loss aggregation {mode!r}")
