"""Wordle (LMRL-Gym's version, arXiv 2311.18232): six tries at a hidden five-letter word,
letter-by-letter feedback. The word list ships in ``data/wordle_words.txt``."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

from turnrl.envs.games.base import GameEnv, hold_out
from turnrl.types import Message, Step

_WORD = re.compile(r"\b[a-zA-Z]{5}\b")


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    text = files("turnrl.envs.games").joinpath("data/wordle_words.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def score(guess: str, secret: str) -> str:
    """Per letter: G (right place), Y (in the word elsewhere), . (not in the word), with
    Wordle's rule for repeated letters: each secret letter colours at most one guess letter."""
    out, left = ["."] * 5, {}
    for i, (g, s) in enumerate(zip(guess, secret)):
        if g == s:
            out[i] = "G"
        else:
            left[s] = left.get(s, 0) + 1
    for i, g in enumerate(guess):
        if out[i] == "." and left.get(g, 0) > 0:
            out[i] = "Y"
            left[g] -= 1
    return "".join(out)


class WordleEnv(GameEnv):
    """Reward 1 for finding the word within ``max_turns`` (6) guesses, else 0. A guess is
    the last five-letter word of the reply; a reply without one wastes the turn."""

    max_turns = 6

    def __init__(self, max_turns: int | None = None, vocabulary: int = 1000, split: str = "train",
                 eval_fraction: float = 0.2):
        super().__init__(max_turns, split)
        self.words = word_list()[:vocabulary]  # what a guess may be, in either split
        train, ev = hold_out(self.words, eval_fraction, f"wordle:{vocabulary}")
        self.secrets = ev if self.split == "eval" else train  # 200 / 800 of the 1,000 words

    def num_instances(self) -> int:
        return len(self.secrets)

    def instance(self) -> str:
        return self.secret

    def gold_answer(self) -> str:
        return self.secret

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.secret = self.secrets[seed % len(self.secrets)]
        return [Message("user", f"Let's play Wordle. Guess my secret five-letter English word in {self.max_turns} tries. "
                                "Reply with one five-letter word. After each guess I show each letter's result: "
                                "G = right letter, right place; Y = in the word, wrong place; . = not in the word.")]

    def step(self, action: str) -> Step:
        last = self.advance()
        found = _WORD.findall(action)
        if not found:
            return self.reply("Reply with one five-letter word.", 0.0, last, False, None)
        guess = found[-1].lower()
        if guess == self.secret:
            return self.end(1.0, True, guess)
        marks = score(guess, self.secret)
        left = self.max_turns - self.turn
        return self.reply(f"{guess.upper()}\n{' '.join(marks)}\n{left} guess{'es' if left != 1 else ''} left.", 0.0, last,
                          True, guess, {"marks": marks})


class CandidatePlayer:
    """Reference player: guesses the most frequent listed word consistent with every
    result so far."""

    def __init__(self, env: WordleEnv):
        self.candidates = list(env.words)
        self.last: str | None = None

    def act(self, messages: list[Message]) -> str:
        if self.last is not None:
            marks = messages[-1].content.split("\n")[1].replace(" ", "")
            self.candidates = [w for w in self.candidates if score(self.last, w) == marks]
        self.last = self.candidates[0]
        return self.last
