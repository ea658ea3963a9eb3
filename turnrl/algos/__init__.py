"""Algorithms: a small record of pure functions, registered by name.

Adding one is a new :class:`Algorithm` plus one line in ``ALGORITHMS``; the trainer
never branches on the algorithm's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from turnrl.algos.core import (aggregate, episode_returns, group_advantages, kl_k3, ppo_clip_token_loss,
                               top_std_keep, zero_variance_keep)
from turnrl.config import AlgoConfig
from turnrl.types import Episode


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantages: Callable[[list[Episode], AlgoConfig], torch.Tensor]  # episodes -> (N,)
    token_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AlgoConfig], tuple[torch.Tensor, dict]]
    loss_agg: Callable[[AlgoConfig], str]
    norm: Callable[[list[Episode], AlgoConfig], float]  # the step-wide normaliser of aggregate()


def _grpo_adv(eps: list[Episode], cfg: AlgoConfig) -> torch.Tensor:
    return group_advantages(episode_returns(eps), [e.group_id for e in eps], scale_by_std=cfg.scale_by_std)


def _dr_grpo_adv(eps: list[Episode], cfg: AlgoConfig) -> torch.Tensor:
    # Dr. GRPO: no std division (arXiv 2503.20783)
    return group_advantages(episode_returns(eps), [e.group_id for e in eps], scale_by_std=False)


def _ppo_token_loss(logprobs, old_logprobs, advantages, cfg: AlgoConfig):
    loss, clipped = ppo_clip_token_loss(logprobs, old_logprobs, advantages, cfg.clip_low, cfg.clip_high)
    return loss, {"clipped": clipped}


def _grpo_norm(eps: list[Episode], cfg: AlgoConfig) -> float:
    if cfg.loss_agg == "seq_mean":
        return float(len(eps))
    return float(max(1, sum(e.num_action_tokens for e in eps)))


ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm("grpo", _grpo_adv, _ppo_token_loss, lambda c: c.loss_agg, _grpo_norm),
    "dr_grpo": Algorithm("dr_grpo", _dr_grpo_adv, _ppo_token_loss, lambda c: "token_sum_norm",
                         lambda eps, c: float(c.max_tokens_norm * max(1, len(eps)))),
}


def group_filter(returns: torch.Tensor, group_ids: list[int], cfg: AlgoConfig) -> torch.Tensor:
    if cfg.filter == "zero_variance":
        return zero_variance_keep(returns, group_ids)
    if cfg.filter == "top_std":
        return top_std_keep(returns, group_ids, cfg.top_std_fraction)
    return torch.ones_like(returns, dtype=torch.bool)


__all__ = ["ALGORITHMS", "Algorithm", "group_filter", "aggregate", "kl_k3", "episode_returns", "group_advantages"]
