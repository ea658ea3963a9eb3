"""The algorithm contract.

An :class:`Algorithm` is a record of pure functions plus what it needs:

- ``advantages(episodes, cfg, aux) -> list[Tensor]``: one float tensor per episode, one
  value per *trained* action token (the tokens of ``Episode.live_turns``, in order) —
  exactly aligned with the learner's log-probs. Trajectory-level estimators broadcast one
  number; per-turn ones one number per turn; token-level ones (GAE) one per token.
- ``loss(inputs, cfg) -> (scalar, stats)``: owns everything the update minimises (PPO-clip,
  KL to the reference, any pairwise loss). ``stats`` are sums over the micro-batch.
- ``norm(episodes, cfg, n_sampled, n_tokens) -> float``: the divisor of ``aggregate`` for
  one optimizer step (``n_sampled``: episodes collected for it, before masks; ``n_tokens``:
  tokens it trains), so micro-batches add up exactly.
- ``reads``: the ``[algo]`` fields it reads beyond the common ones; config validation
  derives from it (a field set but not read is an error naming the algorithm).
- ``needs``: what the trainer must provide (``ref`` is derived from ``kl_coef``):
  ``belief`` (IGPO: teacher-forced belief in the gold answer per turn), ``value`` /
  ``critic`` (a critic trained beside the policy), ``state`` (envs expose ``Env.state()``),
  ``gold`` (envs expose ``Env.gold_answer()``), ``pairs`` (episodes come in pairs sharing a
  prefix), ``phases`` (the update runs turn by turn).

Adding one: write the pure function, add one ``register(Algorithm(...))`` line in
``turnrl/algos/__init__.py``, and a hand-computed test. ``docs/algorithms.md`` walks
through an example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from turnrl.types import Episode

#: ``[algo]`` fields every algorithm reads (the PPO-style update around the estimator).
COMMON_FIELDS = frozenset({"name", "kl_coef", "top_variance_fraction", "masks", "ppo_epochs", "minibatches"})


@dataclass
class Aux:
    """What the trainer computed for the estimator (each None unless the algorithm needs it).

    ``beliefs[i][k]``: the policy's belief in the gold answer in the context where live
    turn ``k`` of episode ``i`` was sampled, one per live turn (IGPO; the last turn's
    reward is the outcome, so no belief after it is needed). ``values[i]``: the critic's value of the state before each trained token of
    episode ``i`` (bi-level GAE). ``utterance_adv[i][k]``: the critic's advantage of live
    turn ``k`` (ArCHer). ``logprobs[i]``: the current learner log-probs of the trained
    tokens (SeeUPO's later-turn ratios). ``phase``: the live-turn index being updated."""

    beliefs: list[list[float]] | None = None
    values: list[torch.Tensor] | None = None
    utterance_adv: list[list[float]] | None = None
    logprobs: list[torch.Tensor] | None = None
    old_logprobs: list[torch.Tensor] | None = None
    behaviour_weight: list[torch.Tensor] | None = None  # stale episodes: min(pi_old / pi_sampler, is_cap) per token
    phase: int | None = None
    n_sampled: int = 0


@dataclass
class LossInputs:
    """One micro-batch, padded to (B, T) over trained action tokens. ``mask`` is True on
    tokens that are trained (after masks and phase selection); padding is False."""

    episodes: list[Episode]
    logprobs: torch.Tensor  # (B, T) learner, with grad
    old_logprobs: torch.Tensor  # (B, T) behaviour policy (the learner before this update)
    advantages: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) bool
    turn_ids: torch.Tensor  # (B, T) long: live-turn index of each token (-1 on padding)
    agg: str  # "token_mean" | "seq_mean" | "token_sum_norm"
    norm: float
    ref_logprobs: torch.Tensor | None = None  # (B, T), when kl_coef > 0
    behaviour_weight: torch.Tensor | None = None  # (B, T) min(pi_old / pi_sampler, is_cap): stale episodes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Algorithm:
    name: str
    paper: str  # arXiv id of the estimator
    advantages: Callable[[list[Episode], Any, Aux], list[torch.Tensor]]
    loss: Callable[[LossInputs, Any], tuple[torch.Tensor, dict[str, float]]]
    norm: Callable[[list[Episode], Any, int, int], float]
    agg: Callable[[Any], str]
    reads: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    summary: str = ""
    #: ``(policy, cfg) -> Critic``: a critic trained beside the policy (value head, Q/V heads)
    make_critic: Callable[[Any, Any], "Critic"] | None = None
    #: ``(episodes, cfg) -> [turn index, ...]``: update turn by turn, one optimizer pass each
    phases: Callable[[list[Episode], Any], list[int]] | None = None
    #: the loss applies ``LossInputs.behaviour_weight`` (episodes sampled by an older policy,
    #: ``scale.max_staleness`` > 0); an algorithm without it trains synchronously only
    corrects_staleness: bool = False
    #: ``algo.masks`` when the config leaves it unset. ``zero_variance`` only where a group of
    #: equal returns gets zero advantages: per-turn and critic estimators can give such a
    #: group non-zero ones (per-turn rewards, information gain, anchor states, values).
    default_masks: tuple[str, ...] = ("zero_variance",)

    def needs_ref(self, cfg) -> bool:
        return cfg.kl_coef > 0

    def needs_value(self) -> bool:
        return bool(self.needs & {"value", "critic"})


