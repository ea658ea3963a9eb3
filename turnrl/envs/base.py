"""The environment contract: Gymnasium's shape over chat messages.

``reset(seed)`` returns the opening messages; ``step(action)`` takes the policy's reply
as text and returns a :class:`~turnrl.types.Step`. Envs are deterministic per seed and
never see tokens: tokenization is the rollout's business.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from turnrl.types import Message, Step


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
        """Start an episode; the seed fixes the task. Returns the opening messages."""

    @abstractmethod
    def step(self, action: str) -> Step:
        """Consume the policy's reply; return new messages, reward and end flags."""

    def num_tasks(self) -> int | None:
        """How many distinct tasks the seeds cycle over (None: unbounded)."""
        return None
