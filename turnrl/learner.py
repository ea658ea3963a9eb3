"""The learner: the policy's weights, the optimizer and one update per step.

``Learner.update(episodes)`` runs masks -> advantages -> ``ppo_epochs`` x ``minibatches``
optimizer steps; the trainer owns everything around it (sampling, logging, checkpoints,
evaluation). The same object runs in one process, or on every rank of an FSDP group
(:mod:`turnrl.scale.fsdp`), where each rank trains its share of the micro-batches.
"""
from __future__ import annotations

import copy
import math
import sys
from collections import defaultdict

import torch

from turnrl.algos import Aux, LossInputs, get_algorithm
from turnrl.algos.base import token_turn_ids
from turnrl.algos.logprobs import gold_beliefs, group_logprobs
from turnrl.algos.masks import apply_masks, token_keep
from turnrl.chat import ChatFormat
from turnrl.config import RunConfig
from turnrl.types import Episode


def _pad(rows: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)  # (B, T_max)


def bf16_supported() -> bool:
    """Whether this machine computes in bf16 natively (a CUDA GPU that supports it, or a
    CPU whose oneDNN has bf16 kernels: AVX-512 BF16 / AMX, or AVX-512 emulation)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_or_say(what: str) -> bool:
    """``bf16_supported()``; where not, one line saying ``what`` runs in fp32 instead."""
    if bf16_supported():
        return True
    print(f"turnrl: model.dtype = 'bf16': this machine has no native bf16 kernels (a CPU without AVX-512 or a "
          f"GPU without bf16); {what} in fp32", file=sys.stderr)
    return False


class MasterWeights:
    """``model.dtype = "bf16"``: the model holds bf16 parameters, so the sampler and the
    learner run the same bf16 computation (the ratio is 1 and the KL 0 at step 0, and both
    get bf16 matmuls); the optimizer steps fp32 copies (master weights) and each step's
    result is rounded into the model. Each micro-batch's gradient is added into the fp32
    copies' gradients right after its backward, so accumulation is fp32 too."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]  # before rounding
        model.to(torch.bfloat16)  # in place: self.params are the same Parameter objects

    def accumulate(self) -> None:
        for p, m in zip(self.params, self.masters):
            if p.grad is not None:
                # fp32 += bf16 converts each entry on the fly: a `.float()` copy first (540 MB over
                # SmolLM2-135M's weights) made this 177-274 ms per micro-batch against 107-158 (2 cores, by hand)
                m.grad = p.grad.float() if m.grad is None else m.grad.add_(p.grad)
                p.grad = None

    @torch.no_grad()
    def round_into_model(self) -> float:
        """Round the masters into the model; return the share of the trained weights whose
        bf16 value changed. With a small learning rate most steps are below bf16's spacing
        (2^-8 of a weight's size): the masters keep them until they add up, and a weight in
        the model moves only when its master crosses a rounding boundary."""
        changed, total = 0, 0
        for p, m in zip(self.params, self.masters):
            new = m.detach().to(p.dtype)
            # compared as 16-bit integers: bf16 `!=` converts both sides to fp32 first, which took
            # this whole step 192 ms for SmolLM2-135M against 90 (2 CPU cores). A weight going from
            # +0 to -0 counts as changed (its bits did).
            changed += int(torch.count_nonzero(new.view(torch.int16) != p.view(torch.int16)))
            total += p.numel()
            p.copy_(new)
        return changed / max(1, total)

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.masters]

    @torch.no_grad()
    def load_state_dict(self, masters: list[torch.Tensor]) -> None:
        for m, saved in zip(self.masters, masters):
            m.copy_(saved)
        self.round_into_model()


class Solo:
    """The learner's peers when it runs alone: nothing to coordinate. The FSDP group
    (:class:`turnrl.scale.fsdp.FSDPPeers`) puts the same hooks over ``world`` processes."""

    rank, world = 0, 1

    def wrap(self, model):  # FSDP: shard the model (after the reference copy is taken)
        return model

    def gather(self) -> None:  # FSDP: all-gather the weights before forward passes
        pass

    def sync_grads(self) -> None:  # FSDP: sum every rank's gradients into each rank's shard
        pass

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:  # FSDP: sums (max for *_max) over ranks
        return sums


