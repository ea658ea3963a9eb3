"""Core data types shared by every module.

Vocabulary (one name per quantity): ``rewards`` are what the env returns per turn,
``returns`` what an algorithm sums from them, ``advantages`` what the loss weighs.
``old_logprobs`` come from the sampler, ``ref_logprobs`` from the frozen reference,
``logprobs`` from the policy being trained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class ActionText(str):
    """The policy's reply as ``Env.step`` receives it: a ``str`` that also says whether
    the per-turn token limit cut it off before the model ended its turn (``cut_off``).
    String methods return plain ``str``: read ``cut_off`` on the action itself."""

    cut_off: bool

    def __new__(cls, text: str, cut_off: bool = False):
        obj = super().__new__(cls, text)
        obj.cut_off = cut_off
        return obj


#: the Step fields every turn record carries; an env may not set them through ``info``
STEP_FIELDS = ("valid", "correct", "answer")


@dataclass
class Step:
    """What ``Env.step`` returns (Gymnasium shape, over chat messages).

    ``valid``, ``correct`` and ``answer`` are what the turn-level metrics read (Succ@k,
    repeated answers, invalid format); ``info`` is free-form extra detail for logs.
    """

    messages: list[Message]  # new messages to append after the action (e.g. feedback)
    reward: float
    terminated: bool  # the task is over (solved, or the env says no more attempts)
    truncated: bool  # cut from outside the task: turn cap
    info: dict[str, Any] = field(default_factory=dict)
    valid: bool = True  # the reply parsed as an answer / move; False counts as invalid format
    correct: bool | None = None  # solved on this turn; None: the env has no notion of a right answer
    answer: str | None = None  # the normalised answer given this turn (repeat metrics)

    def __post_init__(self):
        clash = [k for k in STEP_FIELDS if k in self.info]
        if clash:  # the keys the metrics once read from info: a silent Succ@k = 0 if left there
            raise ValueError(f"Step.info sets {clash}: pass them as Step fields instead, "
                             f"e.g. Step(..., {clash[0]}=...)")

    def record(self) -> dict[str, Any]:
        """The turn's record: ``info`` plus the typed fields, under their own names."""
        return {**self.info, "valid": self.valid, "correct": self.correct, "answer": self.answer}


@dataclass
class Turn:
    """One action of the policy and the observation tokens that preceded it.

    Append-only episodes (the context only grows): ``obs_ids`` are the tokens added since
    the previous action and ``context_ids`` is None. A turn whose context was rebuilt
    (Markovian state, a window of turns, a template that rewrites history) carries its
    whole context in ``context_ids`` (and the same ids in ``obs_ids``): the action was
    sampled right after exactly those ids, and the learner scores it there."""

    obs_ids: list[int]  # tokens the env and chat template added before this action; never trained
    action_ids: list[int]  # exactly as sampled
    action_logprobs: list[float]  # the sampler's log-probabilities of action_ids
    text: str = ""  # decoded action, for parsing and logs only
    reward: float = 0.0
    void: bool = False  # the env judged the turn invalid (no parseable answer, ...)
    cut_by_length: bool = False  # hit the per-turn token limit before end-of-turn
    temperature: float = 1.0  # the sampling temperature; the learner scores the action at it
    frozen: bool = False  # a replayed earlier action kept as context, not trained (RISE-style starts)
    info: dict[str, Any] = field(default_factory=dict)
    feedback: list[Message] = field(default_factory=list)  # what the env said after this action
    latency_s: float = 0.0  # wall time of the generate call that produced the action (batched: the batch's)
    completion_tokens: int | None = None  # token count when ids are unknown (HTTP endpoints)
    state: Any = None  # hashable Env.state() before this action (GiGPO's anchor state); None if the env has none
    context_ids: list[int] | None = None  # the full ids the action was sampled after, when not append-only

    @property
    def num_tokens(self) -> int:
        return len(self.action_ids) if self.completion_tokens is None else self.completion_tokens


@dataclass
class Episode:
    turns: list[Turn]
    group_id: int  # same task and seed => same group
    task_id: str = ""
    seed: int | None = None  # the env seed that fixed the task
    terminated: bool = False  # task over (solved / env ended it)
    truncated: bool = False  # turn cap or context limit
    truncated_by: str = ""  # "max_turns" | "context" | ""
    info: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)  # the conversation as text, for logs
    gold_answer: str | None = None  # Env.gold_answer() of the instance (IGPO's teacher-forced target)
    policy_version: int = 0  # updates the sampling weights had seen (staleness = learner's version - this)

    @property
    def append_only(self) -> bool:
        """Every turn's context is the previous turn's context + action + obs_ids: the
        episode is one token sequence (``token_ids``)."""
        return all(t.context_ids is None for t in self.turns)

    def contexts(self) -> list[list[int]]:
        """The ids each turn's action was sampled after, one list per turn: the growing
        sequence for append-only turns, ``context_ids`` for rebuilt ones."""
        out, ctx = [], []
        for t in self.turns:
            ctx = list(t.context_ids) if t.context_ids is not None else ctx + list(t.obs_ids)
            out.append(ctx)
            ctx = ctx + list(t.action_ids)
        return out

    @property
    def num_tokens(self) -> int:
        """Tokens the model reads to score the episode: the sequence of an append-only
        episode; the sum of every turn's context and action otherwise."""
        if self.append_only:
            return sum(len(t.obs_ids) + len(t.action_ids) for t in self.turns)
        return sum(len(c) + len(t.action_ids) for c, t in zip(self.contexts(), self.turns))

    def _one_sequence(self, what: str) -> None:
        if not self.append_only:
            raise ValueError(f"Episode.{what}: the episode's turns have their own contexts (not append-only); "
                             "use Episode.contexts() per turn")

    @property
    def token_ids(self) -> list[int]:
        self._one_sequence("token_ids")
        return [t for turn in self.turns for t in (*turn.obs_ids, *turn.action_ids)]

    @property
    def loss_mask(self) -> list[bool]:
        """True exactly on sampled action tokens."""
        self._one_sequence("loss_mask")
        return [m for turn in self.turns
                for m in (*([False] * len(turn.obs_ids)), *([not turn.frozen] * len(turn.action_ids)))]

    @property
    def turn_index(self) -> list[int]:
        """Index of the turn each token belongs to (obs tokens belong to the turn they precede)."""
        self._one_sequence("turn_index")
        return [i for i, turn in enumerate(self.turns) for _ in range(len(turn.obs_ids) + len(turn.action_ids))]

    @property
    def temperatures(self) -> list[float]:
        self._one_sequence("temperatures")
        return [t.temperature for t in self.turns for _ in range(len(t.obs_ids) + len(t.action_ids))]

    @property
    def live_turns(self) -> list[Turn]:
        """Turns the policy took in this episode (replayed prefix turns excluded)."""
        return [t for t in self.turns if not t.frozen]

    @property
    def total_reward(self) -> float:
        return sum(t.reward for t in self.turns)

    @property
    def num_action_tokens(self) -> int:
        return sum(t.num_tokens for t in self.live_turns)

    @property
    def latency_s(self) -> float:
        return sum(t.latency_s for t in self.live_turns)
