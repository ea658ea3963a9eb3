from pathlib import Path

import pytest
import torch

from tests.conftest import needs_gsm8k
from turnrl.build import env_factory
from turnrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@needs_gsm8k
def test_gsm8k_config_builds_a_retry_env_on_the_real_data(monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data path is relative to the repo root
    cfg = load_config(ROOT / "configs" / "gsm8k.toml")
    train, ev = env_factory(cfg, "train")(), env_factory(cfg, "eval")()
    assert len(train.tasks) + len(ev.tasks) == 7473 and len(ev.tasks) == 200
    msgs = train.reset(0)
    assert msgs[-1].content.endswith("as \\boxed{number}.")
    answer = train.task.answer
    wrong = train.step(f"The answer is \\boxed{{{int(float(answer)) + 1}}}")
    assert not wrong.terminated and wrong.messages[0].content == "Incorrect. Please think again."
    right = train.step(f"So \\boxed{{{answer}}}")
    assert right.terminated and right.reward == pytest.approx(0.5)  # solved at attempt 2: 0.5**1
    assert {t.id for t in train.tasks} .isdisjoint({t.id for t in ev.tasks})


def test_custom_env_gets_split_and_eval_seeds_apart():
    cfg = load_config(None, ["--env.name", "tests.toy_envs:LengthEnv", "--env.max_turns", "3"])
    env = env_factory(cfg, "eval")()
    assert env.split == "eval" and env.max_turns == 3


def test_a_checkpoint_directory_loads_for_inference(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_model
    from tests.test_trainer import cfg_for
    from turnrl.build import load_for_inference
    from turnrl.trainer import Trainer

    make_tiny_model().save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    summary = Trainer(cfg_for(tmp_path, steps=1, extra=["--model.name", str(tmp_path / "m")])).train()
    model, tok = load_for_inference(str(tmp_path / "run" / "checkpoints" / "step_000001"))
    final = AutoModelForCausalLM.from_pretrained(summary["final_model"]).state_dict()
    start = make_tiny_model().state_dict()
    got = model.state_dict()
    assert all(torch.equal(got[k], final[k]) for k in final)  # the checkpoint's weights, not the base's
    assert any(not torch.equal(got[k], start[k]) for k in start)
    assert tok.chat_template == tokenizer.chat_template


def _jsonl(path, questions):
    import json

    path.write_text("".join(json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(questions)))
    return str(path)


def test_eval_path_evaluates_on_its_own_file_less_questions_the_training_file_asks(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", ["q1", "q2", "q3"])
    test = _jsonl(tmp_path / "test.jsonl", ["t1", "q2", "t2"])  # q2 is a training question too
    cfg = load_config(None, ["--task.source", "file", "--task.path", train, "--task.eval_path", test])
    tr, ev = env_factory(cfg, "train")(), env_factory(cfg, "eval")()
    assert [tr.tasks[i].question for i in range(len(tr.tasks))] == ["q1", "q2", "q3"]  # the whole training file
    assert [ev.tasks[i].question for i in range(len(ev.tasks))] == ["t1", "t2"] and ev.tasks.dropped == 1
    from turnrl.config import ConfigError

    with pytest.raises(ConfigError, match="eval_size would be ignored: task.eval_path is set"):
        load_config(None, ["--task.source", "file", "--task.path", train, "--task.eval_path", test, "--task.eval_size", "1"])


def test_a_question_repeated_in_the_file_never_lands_in_both_splits(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ["a", "b", "c", "d", "e", "f"] + ["a", "b", "c", "d", "e", "f"])
    cfg = load_config(None, ["--task.source", "file", "--task.path", path, "--task.eval_size", "3"])
    tr, ev = env_factory(cfg, "train")().tasks, env_factory(cfg, "eval")().tasks
    held = {ev[i].question for i in range(len(ev))}
    assert len(ev) == 3 and all(tr[i].question not in held for i in range(len(tr)))
    assert len(tr) + tr.dropped == 9 and tr.dropped >= 1  # 9 non-eval rows; the copies of eval questions dropped


def test_games_get_their_split_and_eval_seeds_from_zero():
    from turnrl.build import seed_offset

    cfg = load_config(ROOT / "configs" / "guess_number.toml")
    ev = env_factory(cfg, "eval")()
    assert ev.split == "eval" and (ev.low, ev.high, ev.max_turns) == (1, 100, 7) and ev.num_instances() == 50
    assert seed_offset(cfg, "eval") == 0
    custom = load_config(None, ["--env.name", "tests.envs.test_check:Coin"])
    assert seed_offset(custom, "eval") == 0  # Coin takes split


def test_max_turns_for_an_env_class_that_takes_none_is_an_error():
    from turnrl.config import ConfigError

    cfg = load_config(None, ["--env.name", "tests.test_rollout:NeverEnds", "--env.max_turns", "5"])
    with pytest.raises(ConfigError, match="env.max_turns would be ignored: tests.test_rollout:NeverEnds takes no "
                                          "max_turns argument"):
        env_factory(cfg, "train")
    env_factory(load_config(None, ["--env.name", "tests.test_rollout:NeverEnds"]), "train")  # unset: its own 3


def test_a_model_backed_simulated_user_is_built_by_the_build_layer_not_the_env():
    from turnrl.endpoint import ChatEndpoint
    from turnrl.envs import ArithmeticTasks, FeedbackEnv, ModelUser

    cfg = load_config(None, ["--env.name", "feedback", "--env.kwargs", '{"user": "http://127.0.0.1:9/v1#m", "persona": "a coach"}'])
    env = env_factory(cfg, "eval")()
    assert isinstance(env.user, ModelUser) and isinstance(env.user.backend, ChatEndpoint) and env.user.persona == "a coach"
    with pytest.raises(ValueError, match="turnrl.build.build_user"):
        FeedbackEnv(ArithmeticTasks("eval"), user="smollm2-135m")
