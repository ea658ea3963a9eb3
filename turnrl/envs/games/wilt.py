"""WILT, "Wason Inductive Logic Test" (arXiv 2410.10998): find a hidden boolean rule
f(x, y, z) by testing triples, then state it as a Python lambda.

Protocol, as in the paper: each turn either tests a triple (``Test Case: (x, y, z)`` ->
``True`` / ``False`` and the tests left, at most 30) or ends the game with one guess
(``Final Guess: lambda x, y, z: ...``). The guess is right when it agrees with the rule on
10,000 random real points of [1, 100]^3 and on the whole integer grid [-20, 20]^3, the
authors' check. The guess is model-written code: it is evaluated only inside the sandbox.

Splits: eval plays the benchmark's own 50 rules (``lite``: its 10), train plays rules
generated from the same categories, none equivalent to an eval rule (``wilt_rules``).
"""
from __future__ import annotations

import hashlib
import math
import re

from turnrl.envs.base import check_split
from turnrl.envs.games.base import GameEnv
from turnrl.envs.games.wilt_rules import OFFICIAL, OFFICIAL_LITE, train_rules
from turnrl.tools.sandbox import Limits, Sandbox
from turnrl.types import Message, Step


# Both the host (for the rule) and the sandbox (for the guess) run this text, so the
# points are the same on both sides without shipping them: a 64-bit LCG drawing reals in
# [1, 100) (the authors draw random.uniform(1, 100)), then the grid.
POINTS_CODE = """
import math

def points():
    s = 12345
    for _ in range(10000):
        t = []
        for _ in range(3):
            s = (s * 6364136223846793005 + 1442695040888963407) % 2 ** 64
            t.append(1 + 99 * (s >> 11) / 2 ** 53)
        yield tuple(t)
    for x in range(-20, 21):
        for y in range(-20, 21):
            for z in range(-20, 21):
                yield (x, y, z)

def signature(f):
    out = []
    for p in points():
        try:
            out.append('1' if f(*p) else '0')
        except Exception:
            out.append('e')
    return ''.join(out)
"""
_TEST = re.compile(r"test\s*case\s*:\s*\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)", re.I)
_GUESS = re.compile(r"final\s*guess\s*:\s*(lambda\s+x\s*,\s*y\s*,\s*z\s*:[^\n]+)", re.I)
_cache: dict[str, str] = {}


def rule_fn(rule: str):
    """One of our rules (never model output) as a function."""
    return eval(f"lambda x, y, z: {rule}", {"math": math})  # noqa: S307 - our own rule text


def rule_signature(rule: str) -> str:
    """sha256 of the rule's values on the points (our own rules: run here, cached). Two
    rules with the same signature are equivalent for the game's check."""
    if rule not in _cache:
        ns: dict = {}
        exec(POINTS_CODE, ns)  # noqa: S102 - our constant code, not model output
        _cache[rule] = hashlib.sha256(ns["signature"](rule_fn(rule)).encode()).hexdigest()
    return _cache[rule]


def constant_signatures() -> set[str]:
    return {rule_signature("True"), rule_signature("False")}


def _number(s: str):
    return float(s) if "." in s else int(s)


def _value(f, p) -> bool:
    try:
        return bool(f(*p))
    except (ZeroDivisionError, OverflowError, ValueError, TypeError):
        return False


