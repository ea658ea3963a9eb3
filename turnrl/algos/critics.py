"""Critic-based credit assignment: RAGEN's bi-level GAE and ArCHer's utterance-level critic.

Both critics are small MLPs on the policy's *detached* hidden states (``feats[i]``: the
hidden state that predicts each trained token of episode i, from the trainer's learner
pass), trained with their own Adam optimizer (``critic_lr``, ``critic_epochs`` full-batch
steps per training step). No gradient reaches the policy. Their ``state_dict`` carries the
optimizer state and (ArCHer) the replay buffer, so a resumed run equals an uninterrupted
one.

- ``gae`` (RAGEN, arXiv 2504.20073): a value head V on the feature before each trained
  token; :func:`bilevel_gae` runs GAE over tokens within a turn and over turns across the
  boundary; advantages are whitened over the trained tokens of the step.
- ``archer`` (arXiv 2402.19446): double Q(s, a) and double V(s) heads with soft-updated
  target copies, trained off-policy on a replay buffer of utterance transitions; the
  advantage of an utterance is ``min(Q1, Q2)(s, a) - min(V1, V2)(s)``, on each of its tokens.

A non-finite critic output makes every advantage of the step NaN, so the trainer's NaN
guard skips the policy update of that step (logged as ``nan_skipped``); a critic step
whose own loss is non-finite is skipped (``critic_nan_skipped``).
"""
from __future__ import annotations

import copy
from collections import deque

import torch
from torch import nn

from turnrl.algos.base import Aux, Critic, broadcast, turn_lengths
from turnrl.types import Episode

#: ``[algo]`` fields each critic algorithm reads (besides ``loss_agg`` and the common ones)
GAE_FIELDS = ("gae_gamma", "gae_lambda_turn", "gae_lambda_token", "critic_lr", "critic_epochs")
ARCHER_FIELDS = ("archer_gamma", "archer_tau", "replay_steps", "critic_lr", "critic_epochs")


def _turn_rewards(ep: Episode) -> list[float]:
    return [float(t.reward) for t in ep.live_turns]


def _all_nan_if_any_nan(advs: list[torch.Tensor]) -> list[torch.Tensor]:
    """One non-finite advantage poisons the whole step: every optimizer step's loss is then
    NaN and the trainer's guard skips it (not only the micro-batch that held it)."""
    if all(bool(torch.isfinite(a).all()) for a in advs):
        return advs
    return [torch.full_like(a, float("nan")) for a in advs]


# -- pure functions ----------------------------------------------------------------------

def bilevel_gae(values: torch.Tensor, turn_lens: list[int], rewards: list[float], gamma: float,
                lam_turn: float, lam_token: float) -> torch.Tensor:
    """Bi-level GAE (RAGEN, arXiv 2504.20073) of one episode; values (n_tokens,) -> advantages (n_tokens,).

    ``values[k]``: V of the state before trained token k (tokens of the live turns, in
    order). Within a turn: discount 1, ``delta_k = V_{k+1} - V_k`` and
    ``A_k = delta_k + lam_token * A_{k+1}``. The last token of turn t carries the turn
    reward and bootstraps from the first token of turn t+1:
    ``delta = r_t + gamma * V_first(t+1) - V_k`` and ``A_k = delta + gamma * lam_turn * A_first(t+1)``.
    The last turn ends the episode (terminal value 0). Returns (the critic's targets) are
    ``A + values``. A turn without tokens passes its reward back to the previous turn's
    boundary, one more ``gamma`` away."""
    if len(values) != sum(turn_lens) or len(rewards) != len(turn_lens):
        raise ValueError(f"bilevel_gae: {len(values)} values, {len(rewards)} rewards for turns of {turn_lens} tokens")
    v = values.detach().float().tolist()
    adv = [0.0] * len(v)
    ends = torch.tensor(turn_lens).cumsum(0).tolist()
    # what follows the current turn's last token: reward r_next + g_next * (value v_next, advantage a_next)
    r_next, g_next, v_next, a_next = 0.0, 0.0, 0.0, 0.0
    for t in range(len(turn_lens) - 1, -1, -1):
        end, start = ends[t], ends[t] - turn_lens[t]
        if start == end:
            r_next, g_next = rewards[t] + gamma * r_next, gamma * g_next
            continue
        k = end - 1
        adv[k] = rewards[t] + gamma * (r_next + g_next * v_next) - v[k] + gamma * lam_turn * g_next * a_next
        for k in range(end - 2, start - 1, -1):
            adv[k] = v[k + 1] - v[k] + lam_token * adv[k + 1]
        r_next, g_next, v_next, a_next = 0.0, 1.0, v[start], adv[start]
    return torch.tensor(adv, dtype=torch.float32)


