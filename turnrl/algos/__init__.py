"""Algorithms: records of pure functions, registered by name (see :mod:`turnrl.algos.base`).

Adding one is a pure advantage function, one ``register(...)`` line below and one
hand-computed test; the trainer and the config never branch on an algorithm's name.
"""
from __future__ import annotations

import torch

from turnrl.algos import estimators as est
from turnrl.algos import critics
from turnrl.algos import refuel, seeupo
from turnrl.algos.base import ALGORITHMS, Algorithm, Aux, LossInputs, get_algorithm, register
from turnrl.algos.core import aggregate, episode_returns, group_advantages, kl_k3, ppo_clip_token_loss


#: what the PPO-clip loss reads (every algorithm built on ``ppo_loss``)
PPO_FIELDS = ("clip_low", "clip_high", "loss_agg")


def ppo_loss(x: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip with separate bounds (DAPO clip-higher, arXiv 2503.14476) on the estimator's
    advantages, plus ``kl_coef`` x k3 KL to the frozen reference when kl_coef > 0."""
    token_loss, clipped = ppo_clip_token_loss(x.logprobs, x.old_logprobs, x.advantages, cfg.clip_low, cfg.clip_high)
    if x.behaviour_weight is not None:
        # decoupled PPO (AReaL, arXiv 2505.24298): clip against the proximal policy
        # (the learner before this update), reweight by pi_prox / pi_behaviour, truncated
        token_loss = token_loss * x.behaviour_weight
    loss = aggregate(token_loss, x.mask, x.agg, x.norm)
    kl = torch.zeros_like(x.logprobs)
    if x.ref_logprobs is not None:
        kl = kl_k3(x.logprobs, x.ref_logprobs)
        loss = loss + cfg.kl_coef * aggregate(kl, x.mask, x.agg, x.norm)
    with torch.no_grad():
        m = x.mask
        stats = {"kl": float((kl * m).sum()), "clipped": float((clipped & m).sum()),
                 "ratio": float((torch.exp(x.logprobs - x.old_logprobs) * m).sum())}
    return loss, stats


def token_norm(episodes, cfg, n_sampled: int, n_tokens: int) -> float:
    """``token_mean``: the tokens trained by this optimizer step (after masks; during a SeeUPO
    phase, that turn's); ``seq_mean``: its sequences."""
    if cfg.loss_agg == "seq_mean":
        return float(max(1, len(episodes)))
    return float(max(1, n_tokens))


def dr_grpo_norm(episodes, cfg, n_sampled: int, n_tokens: int) -> float:
    """Dr. GRPO's constant: ``max_tokens_norm`` x the episodes *sampled* for the update, so it
    does not change with how many groups a filter keeps."""
    return float(cfg.max_tokens_norm * max(1, n_sampled))


def _grpo_like(name: str, paper: str, fn, reads=(), needs=(), summary: str = "",
               default_masks=("zero_variance",)) -> Algorithm:
    return Algorithm(name, paper, fn, ppo_loss, token_norm, lambda c: c.loss_agg,
                     reads=frozenset({*PPO_FIELDS, *reads}), needs=frozenset(needs), summary=summary,
                     corrects_staleness=True, default_masks=tuple(default_masks))


register(_grpo_like("grpo", "2402.03300", est.grpo, reads=("scale_by_std",),
                    summary="trajectory-level group-normalised return (default)"))
register(Algorithm("dr_grpo", "2503.20783", est.dr_grpo, ppo_loss, dr_grpo_norm, lambda c: "token_sum_norm",
                   reads=frozenset({"clip_low", "clip_high", "max_tokens_norm"}), summary="GRPO without std division, constant normaliser",
                   corrects_staleness=True))
register(_grpo_like("rloo", "2402.14740", est.rloo, summary="leave-one-out group baseline"))
register(_grpo_like("reinforce_pp", "2501.03262", est.reinforce_pp,
                    summary="REINFORCE++ with group baseline, batch-whitened"))
register(_grpo_like("turn_returns", "", est.turn_returns, reads=("turn_gamma",),
                    summary="per-turn discounted returns, leave-one-out baseline per turn index", default_masks=()))
register(_grpo_like("gigpo", "2505.10978", est.gigpo, reads=("gigpo_gamma", "gigpo_step_weight"), needs=("state",),
                    summary="episode advantage + anchor-state step advantage", default_masks=()))
register(_grpo_like("igpo", "2510.14967", est.igpo, reads=("igpo_gamma",), needs=("belief", "gold"),
                    summary="information-gain turn rewards (teacher-forced belief in the gold answer)", default_masks=()))
register(Algorithm("seeupo", "2602.06554", seeupo.seeupo, ppo_loss, token_norm, lambda c: c.loss_agg,
                   reads=frozenset({*PPO_FIELDS, "seeupo_clip"}), needs=frozenset({"phases"}), phases=seeupo.phases,
                   summary="turn by turn, last turn first; group-mean baseline of returns under the updated later turns",
                   corrects_staleness=True, default_masks=()))
register(Algorithm("refuel", "2410.04612", est.returns_only, refuel.refuel_loss, refuel.pair_norm,
                   lambda c: "token_sum_norm", reads=frozenset({"refuel_eta"}), needs=frozenset({"pairs"}),
                   summary="regress the log-ratio difference of two rollouts sharing a prefix onto eta x their return gap"))
register(Algorithm("gae", "2504.20073", critics.gae, ppo_loss, token_norm, lambda c: c.loss_agg,
                   reads=frozenset({*PPO_FIELDS, *critics.GAE_FIELDS}), needs=frozenset({"critic"}),
                   make_critic=critics.ValueCritic.build,
                   summary="RAGEN bi-level GAE: value head on hidden states, GAE over tokens and turns, whitened",
                   corrects_staleness=True, default_masks=()))
register(Algorithm("archer", "2402.19446", critics.archer, ppo_loss, token_norm, lambda c: c.loss_agg,
                   reads=frozenset({*PPO_FIELDS, *critics.ARCHER_FIELDS}), needs=frozenset({"critic"}),
                   make_critic=critics.UtteranceCritic.build,
                   summary="ArCHer: off-policy double Q/V utterance critic, advantage min Q - min V per turn",
                   corrects_staleness=True, default_masks=()))

__all__ = ["ALGORITHMS", "Algorithm", "Aux", "LossInputs", "get_algorithm", "register", "ppo_loss", "token_norm",
           "aggregate", "kl_k3", "episode_returns", "group_advantages"]