class WILTEnv(GameEnv):
    """Reward 1 for a right final guess, 0 otherwise. Eval seed ``s`` plays benchmark rule
    ``s % 50`` (``lite``: ``s % 10``); train seeds play the generated rules."""

    parallel_steps = True  # guesses run in the sandbox
    max_turns = 31  # 30 tests and a final guess (set from max_tests)

    def __init__(self, lite: bool = False, max_tests: int = 30, sandbox: Sandbox | None = None, split: str = "train"):
        super().__init__(max_tests + 1, split)
        if check_split(split) == "eval":
            self.rules = list(OFFICIAL_LITE if lite else OFFICIAL)
        else:
            self.rules = list(train_rules())
        self.max_tests = max_tests
        self.sandbox = sandbox or Sandbox(Limits(wall_s=20.0, cpu_s=10, memory_mb=512, output_bytes=4096))

    def num_instances(self) -> int:
        return len(self.rules)

    def instance(self) -> str:
        return self.rule

    def gold_answer(self) -> str:
        return f"Final Guess: lambda x, y, z: {self.rule}"

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.rule = self.rules[seed % len(self.rules)]
        self.fn = rule_fn(self.rule)
        self.tests = 0
        return [Message("user", "There is a hidden rule f(x, y, z) that is True or False for any three numbers. "
                                f"Find it. Each turn, either test a triple, replying 'Test Case: (x, y, z)' - I answer "
                                f"True or False - or end the game with your answer, replying "
                                f"'Final Guess: lambda x, y, z: <Python expression>'. You have {self.max_tests} tests; "
                                "the guess must match the rule everywhere, not just on your tests.")]

    def step(self, action: str) -> Step:
        last = self.advance()
        guess = _GUESS.findall(action)
        if guess:
            expr = guess[-1].strip()
            right = self.check(expr)
            return self.end(float(right), right, expr, {"rule": self.rule, "tests": self.tests})
        test = _TEST.findall(action)
        if not test:
            return self.reply("Reply with 'Test Case: (x, y, z)' or 'Final Guess: lambda x, y, z: ...'.", 0.0, last,
                              False, None, {"tests": self.tests})
        if self.tests >= self.max_tests:
            return self.reply("No tests left: give your Final Guess.", 0.0, last, False, None, {"tests": self.tests})
        x, y, z = (_number(v) for v in test[-1])
        self.tests += 1
        value = _value(self.fn, (x, y, z))
        return self.reply(f"{value}\n{self.max_tests - self.tests} tests left.", 0.0, last, True,
                          f"test:{x},{y},{z}", {"tests": self.tests})

    def check(self, expr: str) -> bool:
        """Run the guess over every point in the sandbox and compare with the rule."""
        program = POINTS_CODE + f"\nimport hashlib\nf = {expr}\nprint(hashlib.sha256(signature(f).encode()).hexdigest())\n"
        res = self.sandbox.run_python(program)
        return res.ok and res.stdout.strip() == rule_signature(self.rule)


PROBES = [(1, 2, 3), (3, 2, 1), (2, 2, 2), (5, 5, 10), (2, 3, 6), (3, 4, 5), (-1, 2, 3), (4, 2, 0), (60, 30, 20),
          (7, 9, 8), (10, 2, 1), (-3, -3, 6), (12, 5, 9), (51, 40, 40), (6, 3, 5), (8, 1, 9), (2, 4, 8), (-5, 10, -5),
          (15, 25, 40), (20, 9, 7), (1, 1, 2), (13, 23, 1), (11, 6, 3), (0, 0, 0), (4, 4, 7), (9, 3, 27)]


class HypothesisPlayer:
    """Reference player: tests a fixed list of triples, then guesses the first of the
    known rules consistent with every answer."""

    def __init__(self, env: WILTEnv):
        self.rules, self.probes, self.seen = env.rules, list(PROBES[:env.max_tests]), []

    def act(self, messages: list[Message]) -> str:
        if len(self.seen) < len(self.probes) and self.seen and self.seen[-1][1] is None:
            self.seen[-1] = (self.seen[-1][0], messages[-1].content.startswith("True"))
        if len(self.seen) < len(self.probes):
            p = self.probes[len(self.seen)]
            self.seen.append((p, None))
            return f"Test Case: ({p[0]}, {p[1]}, {p[2]})"
        if self.seen[-1][1] is None:
            self.seen[-1] = (self.seen[-1][0], messages[-1].content.startswith("True"))
        for rule in self.rules:
            f = rule_fn(rule)
            if all(_value(f, p) == v for p, v in self.seen):
                return f"Final Guess: lambda x, y, z: {rule}"
        return "Final Guess: lambda x, y, z: False"
