"""The environment contract: Gymnasium's shape over chat messages.

``reset(seed)`` returns the opening messages; ``step(action)`` takes the policy's reply
as text and returns a :class:`~turnrl.types.Step` whose typed fields carry what the
metrics read: ``valid`` (the reply parsed), ``correct`` (solved this turn; ``None`` when
the env has no notion of a right answer, which makes Succ@k meaningless) and ``answer``
(the normalised answer, for repeat metrics). Envs are deterministic per seed and never
see tokens: tokenization is the rollout's business.

Held-out evaluation: an env that takes a ``split`` argument ('train' / 'eval') serves
disjoint instance sets for the two (no eval instance is ever a training instance;
``check_split`` verifies it through ``instance()``), and ``num_instances()`` says how
many distinct instances its split holds.

Optional hooks for credit assignment: ``state()`` (a hashable description of the
situation before the next action) and ``gold_answer()`` (the reference reply of the
current instance, as the prompt asks for it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Hashable

from turnrl.types import Message, Step

SPLITS = ("train", "eval")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be 'train' or 'eval'")
    return split


class Env(ABC):
    #: attempts / turns allowed; the rollout stops an episode after this many turns.
    max_turns: int = 1
    #: ``step`` does slow outside work (runs code, calls a server): the rollout steps the
    #: episodes of a turn concurrently, in threads.
    parallel_steps: bool = False
    #: the constructor takes ``tasks`` (a task source built from the [task] section).
    uses_tasks: bool = False

    @abstractmethod
    def reset(self, seed: int) -> list[Message]:
        """Start an episode; the seed fixes the instance. Returns the opening messages."""

    @abstractmethod
    def step(self, action: str) -> Step:
        """Consume the policy's reply; return new messages, reward and end flags."""

    def num_instances(self) -> int | None:
        """How many distinct instances this env's split holds (seeds cycle over them);
        None: unbounded or unknown."""
        return None

    def instance(self) -> Hashable | None:
        """The identity of the current instance (after ``reset``): the task, secret, map
        or rule. Train and eval splits never share one. None: the env cannot tell."""
        return None

    def state(self) -> Hashable | None:
        """A hashable description of the env state before the next action (position,
        hints so far, ...): equal states may share credit. None: not meaningful."""
        return None

    def gold_answer(self) -> str | None:
        """The reference reply of the current instance, written as the prompt asks for
        it (teacher forcing). None: the env has no single right reply."""
        return None


class EnvStepError(RuntimeError):
    """An env raised in ``reset`` or ``step``: the message names the class, seed and turn."""


def env_call(env, seed: int, turn: int | None, action: str | None = None):
    """``env.reset(seed)`` (``turn`` None) or ``env.step(action)`` at 1-based ``turn``; an
    exception in the env becomes one :class:`EnvStepError` naming class, seed and turn."""
    try:
        return env.reset(seed) if turn is None else env.step(action)
    except Exception as e:  # noqa: BLE001 - re-raised with the env's name, seed and turn
        where = f"reset(seed={seed})" if turn is None else f"step() at seed {seed}, turn {turn}"
        raise EnvStepError(f"env {type(env).__name__}: {where} raised {type(e).__name__}: {e}") from e
