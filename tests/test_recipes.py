"""The training-rollout recipes by hand: MinD's fewer-turns penalty, WMAct's turn-cap
schedule, REFUEL's branch points; and each through the trainer's ``collect``."""
import random
import re

import pytest

from tests.conftest import make_tiny_model
from tests.test_trainer import cfg_for
from turnrl.config import ConfigError, load_config
from turnrl.envs.base import Env
from turnrl.recipes import apply_turn_penalty, branch_points, turn_cap
from turnrl.trainer import Trainer
from turnrl.types import Episode, Message, Step, Turn


class SolveAt(Env):
    """Solved (reward 1, ``correct``) at turn ``solve_at``, whatever the reply; wrong before."""

    def __init__(self, max_turns: int = 4, split: str = "train", solve_at: int = 3):
        self.max_turns, self.split, self.solve_at = max_turns, split, solve_at

    def reset(self, seed: int):
        self.t = 0
        return [Message("user", f"Task {seed % 5}.")]

    def step(self, action: str) -> Step:
        self.t += 1
        solved = self.t == self.solve_at
        out = not solved and self.t >= self.max_turns
        return Step([] if solved or out else [Message("user", "Again.")], 1.0 if solved else 0.0, solved, out,
                    valid=True, correct=solved, answer=str(self.t))


class NoCap(Env):
    """Takes no max_turns (a cap schedule cannot reach it) and reports no Step.correct."""

    max_turns = 2

    def reset(self, seed: int):
        return [Message("user", "Hi.")]

    def step(self, action: str) -> Step:
        return Step([], 0.0, True, False, valid=True)  # no notion of a right answer (correct None)


def ep(correct_at, n, gid=0, frozen=0, reward=1.0):
    turns = [Turn(obs_ids=[1], action_ids=[5], action_logprobs=[0.0], text=f"r{k}",
                  reward=reward if k + 1 == correct_at else 0.0, frozen=k < frozen,
                  info={"correct": k + 1 == correct_at}) for k in range(n)]
    return Episode(turns=turns, group_id=gid)


# -- MinD: fewer turns -------------------------------------------------------------------

def test_turn_penalty_by_hand():
    eps = [ep(1, 1), ep(3, 3), ep(None, 4), ep(2, 3, frozen=1)]
    assert apply_turn_penalty(eps, 0.25) == 2
    assert [t.reward for t in eps[0].turns] == [1.0]  # solved at once: no penalty
    assert [t.reward for t in eps[1].turns] == [0.0, 0.0, 0.5]  # 1 - 0.25 * 2
    assert [t.reward for t in eps[2].turns] == [0.0] * 4  # unsolved: untouched
    assert [t.reward for t in eps[3].turns] == [0.0, 0.75, 0.0]  # the replayed turn counts: 1 - 0.25 * 1



def test_turn_penalty_never_takes_a_right_answer_below_zero():
    # UFO's reward for a fifth-turn solve, 1/16: 1/16 - 0.1 * 4 < 0 -> 0, level with an unsolved episode
    late, early = ep(5, 5, reward=0.0625), ep(2, 2, reward=1.0)
    assert apply_turn_penalty([late, early], 0.1) == 2
    assert late.turns[-1].reward == 0.0 and early.turns[-1].reward == pytest.approx(0.9)
    repeated = ep(5, 5, reward=0.0625 - 0.3)  # UFO's repetition penalty on the solving turn: already below 0
    assert apply_turn_penalty([repeated], 0.1) == 0 and repeated.turns[-1].reward == pytest.approx(-0.2375)


def test_turn_penalty_in_training_rollouts(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--env.name", "tests.test_recipes:SolveAt", "--env.max_turns", "4",
                                   "--rollout.turn_penalty", "0.2"])
    eps = Trainer(cfg, make_tiny_model(), tokenizer).collect(0)
    assert len(eps) == 6
    assert all([t.reward for t in e.turns] == pytest.approx([0.0, 0.0, 0.6]) for e in eps)  # 1 - 0.2 * 2