def whiten(advs: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """``(A - mean) / (std + eps)`` over every token of the list (population std), as PPO and
    RAGEN do per batch; fewer than two tokens: unchanged."""
    flat = torch.cat(advs) if advs else torch.zeros(0)
    if flat.numel() < 2:
        return advs
    mean, std = flat.mean(), flat.std(unbiased=False)
    return [(a - mean) / (std + eps) for a in advs]


def archer_targets(rewards: torch.Tensor, done: torch.Tensor, target_v1_next: torch.Tensor, target_v2_next: torch.Tensor,
                   target_q1: torch.Tensor, target_q2: torch.Tensor, gamma: float):
    """ArCHer's TD targets (arXiv 2402.19446, as in its code), all shapes (N,):
    ``Q_i(s, a) <- r + gamma * (1 - done) * V_target_i(s')`` and ``V_i(s) <- Q_target_i(s, a)``.
    Returns the targets of (Q1, Q2, V1, V2)."""
    live = 1.0 - done.float()
    return rewards + gamma * live * target_v1_next, rewards + gamma * live * target_v2_next, target_q1, target_q2


def archer_advantage(q1: torch.Tensor, q2: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Utterance advantage ``min(Q1, Q2)(s, a) - min(V1, V2)(s)`` (ArCHer's actor), shape (N,)."""
    return torch.minimum(q1, q2) - torch.minimum(v1, v2)


@torch.no_grad()
def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online``, parameter by parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(1.0 - tau).add_(o, alpha=tau)


def utterance_transitions(episodes: list[Episode], idx: list[int], feats: list) -> dict[str, torch.Tensor]:
    """ArCHer's transitions, one per live turn of ``episodes[idx]``:
    ``s`` = the feature before the turn's first token (the state after everything before
    it), ``sa`` = the mean of the features over the turn's tokens (the hidden state
    predicting token j has read the turn's tokens before j, so the mean sees the whole
    reply except its last token, usually the end-of-turn token), ``r`` = the turn reward,
    ``s_next`` = the next live turn's ``s`` (zeros after the last turn), ``done`` = last
    live turn. Also ``episode`` / ``turn``: where each row came from."""
    rows: dict[str, list] = {k: [] for k in ("s", "sa", "r", "s_next", "done", "episode", "turn")}
    for i in idx:
        f = feats[i]  # (n_tokens, C)
        lens, rewards = turn_lengths(episodes[i]), _turn_rewards(episodes[i])
        if f.shape[0] != sum(lens):
            raise ValueError(f"archer: {f.shape[0]} features for episode {i} with {sum(lens)} trained tokens")
        if 0 in lens:
            raise ValueError(f"archer: episode {i} has a live turn without tokens (turn lengths {lens})")
        starts = torch.tensor([0, *lens]).cumsum(0).tolist()
        for t in range(len(lens)):
            last = t == len(lens) - 1
            rows["s"].append(f[starts[t]])
            rows["sa"].append(f[starts[t]:starts[t + 1]].mean(0))
            rows["s_next"].append(torch.zeros_like(f[0]) if last else f[starts[t + 1]])
            rows["r"].append(rewards[t])
            rows["done"].append(float(last))
            rows["episode"].append(i)
            rows["turn"].append(t)
    if not rows["s"]:
        return {}
    out = {k: torch.stack(rows[k]) for k in ("s", "sa", "s_next")}
    out.update({"r": torch.tensor(rows["r"], dtype=torch.float32), "done": torch.tensor(rows["done"]),
                "episode": torch.tensor(rows["episode"]), "turn": torch.tensor(rows["turn"])})
    return out


# -- estimators (read what the critic's prepare filled in) -------------------------------

def gae(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """Bi-level GAE (RAGEN, arXiv 2504.20073) on ``aux.values``, whitened over the trained
    tokens of the step. Episodes without values (not trained this step) get zeros."""
    if aux.values is None:
        raise ValueError("gae needs the critic's values (aux.values)")
    have = [i for i, v in enumerate(aux.values) if v is not None]
    raw = [bilevel_gae(aux.values[i], turn_lengths(episodes[i]), _turn_rewards(episodes[i]), cfg.gae_gamma,
                       cfg.gae_lambda_turn, cfg.gae_lambda_token) for i in have]
    out = [torch.zeros(e.num_action_tokens) for e in episodes]
    for i, a in zip(have, _all_nan_if_any_nan(whiten(raw))):
        out[i] = a
    return out


def archer(episodes: list[Episode], cfg, aux: Aux) -> list[torch.Tensor]:
    """ArCHer (arXiv 2402.19446): the critic's advantage of each live turn
    (``aux.utterance_adv``) on every token of that turn; no whitening. Episodes without
    advantages (not trained this step) get zeros."""
    if aux.utterance_adv is None:
        raise ValueError("archer needs the critic's utterance advantages (aux.utterance_adv)")
    out = [broadcast(u, e) if u is not None else torch.zeros(e.num_action_tokens)
           for u, e in zip(aux.utterance_adv, episodes)]
    return _all_nan_if_any_nan(out)


# -- critics -----------------------------------------------------------------------------

def _mlp(n_in: int, width: int = 256) -> nn.Sequential:
    """LayerNorm (no affine: hidden-state scales differ across models) -> Linear -> GELU -> Linear -> 1."""
    return nn.Sequential(nn.LayerNorm(n_in, elementwise_affine=False), nn.Linear(n_in, width), nn.GELU(),
                         nn.Linear(width, 1))


def _width(policy) -> int:
    return int(policy.config.hidden_size)


def _device(policy) -> torch.device:
    return next(policy.parameters()).device


class _Trained(Critic):
    """A critic with its own Adam (``self.opt``), whose state travels in ``state_dict``
    (``_extra_state``), so a resumed run continues with the same moments."""

    def _step(self, loss: torch.Tensor) -> bool:
        """One optimizer step; a non-finite loss is skipped (the critic keeps its weights)."""
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return False
        loss.backward()
        self.opt.step()
        return True

    def get_extra_state(self):
        return {"optimizer": self.opt.state_dict()}

    def set_extra_state(self, state) -> None:
        self.opt.load_state_dict(state["optimizer"])


class ValueCritic(_Trained):
    """RAGEN's value head: V(feature before a trained token). ``prepare`` fills ``aux.values``
    with the current V and keeps the GAE returns; ``update`` regresses V on them (MSE)."""

    def __init__(self, width: int, cfg, device="cpu"):
        super().__init__()
        self.v = _mlp(width).to(device)
        self.opt = torch.optim.Adam(self.v.parameters(), lr=cfg.critic_lr)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def build(cls, policy, cfg) -> "ValueCritic":
        return cls(_width(policy), cfg, _device(policy))

    def prepare(self, episodes, train, feats, aux: Aux, cfg) -> dict[str, float]:
        values: list = [None] * len(episodes)
        xs, ys = [], []
        with torch.no_grad():
            for i in train:
                v = self.v(feats[i]).squeeze(-1)  # (n_tokens,)
                values[i] = v
                adv = bilevel_gae(v, turn_lengths(episodes[i]), _turn_rewards(episodes[i]), cfg.gae_gamma,
                                  cfg.gae_lambda_turn, cfg.gae_lambda_token)
                xs.append(feats[i])
                ys.append(adv.to(v.device) + v)  # returns: the critic's regression targets
        aux.values = values
        self._batch = (torch.cat(xs), torch.cat(ys)) if xs else None
        flat = torch.cat([v for v in values if v is not None]) if xs else torch.zeros(0)
        return {"critic_value_mean": float(flat.mean()) if flat.numel() else 0.0,
                "critic_nonfinite": float((~torch.isfinite(flat)).sum())}

    def update(self, cfg) -> dict[str, float]:
        if self._batch is None:
            return {}
        x, y = self._batch  # (N, C), (N,)
        self._batch = None
        losses, skipped = [], 0
        for _ in range(cfg.critic_epochs):
            loss = torch.nn.functional.mse_loss(self.v(x).squeeze(-1), y)
            losses.append(float(loss.detach()))
            skipped += not self._step(loss)
        return {"critic_loss": losses[0], "critic_loss_last": losses[-1], "critic_nan_skipped": float(skipped)}


class UtteranceCritic(_Trained):
    """ArCHer's critic: Q1, Q2 on (phi(s), phi(s, a)), V1, V2 on phi(s), and soft-updated target
    copies. ``prepare`` adds the step's transitions to the replay buffer (the last
    ``replay_steps`` training steps), takes ``critic_epochs`` full-batch TD steps on the whole
    buffer (critic before actor, as ArCHer's update loop does) and fills
    ``aux.utterance_adv``; ``update`` has nothing left to do.

    Two departures from the paper, both forced by having no fresh samples at training time:
    the V target reads the target Q at the *buffer's* action (ArCHer samples a fresh action
    from the current policy), and buffer features come from the policy as it was when the
    transition was collected (ArCHer uses a separate, slowly trained encoder)."""

    def __init__(self, width: int, cfg, device="cpu"):
        super().__init__()
        self.online = nn.ModuleDict({"q1": _mlp(2 * width), "q2": _mlp(2 * width), "v1": _mlp(width),
                                     "v2": _mlp(width)}).to(device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.opt = torch.optim.Adam(self.online.parameters(), lr=cfg.critic_lr)
        self.replay: deque = deque(maxlen=cfg.replay_steps)

    @classmethod
    def build(cls, policy, cfg) -> "UtteranceCritic":
        return cls(_width(policy), cfg, _device(policy))

    @staticmethod
    def q(nets: nn.ModuleDict, s: torch.Tensor, sa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q1, Q2), each (N,), for states (N, C) and state-actions (N, C)."""
        x = torch.cat([s, sa], -1)  # (N, 2C)
        return nets["q1"](x).squeeze(-1), nets["q2"](x).squeeze(-1)

    @staticmethod
    def v(nets: nn.ModuleDict, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V1, V2), each (N,), for states (N, C)."""
        return nets["v1"](s).squeeze(-1), nets["v2"](s).squeeze(-1)

    def td_loss(self, batch: dict[str, torch.Tensor], gamma: float) -> torch.Tensor:
        """Sum of the four MSEs against :func:`archer_targets` from the target copies."""
        with torch.no_grad():
            targets = archer_targets(batch["r"], batch["done"], *self.v(self.target, batch["s_next"]),
                                     *self.q(self.target, batch["s"], batch["sa"]), gamma)
        preds = (*self.q(self.online, batch["s"], batch["sa"]), *self.v(self.online, batch["s"]))
        return sum(torch.nn.functional.mse_loss(p, y) for p, y in zip(preds, targets))

    def prepare(self, episodes, train, feats, aux: Aux, cfg) -> dict[str, float]:
        new = utterance_transitions(episodes, train, feats)
        if new:
            self.replay.append({k: v for k, v in new.items() if k not in ("episode", "turn")})
        stats: dict[str, float] = {"replay_transitions": float(sum(len(b["r"]) for b in self.replay))}
        if self.replay:
            batch = {k: torch.cat([b[k] for b in self.replay]) for k in self.replay[0]}
            losses, skipped = [], 0
            for _ in range(cfg.critic_epochs):
                loss = self.td_loss(batch, cfg.archer_gamma)
                losses.append(float(loss.detach()))
                if self._step(loss):
                    soft_update(self.target, self.online, cfg.archer_tau)
                else:
                    skipped += 1
            stats.update({"critic_loss": losses[0], "critic_loss_last": losses[-1], "critic_nan_skipped": float(skipped)})
        utterance_adv: list = [None] * len(episodes)
        if new:
            with torch.no_grad():
                adv = archer_advantage(*self.q(self.online, new["s"], new["sa"]), *self.v(self.online, new["s"]))  # (N,)
            for i in train:
                utterance_adv[i] = adv[new["episode"] == i].tolist()
            stats.update({"critic_adv_mean": float(adv.mean()), "critic_nonfinite": float((~torch.isfinite(adv)).sum())})
        aux.utterance_adv = utterance_adv
        return stats

    def update(self, cfg) -> dict[str, float]:
        return {}  # trained in prepare, before the actor

    def get_extra_state(self):
        return {**super().get_extra_state(), "replay": list(self.replay)}

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.replay.clear()
        self.replay.extend(state["replay"])
