"""`turnrl train` runs 3 steps on every registered env with a tiny model (and the real
tokenizer): the envs plug into rollouts, the learner, evaluation and the report."""
import json

import pytest

from tests.conftest import make_tiny_model
from turnrl.config import load_config
from turnrl.envs import registered
from turnrl.tools.sandbox import bwrap_path
from turnrl.trainer import Trainer

ENVS = {
    "retry": [],
    "feedback": ["--env.max_turns", "2", "--task.digits", "1"],
    "tir": ["--env.max_turns", "2", "--task.digits", "1"],
    "search": ["--env.max_turns", "2"],
    "guess_number": ["--env.max_turns", "3"],
    "wordle": ["--env.max_turns", "2"],
    "maze": ["--env.max_turns", "3"],
    "frozen_lake": ["--env.max_turns", "3"],
    "twenty_questions": ["--env.max_turns", "3"],
    "wilt": ["--env.kwargs", '{"max_tests": 2}'],
    "textarena": ["--env.kwargs", '{"game": "GuessTheNumber-v0", "max_turns": 3}'],
    "gym": ["--env.kwargs", '{"env_id": "FrozenLake-v1", "max_turns": 3}'],
}


def test_every_registered_env_is_covered():
    assert set(ENVS) == set(registered())


@pytest.mark.parametrize("name", sorted(ENVS))
def test_three_training_steps(name, tmp_path, tokenizer):
    if name in ("tir", "wilt") and bwrap_path() is None:
        pytest.skip("bubblewrap not installed (.ci/run installs it)")
    cfg = load_config(None, ["--env.name", name, *ENVS[name],
                             "--rollout.prompts_per_step", "2", "--rollout.group_size", "2", "--rollout.max_new_tokens", "5",
                             "--rollout.temperature", "1.0", "--train.steps", "3", "--train.out_dir", str(tmp_path / "run"),
                             "--train.checkpoint_every", "0", "--eval.num_tasks", "2", "--eval.pass_k", "0",
                             "--eval.before", "false", "--log.progress", "false", "--algo.masks", "[]"])
    summary = Trainer(cfg, make_tiny_model(), tokenizer).train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    # no mask or filter: every step takes the learner's forward/backward and one optimizer step
    assert all(r["update_skipped"] == 0 and r["optimizer_steps"] == 1 and r["trained_tokens"] > 0 for r in train)
    assert summary["eval_after"]["episodes"] == 2 and (tmp_path / "run" / "report" / "report.html").is_file()