class Learner:
    def __init__(self, cfg: RunConfig, model, chat: ChatFormat, peers=None):
        self.cfg, self.model, self.chat = cfg, model, chat
        self.peers = peers if peers is not None else Solo()
        self.master = None
        if cfg.model.dtype == "bf16" and bf16_or_say("training"):
            self.master = MasterWeights(model)
        self.algo = get_algorithm(cfg.algo.name)
        self.critic = self.algo.make_critic(model, cfg.algo) if self.algo.make_critic else None
        self.phases = self.algo.phases
        self._audited = False
        self.ref = None
        if self.algo.needs_ref(cfg.algo) and cfg.model.finetune == "full":
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        model = self.model = self.peers.wrap(model)
        # the optimizer steps the fp32 masters in bf16, the (possibly sharded) parameters otherwise
        self._opt_params = self.master.masters if self.master else [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self._opt_params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay,
                                     fused=True)  # one kernel for all parameters (CPU and CUDA)
        warm = cfg.train.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"model": dict(self.model.state_dict()), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict()}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        if self.master is not None:
            state["master"] = self.master.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        if self.master is not None:
            self.master.load_state_dict(state["master"])

    def close(self) -> None:  # the FSDP group stops its processes here
        pass

    # -- the update --------------------------------------------------------------------------
    def update(self, eps: list[Episode]) -> dict[str, float]:
        """Masks -> advantages -> ``ppo_epochs`` x ``minibatches`` optimizer steps (or one per
        phase). Advantages use every episode (a masked trajectory's reward still counts in
        its group); only kept turns are trained. Episodes whose env failed
        (``info["failed"]``, see ``rollout.fail_episode``) are left out entirely: an env
        error is no outcome of the policy, so they enter no group's statistics either."""
        acfg, algo = self.cfg.algo, self.algo
        n_failed = sum(1 for e in eps if e.info.get("failed"))
        if n_failed:
            eps = [e for e in eps if not e.info.get("failed")]
        keep, stats = apply_masks(eps, acfg, acfg.masks)
        stats = {**stats, "episodes_failed": float(n_failed)}
        train = [i for i, e in enumerate(eps) if e.num_action_tokens > 0 and any(keep[i])]
        stats.update({"episodes_masked": float(len(eps) - len(train)), "episodes_trained": float(len(train))})
        if not train:
            stats["update_skipped"] = 1.0
            return stats
        stats["update_skipped"] = 0.0
        self._audited = False
        self.peers.gather()
        aux = Aux(n_sampled=len(eps))
        if "belief" in algo.needs:
            aux.beliefs = gold_beliefs(self.model, eps, self.chat, self.cfg.train.logprob_chunk)
        multi = acfg.ppo_epochs * acfg.minibatches > 1 or self.phases is not None
        stale = self.cfg.scale.max_staleness > 0
        if multi or stale or self.critic is not None:
            # the behaviour policy: the learner before this update (ratio exactly 1 at the start)
            aux.old_logprobs, feats = self._learner_pass(eps, train, want_hidden=self.critic is not None)
            if self.critic is not None:
                stats.update(self.critic.prepare(eps, train, feats, aux, acfg))
            if stale:
                aux.behaviour_weight = self._behaviour_weights(eps, train, aux.old_logprobs)
        sums: dict[str, float] = defaultdict(float)
        grad_norms, n_steps = [], 0
        for phase in (self.phases(eps, acfg) if self.phases is not None else [None]):
            aux.phase = phase
            if phase is not None:
                aux.logprobs, _ = self._learner_pass(eps, train, want_hidden=False)
            adv = algo.advantages(eps, acfg, aux)
            for _ in range(acfg.ppo_epochs):
                for mb in self._minibatches(eps, train):
                    gn, part = self._optimizer_step(eps, mb, adv, keep, aux)
                    self._audited = True
                    grad_norms.append(gn)
                    n_steps += 1
                    for k, v in part.items():
                        sums[k] += v
        if self.critic is not None:
            stats.update(self.critic.update(acfg))
        n_tok = max(1.0, sums["tokens"])
        stats.update({
            "loss": sums["loss"] / max(1, n_steps), "grad_norm": max(grad_norms), "lr": self.sched.get_last_lr()[0],
            "kl": sums["kl"] / n_tok, "entropy": sums["entropy"] / n_tok, "clip_frac": sums["clipped"] / n_tok,
            "ratio_mean": sums["ratio"] / n_tok, "trained_tokens": sums["tokens"] / max(1, n_steps) * 1.0,
            "optimizer_steps": float(n_steps), "nan_skipped": float(sums["nan_skipped"] > 0),
        })
        if self.master is not None:  # share of the bf16 weights an optimizer step changed, on average
            stats["bf16_weights_changed"] = sums["bf16_weights_changed"] / max(1, n_steps)
        if sums["audit_tokens"]:  # sampler vs learner log-probs of the trained tokens, before any update
            stats["sampler_drift_mean"] = sums["audit_sum"] / sums["audit_tokens"]
            stats["sampler_drift_max"] = sums["audit_max"]
        return stats

    def _minibatches(self, eps: list[Episode], train: list[int]) -> list[list[int]]:
        """Whole groups, split into ``minibatches`` contiguous chunks of near-equal size."""
        groups: dict[int, list[int]] = {}
        for i in train:
            groups.setdefault(eps[i].group_id, []).append(i)
        glist = list(groups.values())
        n = self._n_minibatches = min(self.cfg.algo.minibatches, len(glist))
        bounds = [round(k * len(glist) / n) for k in range(n + 1)]
        return [[i for g in glist[bounds[k]:bounds[k + 1]] for i in g] for k in range(n)]

    def _optimizer_step(self, eps, idx: list[int], adv, keep, aux: Aux) -> tuple[float, dict[str, float]]:
        acfg = self.cfg.algo
        sub = [eps[i] for i in idx]
        n_tokens = sum(int(self._token_mask(eps[i], keep[i], aux.phase).sum()) for i in idx)
        norm = self.algo.norm(sub, acfg, round(aux.n_sampled / self._n_minibatches), n_tokens)
        agg = self.algo.agg(acfg)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = defaultdict(float)
        by_group: dict[int, list[int]] = {}
        for i in idx:
            by_group.setdefault(eps[i].group_id, []).append(i)
        glist = list(by_group.values())
        mg = self.cfg.train.micro_groups
        self.peers.gather()
        for g in range(self.peers.rank * mg, len(glist), self.peers.world * mg):  # FSDP: this rank's share
            micro = [i for grp in glist[g:g + mg] for i in grp]
            loss, part = self._micro_loss(eps, micro, adv, keep, aux, agg, norm)
            loss.backward()
            if self.master is not None:
                self.master.accumulate()
            for k, v in part.items():
                sums[k] = max(sums[k], v) if k == "audit_max" else sums[k] + v
        self.peers.sync_grads()
        sums = defaultdict(float, self.peers.reduce(sums))
        grad_norm = torch.nn.utils.clip_grad_norm_(self._opt_params, self.cfg.train.max_grad_norm)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)  # FSDP: a DTensor
        if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
            self.opt.zero_grad(set_to_none=True)  # NaN/inf guard: skip the update, keep the run
            sums["nan_skipped"] += 1
        else:
            self.opt.step()
            if self.master is not None:
                sums["bf16_weights_changed"] += self.master.round_into_model()
        self.sched.step()
        return grad_norm, sums

    def _micro_loss(self, eps, micro: list[int], adv, keep, aux: Aux, agg: str, norm: float):
        sub = [eps[i] for i in micro]
        chunk = self.cfg.train.logprob_chunk
        lps, ents = group_logprobs(self.model, sub, chunk, with_entropy=True)
        sampler = [torch.tensor([x for t in e.live_turns for x in t.action_logprobs]) for e in sub]
        if aux.old_logprobs is not None:
            old = [aux.old_logprobs[i] for i in micro]
        else:  # one epoch, one minibatch: the behaviour policy is the learner itself (ratio 1)
            old = [lp.detach() for lp in lps]
        tmask = [self._token_mask(e, keep[i], aux.phase) for e, i in zip(sub, micro)]
        mask = _pad(tmask)
        x = LossInputs(
            episodes=sub, logprobs=_pad(lps), old_logprobs=_pad(old), advantages=_pad([adv[i] for i in micro]),
            mask=mask, turn_ids=_pad([token_turn_ids(e) for e in sub], -1), agg=agg, norm=norm,
            ref_logprobs=_pad(self._ref_logprobs(sub)) if self.algo.needs_ref(self.cfg.algo) else None,
            behaviour_weight=_pad([aux.behaviour_weight[i] for i in micro]) if aux.behaviour_weight else None,
        )
        loss, extra = self.algo.loss(x, self.cfg.algo)
        with torch.no_grad():
            part = {"loss": float(loss), "tokens": float(mask.sum()), "entropy": float(sum(
                (e * m).sum() for e, m in zip(ents, tmask))), **extra}
            if not self._audited:  # token audit: only the first pass sees the sampler's policy
                diff = [(lp.detach() - s).abs() for lp, s in zip(lps, sampler) if len(s) == len(lp) and len(s)]
                if diff:
                    d = torch.cat(diff)
                    part.update({"audit_sum": float(d.sum()), "audit_tokens": float(d.numel()), "audit_max": float(d.max())})
        return loss, part

    def _behaviour_weights(self, eps, train: list[int], prox: list) -> list:
        """Per trained token, ``min(pi_prox / pi_behaviour, scale.is_cap)``: pi_prox is the
        learner before this update, pi_behaviour the sampler's log-probs (an older policy
        when rollouts ran ahead). AReaL's decoupled PPO, arXiv 2505.24298."""
        out: list = [None] * len(eps)
        for i in train:
            behaviour = torch.tensor([x for t in eps[i].live_turns for x in t.action_logprobs])
            if behaviour.shape != prox[i].shape:
                raise RuntimeError(f"episode {i} (seed {eps[i].seed}): the sampler returned {len(behaviour)} log-probs "
                                   f"for {len(prox[i])} trained tokens; scale.max_staleness > 0 needs the sampler's "
                                   "log-prob of every sampled token")
            out[i] = torch.exp(prox[i] - behaviour).clamp(max=self.cfg.scale.is_cap)
        return out

    @staticmethod
    def _token_mask(ep: Episode, keep_turns: list[bool], phase: int | None) -> torch.Tensor:
        """Trained tokens of ``ep``: kept turns, and only turn ``phase`` during a phase."""
        m = token_keep(ep, keep_turns)
        return m & (token_turn_ids(ep) == phase) if phase is not None else m

    @torch.no_grad()
    def _learner_pass(self, eps, idx: list[int], want_hidden: bool):
        """Learner log-probs (and hidden states) of the trained tokens of ``eps[idx]``, no grad;
        a list over all episodes (None where not computed)."""
        out: list = [None] * len(eps)
        feats: list = [None] * len(eps)
        self.peers.gather()
        self.model.eval()
        by_group: dict[int, list[int]] = {}
        for i in idx:
            by_group.setdefault(eps[i].group_id, []).append(i)
        for members in by_group.values():
            res = group_logprobs(self.model, [eps[i] for i in members], self.cfg.train.logprob_chunk,
                                 return_hidden=want_hidden)
            for k, i in enumerate(members):
                out[i] = res[0][k]
                if want_hidden:
                    feats[i] = res[2][k]
        return out, feats

    @torch.no_grad()
    def _ref_logprobs(self, eps):
        if self.ref is not None:
            return group_logprobs(self.ref, eps, self.cfg.train.logprob_chunk)[0]
        with self.model.disable_adapter():  # LoRA: the frozen base is the reference
            return group_logprobs(self.model, eps, self.cfg.train.logprob_chunk)[0]