def test_turn_penalty_needs_an_env_that_reports_correct(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--rollout.turn_penalty", "0.2"])  # LengthEnv: correct is a bool...
    Trainer(cfg, make_tiny_model(), tokenizer).collect(0)  # ... so this runs
    cfg = load_config(None, ["--env.name", "tests.test_recipes:NoCap", "--rollout.turn_penalty", "0.2",
                             "--rollout.max_new_tokens", "4", "--train.out_dir", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="rollout.turn_penalty needs an env that reports Step.correct"):
        Trainer(cfg, make_tiny_model(), tokenizer).collect(0)


# -- WMAct: turn-cap annealing -----------------------------------------------------------

def test_turn_cap_by_hand():
    sched = [[2, 3], [5, 2], [9, 1]]
    assert [turn_cap(sched, s, 4) for s in range(11)] == [4, 4, 3, 3, 3, 2, 2, 2, 2, 1, 1]
    assert turn_cap([], 7, 5) == 5


def test_turn_cap_schedule_limits_training_rollouts_not_eval(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--env.name", "tests.test_recipes:SolveAt", "--env.max_turns", "4",
                                   "--rollout.max_turns_schedule", "[[1, 2], [2, 1]]"])
    trainer = Trainer(cfg, make_tiny_model(), tokenizer)
    lengths = [{len(e.turns) for e in trainer.collect(step)} for step in range(3)]
    assert lengths == [{3}, {2}, {1}]  # solved at turn 3 under the env's cap 4; then capped at 2, 1
    assert trainer.make_env().max_turns == 4  # eval builds its envs from env.max_turns
    from turnrl.build import env_factory

    assert env_factory(cfg, "eval")().max_turns == 4


@pytest.mark.parametrize("schedule, message", [
    ("[[3, 2], [1, 1]]", "steps [3, 1] must be >= 0 and strictly increasing"),
    ("[[0, 0]]", "every cap must be >= 1"),
])
def test_turn_cap_schedule_errors(schedule, message):
    with pytest.raises(ConfigError, match="rollout.max_turns_schedule: " + re.escape(message)):
        load_config(None, ["--rollout.max_turns_schedule", schedule])


def test_turn_cap_schedule_must_lower_a_cap_the_env_takes(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--rollout.max_turns_schedule", "[[0, 3]]"])  # LengthEnv runs 2 turns
    with pytest.raises(ConfigError, match="cap 3 is above the env's max_turns 2"):
        Trainer(cfg, make_tiny_model(), tokenizer)
    cfg = load_config(None, ["--env.name", "tests.test_recipes:NoCap", "--rollout.max_turns_schedule", "[[0, 1]]",
                             "--train.out_dir", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match="env 'tests.test_recipes:NoCap' takes no max_turns argument"):
        Trainer(cfg, make_tiny_model(), tokenizer)


# -- REFUEL: branch points ---------------------------------------------------------------

def test_branch_points_one_per_group_with_h_inside_the_episode():
    eps = [ep(None, 1, gid=0), ep(None, 3, gid=1), ep(None, 2, gid=1), ep(None, 4, gid=2), ep(None, 3, gid=3, frozen=1)]
    got = branch_points(eps, 5, random.Random(0))
    assert sorted(e.group_id for e, _ in got) == [1, 2]  # group 0: one turn only; group 3: replayed turns
    for e, h in got:
        assert 1 <= h <= len(e.turns) - 1
    again = branch_points(eps, 5, random.Random(0))
    assert [(id(e), h) for e, h in got] == [(id(e), h) for e, h in again]
    assert len(branch_points(eps, 1, random.Random(0))) == 1
    # h is uniform on [1, 3] for a 4-turn episode: 3000 draws hit each value about 1000 times
    rng = random.Random(1)
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[branch_points([eps[3]], 1, rng)[0][1] - 1] += 1
    assert all(900 < c < 1100 for c in counts)


def test_rise_and_branch_groups_get_their_own_group_ids(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--env.name", "tests.test_recipes:SolveAt", "--env.max_turns", "4",
                                   "--rollout.rise_groups", "1", "--rollout.branch_groups", "2"])
    eps = Trainer(cfg, make_tiny_model(), tokenizer).collect(0)
    main, rise, branch = eps[:6], eps[6:9], eps[9:]
    assert [e.group_id for e in rise + branch] == [-1] * 3 + [-2] * 3 + [-3] * 3
    firsts = {(m.seed, m.turns[0].text) for m in main}
    assert all(sum(t.frozen for t in e.turns) == 1 and (e.seed, e.turns[0].text) in firsts for e in rise)
    for e in branch:  # SolveAt runs 3 turns: h is 1 or 2, and the episode still ends solved at turn 3
        h = sum(t.frozen for t in e.turns)
        assert 1 <= h <= 2 and len(e.turns) == 3 and e.turns[-1].info["correct"]
        assert any(m.seed == e.seed and [t.text for t in m.turns[:h]] == [t.text for t in e.turns[:h]] for m in main)
