"""What the text games share: a per-seed RNG, turn counting, and a player loop.

Every game reports ``Step.valid`` (the reply parsed as a move), ``Step.correct`` (the
goal was reached on this turn) and ``Step.answer`` (the move, normalised), so the
turn-level metrics (Succ@k, repeats, invalid format) apply to games unchanged.

Every game takes ``split`` ('train' / 'eval'): the two splits draw from disjoint sets of
instances (secrets, words, maps, rules), so held-out games are games never trained on.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence

from turnrl.envs.base import Env, check_split
from turnrl.types import Message, Step


def hold_out(items: Sequence, fraction: float, key: str) -> tuple[list, list]:
    """(train, eval) of a finite instance set: a seeded sample of ``round(fraction * n)``
    items (at least 1) is eval, the rest train; each list in a seeded shuffled order, so
    seeds ``0..k-1`` of a split play ``k`` distinct instances."""
    items = sorted(set(items))
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction={fraction} must be between 0 and 1")
    if len(items) < 2:
        raise ValueError(f"{key}: {len(items)} instance(s) cannot be split into train and eval")
    rng = random.Random(f"hold_out:{key}")
    held = set(rng.sample(items, max(1, round(fraction * len(items)))))
    train, ev = [i for i in items if i not in held], [i for i in items if i in held]
    rng.shuffle(train)
    rng.shuffle(ev)
    return train, ev


def split_of(text: str, fraction: float) -> str:
    """The split a generated instance (a map, ...) belongs to, from a hash of its text."""
    return "eval" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10_000 < fraction * 10_000 else "train"


class GameEnv(Env):
    max_turns = 10

    def __init__(self, max_turns: int | None = None, split: str = "train"):
        if max_turns is not None:
            if max_turns < 1:
                raise ValueError(f"max_turns={max_turns} must be >= 1")
            self.max_turns = max_turns
        self.split = check_split(split)
        self.turn = 0
        self.started = False
        self.history: list[tuple] = []

    def rng(self, seed: int, attempt: int = 0) -> random.Random:
        return random.Random(f"{type(self).__name__}:{self.split}:{seed}:{attempt}")

    def begin(self) -> None:
        self.turn, self.started, self.history = 0, True, []

    def state(self) -> Hashable:
        """The instance and the valid moves so far with the env's reply to each."""
        return self.instance(), tuple(self.history)

    def advance(self) -> bool:
        """Count a turn; True when it was the last one allowed."""
        if not self.started:
            raise RuntimeError("call reset() before step()")
        self.turn += 1
        return self.turn >= self.max_turns

    def end(self, reward: float, correct: bool, answer: str, info: dict | None = None) -> Step:
        return Step([], reward, True, False, dict(info or {}), valid=True, correct=correct, answer=answer)

    def reply(self, text: str, reward: float, last: bool, valid: bool, answer: str | None,
              info: dict | None = None) -> Step:
        """A non-final move: feedback unless the turn cap ends the episode."""
        if valid:
            self.history.append((answer, text))
        return Step([] if last else [Message("user", text)], reward, False, last, dict(info or {}),
                    valid=valid, correct=False, answer=answer)


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
            return PlayResult(ret, bool(step.correct), turns)
        msgs = msgs + step.messages
