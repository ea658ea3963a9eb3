"""Guess the number: a hidden integer in [low, high]; after each guess, 'higher' or 'lower'."""
from __future__ import annotations

import re

from turnrl.envs.games.base import GameEnv, hold_out
from turnrl.types import Message, Step

_INT = re.compile(r"-?\d+")


class GuessNumberEnv(GameEnv):
    """Reward 1 for guessing the number within ``max_turns`` guesses, else 0. With the
    default range 1..100 and 7 guesses, binary search always wins (2**7 > 100). A seeded
    ``eval_fraction`` of the numbers (20 of 1..100) is held out for the eval split."""

    max_turns = 7

    def __init__(self, low: int = 1, high: int = 100, max_turns: int | None = None, split: str = "train",
                 eval_fraction: float = 0.2, format_penalty: float = 0.0):
        super().__init__(max_turns, split)
        if low >= high:
            raise ValueError(f"low={low} must be below high={high}")
        if format_penalty < 0:
            raise ValueError(f"format_penalty={format_penalty} must be >= 0 (it is subtracted)")
        self.low, self.high = low, high
        self.format_penalty = format_penalty  # per reply without a number, as UFO's format penalty (arXiv 2507.14295)
        train, ev = hold_out(range(low, high + 1), eval_fraction, f"guess_number:{low}:{high}")
        self.secrets = ev if self.split == "eval" else train

    def num_instances(self) -> int:
        return len(self.secrets)

    def instance(self) -> int:
        return self.secret

    def gold_answer(self) -> str:
        return str(self.secret)

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.secret = self.secrets[seed % len(self.secrets)]
        return [Message("user", f"I am thinking of an integer between {self.low} and {self.high}. Guess it: reply with "
                                f"one number. After each wrong guess I will say 'higher' or 'lower'. You have "
                                f"{self.max_turns} guesses.")]

    def step(self, action: str) -> Step:
        last = self.advance()
        nums = _INT.findall(action)
        if not nums:
            return self.reply(f"Please reply with one integer between {self.low} and {self.high}.",
                              -self.format_penalty, last, False, None)
        guess = int(nums[-1])
        if guess == self.secret:
            return self.end(1.0, True, str(guess), {"secret": self.secret})
        hint = "Higher." if self.secret > guess else "Lower."
        return self.reply(hint, 0.0, last, True, str(guess), {"secret": self.secret})


class BinarySearchPlayer:
    """Reference player: bisects the interval the hints leave."""

    def __init__(self, env: GuessNumberEnv):
        self.lo, self.hi, self.last = env.low, env.high, None

    def act(self, messages: list[Message]) -> str:
        if self.last is not None:
            if messages[-1].content == "Higher.":
                self.lo = self.last + 1
            else:
                self.hi = self.last - 1
        self.last = (self.lo + self.hi) // 2
        return f"My guess is {self.last}."
