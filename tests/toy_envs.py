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
                    {"valid": bool(action.strip()), "correct": len(action) > 40, "answer": action[:10]})
