"""REFUEL (arXiv 2410.04612): regress the difference of two rollouts' log-ratio onto the
difference of their returns.

Two rollouts of one group share a prefix (the prompt, or the prompt plus ``h`` replayed
turns of a branch group: ``rollout.branch_groups``) and diverge after it. With
``D_i = sum over y_i's trained tokens of (log pi(y_i|x) - log pi_old(y_i|x))`` and the
returns ``R_i`` (undiscounted sum of the live turns' rewards), the loss is

    mean over pairs of ((D_1 - D_2) - eta * (R_1 - R_2))**2,   eta = refuel_eta.

Pairs are consecutive rows of the same group in a micro-batch (micro-batches hold whole
groups): rows 0 and 1, 2 and 3, ... of each group. ``group_size`` must be even; a row left
without a partner (a group that lost an episode to a mask) is not trained and is counted
in ``unpaired``. The divisor is the step's number of pairs (``pair_norm``), so
micro-batches add up to the mean over pairs. With ``kl_coef > 0`` the summed k3 KL of each
pair's tokens to the reference is added, averaged over pairs the same way.
"""
from __future__ import annotations

import torch

from turnrl.algos.base import LossInputs, groups_of
from turnrl.algos.core import kl_k3


def pairs_of(group_ids: list[int]) -> tuple[list[tuple[int, int]], int]:
    """Consecutive rows of each group, ``(row_a, row_b)``; and how many rows had no partner."""
    out, unpaired = [], 0
    by_group: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids):
        by_group.setdefault(g, []).append(row)
    for rows in by_group.values():
        out += [(rows[k], rows[k + 1]) for k in range(0, len(rows) - 1, 2)]
        unpaired += len(rows) % 2
    return out, unpaired


def pair_norm(episodes, cfg, n_sampled: int, n_tokens: int) -> float:
    """The number of pairs the update trains (at least 1)."""
    return float(max(1, sum(len(idx) // 2 for idx in groups_of(episodes).values())))


def refuel_loss(x: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    pairs, unpaired = pairs_of([e.group_id for e in x.episodes])
    m = x.mask.to(x.logprobs.dtype)
    D = ((x.logprobs - x.old_logprobs) * m).sum(dim=1)  # (B,)
    R = x.advantages[:, 0]  # returns_only: the episode's return on every token
    kl = torch.zeros_like(x.logprobs)
    if x.ref_logprobs is not None:
        kl = kl_k3(x.logprobs, x.ref_logprobs)
    kl_rows = (kl * m).sum(dim=1)
    if pairs:
        a = torch.tensor([p[0] for p in pairs])
        b = torch.tensor([p[1] for p in pairs])
        sq = ((D[a] - D[b]) - cfg.refuel_eta * (R[a] - R[b])) ** 2
        loss = sq.sum() / x.norm
        if x.ref_logprobs is not None:
            loss = loss + cfg.kl_coef * (kl_rows[a] + kl_rows[b]).sum() / x.norm
        paired = torch.zeros(len(x.episodes), dtype=torch.bool)
        paired[a], paired[b] = True, True
    else:
        loss = (x.logprobs * 0.0).sum()  # keeps the graph: backward works, gradient 0
        paired = torch.zeros(len(x.episodes), dtype=torch.bool)
    with torch.no_grad():
        pm = m * paired[:, None].to(m.dtype)
        stats = {"kl": float((kl * pm).sum()), "clipped": 0.0,
                 "ratio": float((torch.exp(x.logprobs - x.old_logprobs) * pm).sum()),
                 "pairs": float(len(pairs)), "unpaired": float(unpaired)}
    return loss, stats
