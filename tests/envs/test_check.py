"""The env contract: typed Step fields, check_env / check_split, class and step errors."""
import ast
from functools import partial
from pathlib import Path

import pytest

from turnrl.envs import ArithmeticTasks, Env, EnvCheckError, EnvStepError, GuessNumberEnv, RetryEnv, check_env, check_split
from turnrl.envs.games import FrozenLakeEnv, MazeEnv, TwentyQuestionsEnv, WordleEnv
from turnrl.envs.search import SearchEnv
from turnrl.envs.tasks import Task
from turnrl.rollout import step_envs
from turnrl.types import Message, Step


class Coin(Env):
    """Instance = seed % 4 in both splits unless ``disjoint``: a split that overlaps."""

    max_turns = 1

    def __init__(self, split="train", correct=True, disjoint=False):
        self.split, self.correct, self.disjoint = split, correct, disjoint

    def num_instances(self):
        return 4

    def reset(self, seed):
        self.secret = seed % 4 + (4 if self.disjoint and self.split == "eval" else 0)
        return [Message("user", "Heads or tails?")]

    def instance(self):
        return self.secret

    def step(self, action):
        return Step([], 0.0, True, False, valid=True, correct=("yes" if self.correct == "str" else
                                                                (None if self.correct is None else False)))


def test_step_fields_are_typed_and_info_may_not_carry_them():
    s = Step([], 1.0, True, False, correct=True, answer="42")
    assert (s.valid, s.correct, s.answer) == (True, True, "42")
    assert Step([], 0.0, False, True).correct is None  # no notion of a right answer
    assert s.record() == {"valid": True, "correct": True, "answer": "42"}
    with pytest.raises(ValueError, match=r"Step.info sets \['correct'\].*Step\(\.\.\., correct=\.\.\.\)"):
        Step([], 1.0, True, False, {"correct": True})  # the old, silently-ignored way


def test_check_env_checks_field_types_and_notes_an_env_without_correct():
    with pytest.raises(EnvCheckError, match=r"step\(\)\.correct must be a bool or None, got 'yes'"):
        check_env(Coin(correct="str"))
    with pytest.warns(UserWarning, match="never reports Step.correct"):
        notes = check_env(Coin(correct=None))
    assert len(notes) == 1 and "Succ@k" in notes[0]
    assert check_env(Coin()) == []


def test_check_env_rejects_an_attribute_that_hides_a_hook():
    class Hidden(Coin):
        def reset(self, seed):
            self.state = {}
            return super().reset(seed)

    with pytest.raises(EnvCheckError, match=r"env.state is a dict attribute"):
        check_env(Hidden())


def test_check_split_finds_eval_instances_that_are_training_instances():
    with pytest.raises(EnvCheckError, match=r"Coin: 4 eval instance\(s\) are also training instances"):
        check_split(partial(Coin, "train"), partial(Coin, "eval"))
    assert "4 eval instances" in check_split(partial(Coin, "train"), partial(Coin, "eval", disjoint=True))


@pytest.mark.parametrize("cls,sizes", [(GuessNumberEnv, (80, 20)), (WordleEnv, (800, 200)),
                                       (TwentyQuestionsEnv, (30, 8)), (MazeEnv, (None, None)),
                                       (FrozenLakeEnv, (None, None)), (SearchEnv, (24, 12))],
                         ids=lambda c: getattr(c, "__name__", ""))
def test_every_env_holds_out_instances_never_trained_on(cls, sizes):
    train, ev = partial(cls, split="train"), partial(cls, split="eval")
    assert (train().num_instances(), ev().num_instances()) == sizes
    check_split(train, ev, probe=300)


def test_retry_env_split_and_distinct_questions():
    train, ev = partial(RetryEnv, ArithmeticTasks("train")), partial(RetryEnv, ArithmeticTasks("eval"))
    assert ev().num_instances() == 796 and train().num_instances() == 7304  # of the 8,100 sums of two 2-digit numbers
    check_split(train, ev, probe=500)


def test_gold_answers_and_states():
    g = GuessNumberEnv(split="eval")
    g.reset(0)
    assert g.gold_answer() == str(g.secret) and g.state() == (g.secret, ())
    g.step("50")
    assert g.state() == (g.secret, (("50", "Higher." if g.secret > 50 else "Lower."),))
    m = MazeEnv()
    m.reset(0)
    assert m.state() == (m.instance(), (1, 1)) and m.gold_answer() is None
    m.step("up")  # a wall: the position stays
    assert m.state()[1] == (1, 1)
    w = WordleEnv(split="eval")
    w.reset(3)
    assert w.gold_answer() == w.secret and w.state() == (w.secret, ())
    t = TwentyQuestionsEnv()
    t.reset(0)
    assert t.gold_answer() == f"Is it a {t.secret}?"
    r = RetryEnv(ArithmeticTasks("eval"))
    r.reset(0)
    assert r.gold_answer() == r.task.answer and r.state() == (0, frozenset())
    r.step("1")
    r.step("no idea")
    assert r.state() == (2, frozenset({"1", None}))
    boxed = RetryEnv([Task("t", "What is 6 * 7? Put it in \\boxed{}.", "42")])
    boxed.reset(0)
    tagged = RetryEnv([Task("t", "What is 6 * 7?", "42", extractor="answer_tag")])
    tagged.reset(0)
    assert (boxed.gold_answer(), tagged.gold_answer()) == ("\\boxed{42}", "<answer>42</answer>")
    assert boxed.step(boxed.gold_answer()).correct and tagged.step(tagged.gold_answer()).correct


class Raises(Coin):
    def step(self, action):
        raise KeyError("board")


def test_an_env_that_raises_in_step_is_named_with_seed_and_turn():
    env = Raises()
    env.reset(7)
    with pytest.raises(EnvStepError, match=r"^env Raises: step\(\) at seed 7, turn 3 raised KeyError: 'board'$"):
        step_envs([env], ["heads"], [7], 2)
    with pytest.raises(EnvStepError, match=r"seed 0, turn 1"):
        check_env(Raises())


def test_envs_never_import_the_layers_that_build_them():
    root = Path(__file__).resolve().parents[2] / "turnrl" / "envs"
    bad = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{f.name}: {n}" for n in names if n.split(".")[:2] in (["turnrl", "build"], ["turnrl", "evaluate"],
                                                                            ["turnrl", "trainer"], ["turnrl", "cli"])]
    assert bad == []


class NoStep:
    """A user's env that forgot ``step``."""

    max_turns = 1

    def reset(self, seed):
        return [Message("user", "hi")]


class HalfEnv(Env):
    def reset(self, seed):
        return [Message("user", "hi")]


def test_a_class_without_reset_or_step_is_one_line_before_anything_is_built(capsys):
    from turnrl.build import env_factory
    from turnrl.cli import main
    from turnrl.config import load_config

    for name, cls in (("tests.envs.test_check:NoStep", "NoStep"), ("tests.envs.test_check:HalfEnv", "HalfEnv")):
        with pytest.raises(ValueError, match=rf"class {cls} does not define step\(\)"):
            env_factory(load_config(None, ["--env.name", name]), "train")  # the trainer builds this before the model
        assert main(["check-env", name]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"class {cls} does not define step()" in err and "Traceback" not in err


def test_check_env_command_reports_the_split(capsys):
    from turnrl.cli import main

    assert main(["check-env", "guess_number"]) == 0
    assert "GuessNumberEnv: 20 eval instances (20 checked), none among 80 training instances" in capsys.readouterr().out
