"""Small envs for tests, loaded the way a user's env is: by ``module.path:Class``."""
from turnrl.envs.base import Env
from turnrl.types import Message, Step


class LengthEnv(Env):
    """Reward = characters in the reply / 100, two turns. Any model gets varied rewards."""

    def __init__(self, max_turns: int = 2, split: str = "train"):
        self.max_turns, self.split = max_turns, split

    def reset(self, seed: int):
        self.t = 0
        return [Message("user", f"Say something ({self.split} task {seed % 7}).")]

    def step(self, action: str) -> Step:
        self.t += 1
        done = self.t >= self.max_turns
        return Step([] if done else [Message("user", "More.")], len(action) / 100, False, done,
                    valid=bool(action.strip()), correct=len(action) > 40, answer=action[:10])


class FirstTurnDecides(Env):
    """Two turns; the FIRST reply alone decides the outcome: it wins (reward 1, paid on that
    turn) when it starts with "A". The second reply changes nothing (reward 0). A credit
    assignment test env: the right credit goes to turn 0."""

    max_turns = 2

    def __init__(self, split: str = "train"):
        self.split = split

    def reset(self, seed: int):
        self.t, self.win = 0, False
        return [Message("user", "Pick A or B.")]

    def state(self):
        return ("turn", self.t)

    def gold_answer(self):
        return "A"

    def step(self, action: str) -> Step:
        self.t += 1
        if self.t == 1:
            self.win = action.strip().startswith("A")
            return Step([Message("user", "Again.")], 1.0 if self.win else 0.0, False, False, valid=True,
                        correct=False, answer=action[:1])
        return Step([], 0.0, True, False, valid=True, correct=self.win, answer=action[:1])


class NoVerdictEnv(Env):
    """One turn, reward by length, and no notion of a right answer (Step.correct stays None)."""

    max_turns = 1

    def __init__(self, split: str = "train"):
        self.split = split

    def reset(self, seed: int):
        return [Message("user", "Write anything.")]

    def step(self, action: str) -> Step:
        return Step([], len(action) / 100, True, False)


class FlakyEnv(LengthEnv):
    """LengthEnv that fails on purpose (Ray rollout tests): ``step`` raises on seed
    ``raise_on_seed``; on seed ``exit_on_seed`` it ends its whole process (``os._exit``),
    once: the first time it creates ``exit_marker`` and a later process finds it there."""

    def __init__(self, max_turns: int = 2, split: str = "train", raise_on_seed: int = -1, exit_on_seed: int = -1,
                 exit_marker: str = ""):
        super().__init__(max_turns, split)
        self.raise_on_seed, self.exit_on_seed, self.exit_marker = raise_on_seed, exit_on_seed, exit_marker

    def reset(self, seed: int):
        self.seed = seed
        return super().reset(seed)

    def step(self, action: str) -> Step:
        if self.seed == self.raise_on_seed:
            raise RuntimeError(f"flaky env: seed {self.seed}")
        if self.seed == self.exit_on_seed and self.exit_marker:
            import os

            try:
                with open(self.exit_marker, "x"):
                    pass
            except FileExistsError:
                pass
            else:
                os._exit(1)  # a real death of the process, mid-step
        return super().step(action)