class Critic(torch.nn.Module):
    """A critic owned by an algorithm, trained on the policy's detached hidden states.

    ``prepare`` runs once per training step before the advantages: it receives the hidden
    state before every trained token (``feats[i]``: (n_tokens, C), None for episodes not
    trained) and fills what the estimator reads (``aux.values`` / ``aux.utterance_adv``).
    ``update`` trains the critic (its own optimizer) after the policy's update. Its
    ``state_dict`` is saved in checkpoints."""

    def prepare(self, episodes: list[Episode], train: list[int], feats: list, aux: Aux, cfg) -> dict[str, float]:
        raise NotImplementedError

    def update(self, cfg) -> dict[str, float]:
        raise NotImplementedError


ALGORITHMS: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    if algo.name in ALGORITHMS:
        raise ValueError(f"algorithm {algo.name!r} is registered twice")
    ALGORITHMS[algo.name] = algo
    return algo


def get_algorithm(name: str) -> Algorithm:
    import turnrl.algos  # noqa: F401  (fills the registry)

    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


# -- helpers shared by estimators --------------------------------------------------------

def turn_lengths(ep: Episode) -> list[int]:
    """Trained tokens per live turn of ``ep``."""
    return [len(t.action_ids) for t in ep.live_turns]


def broadcast(per_turn: list[float], ep: Episode) -> torch.Tensor:
    """One value per live turn -> one per trained token of that turn, shape (n_tokens,)."""
    lens = turn_lengths(ep)
    if len(per_turn) != len(lens):
        raise ValueError(f"{len(per_turn)} turn values for an episode with {len(lens)} live turns")
    return torch.repeat_interleave(torch.tensor(per_turn, dtype=torch.float32), torch.tensor(lens, dtype=torch.long))


def token_turn_ids(ep: Episode) -> torch.Tensor:
    """Live-turn index of each trained token, shape (n_tokens,)."""
    lens = turn_lengths(ep)
    return torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))


def groups_of(episodes: list[Episode]) -> dict[int, list[int]]:
    """group id -> indices of its episodes, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for i, e in enumerate(episodes):
        out.setdefault(e.group_id, []).append(i)
    return out


class NeedsError(ValueError):
    """The env cannot give what the chosen algorithm needs (one line, before any model loads)."""


def check_needs(algo: Algorithm, make_env: Callable[[], Any], env_name: str, seeds=(0, 1)) -> None:
    """Play the opening of a few training instances and check the env provides what ``algo``
    declares it needs: ``state`` (``Env.state()`` not None: GiGPO's anchor states) and
    ``gold`` (``Env.gold_answer()`` a non-empty string: IGPO's teacher-forced target)."""
    wanted = algo.needs & {"state", "gold"}
    if not wanted:
        return
    env = make_env()
    for seed in seeds:
        env.reset(seed)
        if "state" in wanted and getattr(env, "state", lambda: None)() is None:
            raise NeedsError(f"algorithm {algo.name!r} needs the env's anchor state, but env {env_name!r} "
                             f"({type(env).__name__}) returns None from state(); implement Env.state()")
        gold = getattr(env, "gold_answer", lambda: None)()
        if "gold" in wanted and not (isinstance(gold, str) and gold.strip()):
            raise NeedsError(f"algorithm {algo.name!r} needs the env's gold answer, but env {env_name!r} "
                             f"({type(env).__name__}) gives {gold!r} from gold_answer(); implement Env.gold_answer()")
