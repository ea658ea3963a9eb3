"""What the text games share: a per-seed RNG, turn counting, and a player loop.

Every game reports ``info["valid"]`` (the reply parsed as a move), ``info["correct"]``
(the goal was reached on this turn) and ``info["answer"]`` (the move, normalised), so
the turn-level metrics (Succ@k, repeats, invalid format) apply to games unchanged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from turnrl.envs.base import Env
from turnrl.types import Message, Step


class GameEnv(Env):
    max_turns = 10

    def __init__(self, max_turns: int | None = None):
        if max_turns is not None:
            if max_turns < 1:
                raise ValueError(f"max_turns={max_turns} must be >= 1")
            self.max_turns = max_turns
        self.turn = 0
        self.started = False

    def rng(self, seed: int) -> random.Random:
        return random.Random(f"{type(self).__name__}:{seed}")

    def begin(self) -> None:
        self.turn, self.started = 0, True

    def advance(self) -> bool:
        """Count a turn; True when it was the last one allowed."""
        if not self.started:
            raise RuntimeError("call reset() before step()")
        self.turn += 1
        return self.turn >= self.max_turns

    def end(self, reward: float, correct: bool, answer, info: dict | None = None) -> Step:
        return Step([], reward, True, False, {"valid": True, "correct": correct, "answer": answer, **(info or {})})

    def reply(self, text: str, reward: float, last: bool, valid: bool, answer, info: dict | None = None) -> Step:
        """A non-final move: feedback unless the turn cap ends the episode."""
        return Step([] if last else [Message("user", text)], reward, False, last,
                    {"valid": valid, "correct": False, "answer": answer, **(info or {})})


class Player(Protocol):
    def act(self, messages: list[Message]) -> str: ...


@dataclass
class PlayResult:
    ret: float
    solved: bool
    turns: int


def play(env: Env, player_factory, seed: int) -> PlayResult:
    """One episode of ``env`` with a scripted player (``player_factory(env)``)."""
    msgs = env.reset(seed)
    player = player_factory(env)
    ret, turns = 0.0, 0
    while True:
        step = env.step(player.act(msgs))
        ret += step.reward
        turns += 1
        if step.terminated or step.truncated:
            return PlayResult(ret, bool(step.info.get("correct")), turns)
        msgs = msgs + step.messages
