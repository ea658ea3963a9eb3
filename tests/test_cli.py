import argparse
import inspect

import pytest

from turnrl.cli import main


def test_envs_lists_retry(capsys):
    assert main(["envs"]) == 0
    assert "retry" in capsys.readouterr().out


def test_check_env_on_builtin_and_user_env(capsys):
    assert main(["check-env", "retry"]) == 0
    assert main(["check-env", "tests.toy_envs:LengthEnv"]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_env_reports_a_broken_env(capsys):
    assert main(["check-env", "tests.envs.test_retry:BadReward"]) == 1
    assert "finite" in capsys.readouterr().err


def test_config_error_exits_2_and_names_the_field(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nstepz = 3\n")
    assert main(["train", str(p)]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err


def test_rollout_prints_trained_tokens_with_the_real_model(capsys):
    rc = main(["rollout", "-n", "1", "--task.multiple_choice", "true", "--env.max_turns", "2",
               "--rollout.max_new_tokens", "8"])
    out = capsys.readouterr().out
    assert rc == 0 and "=== episode" in out and "[[" in out and "--- turn 1" in out


def test_missing_model_path_is_one_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_eval_on_a_local_model_dir_prints_turn_metrics(tmp_path, tokenizer, capsys):
    import json

    from tests.conftest import make_tiny_model

    make_tiny_model().save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    rc = main(["eval", "--model", str(tmp_path / "m"), "--eval.num_tasks", "3", "--eval.pass_k", "2",
               "--env.max_turns", "2", "--rollout.max_new_tokens", "4", "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):])
    assert rc == 0 and set(metrics) >= {"succ@1", "succ@2", "pass@2", "self_correction_rate", "invalid_format_rate"}
    assert metrics["succ@1"] <= metrics["succ@2"]
    saved = json.loads((tmp_path / "res" / "eval.json").read_text())
    assert saved["metrics"] == metrics and saved["meta"]["seeds"] == [0, 1, 2]
    assert len((tmp_path / "res" / "episodes.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "res" / "report" / "report.html").is_file()


def test_eval_runs_in_the_configured_dtype(tmp_path, tokenizer, capsys, monkeypatch):
    import json

    from tests.conftest import make_tiny_model
    from turnrl import learner

    make_tiny_model().save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    args = ["eval", "--model", str(tmp_path / "m"), "--eval.num_tasks", "2", "--eval.pass_k", "0", "--env.max_turns", "1",
            "--rollout.max_new_tokens", "3", "--eval.collapse_sample", "0", "--no-report"]
    dtypes = []
    for i, (supported, dtype) in enumerate([(True, "bf16"), (False, "bf16"), (True, "fp32")]):
        monkeypatch.setattr(learner, "bf16_supported", lambda: supported)  # both branches on any machine
        assert main(args + ["--model.dtype", dtype, "--out", str(tmp_path / f"r{i}")]) == 0
        dtypes.append(json.loads((tmp_path / f"r{i}" / "eval.json").read_text())["meta"]["dtype"])
    assert dtypes == ["bfloat16", "float32", "float32"]
    assert capsys.readouterr().err.count("no native bf16 kernels") == 1  # said once, for the machine without


def test_report_of_a_malformed_run_dir_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["report", str(tmp_path / "run")]) == 1
    assert f"{tmp_path / 'run'}: no eval.json and no evals/step_*/eval.json" in capsys.readouterr().err


def test_bad_data_file_is_reported_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import turnrl.build
    import turnrl.trainer

    def no_model(cfg):  # the model must not be needed to find this error
        raise AssertionError("model loaded before the data was checked")

    monkeypatch.setattr(turnrl.build, "build_policy", no_model)
    monkeypatch.setattr(turnrl.build, "load_for_inference", no_model)
    monkeypatch.setattr(turnrl.trainer, "build_policy", no_model)
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"question": "q"}\n')
    for cmd in ("train", "eval", "rollout"):
        assert main([cmd, "--task.source", "file", "--task.path", str(bad)]) == 1
        assert "d.jsonl:1: missing field 'answer'" in capsys.readouterr().err


def test_compare_of_stored_results_prints_one_table(tmp_path, capsys):
    from tests.report.test_report import EPISODES, result

    result().save(tmp_path / "a")
    result().save(tmp_path / "b")
    result(EPISODES[:2]).save(tmp_path / "c")  # other seeds
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path / 'a'} | 5 | 0.200 [" in out and f"| {tmp_path / 'b'} | 5 | 0.200 [" in out
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.json").is_file()
    assert main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "cmp2")]) == 1
    assert "was evaluated on other seeds or turns than" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--endpoint", "http://127.0.0.1:9/v1", "--model", "smollm2-135m"], "--endpoint names the model to evaluate"),
    (["serve", "smollm2-135m", "--prefix-cache-tokens", "-1"], "--prefix-cache-tokens -1: must be >= 0 (0 = off)"),
    (["eval", "--model", "x", "--model.name", "y"], "--model is a shortcut for --model.name: give one of them"),
    (["check-env", "retry", "--env.name", "wordle"], "check-env retry: the env is named once"),
])
def test_conflicting_or_out_of_range_options_are_config_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["envs"], ["algos"], ["report", "runs/x"], ["serve", "smollm2-135m"]])
def test_a_command_without_a_run_config_refuses_overrides(cmd, capsys):
    assert main([*cmd, "--algo.name", "rloo"]) == 2
    assert f"turnrl {cmd[0]} takes no config overrides: --algo.name rloo" in capsys.readouterr().err


def test_no_arguments_prints_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "rollout", "serve", "report", "envs", "algos", "check-env"):
        assert f"\n    {cmd}" in out


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"turnrl {version('turnrl')}\n"


@pytest.mark.parametrize("cmd, says", [("serve", "/v1"), ("report", "report.html"), ("envs", "--env.name"),
                                        ("check-env", "PYTHONPATH")])
def test_help_of_each_command_describes_it(cmd, says, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and says in " ".join(out.split())


def test_every_command_line_option_has_a_help_text():
    from turnrl.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert missing == []


def test_envs_prints_each_description_whole(capsys):
    from turnrl.envs import registered

    assert main(["envs"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # guess_number's first paragraph spans two docstring lines; the second used to be cut off
    assert "binary search always wins (2**7 > 100)." in out
    for name, factory in registered().items():
        first = " ".join(inspect.cleandoc(factory.__doc__).split("\n\n")[0].split()).replace("``", "")
        assert f"{name} {first}" in out
    assert "retry UFO: up to max_turns attempts at a checkable task, content-free feedback between them. (tasks)" in out


def test_algos_lists_every_registered_algorithm_with_what_it_reads(capsys):
    from turnrl.algos import ALGORITHMS

    assert main(["algos"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("common [algo] fields: kl_coef, masks, minibatches, ppo_epochs, top_variance_fraction\n")
    for name in ALGORITHMS:
        assert f"\n{name} " in out or f"\n{name}:" in out
    assert "gigpo (arXiv 2505.10978)" in out and "reads: clip_high, clip_low, gigpo_gamma, gigpo_step_weight, loss_agg; needs: state" in out


def test_output_directories_that_cannot_be_made_fail_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    # train: before the model loads (the default model would take seconds); eval: before the evaluation
    assert main(["train", "--train.out_dir", str(afile)]) == 1
    assert main(["train", "--train.out_dir", str(afile / "run")]) == 1
    assert main(["eval", "--out", str(afile), "--eval.num_tasks", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: train.out_dir {afile}: a file is there, not a directory",
                   f"error: train.out_dir {afile / 'run'}: a file stands on its path ({afile})",
                   f"error: --out {afile}: a file is there, not a directory"]
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # nothing made by the failed commands
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["eval", "--out", str(run), "--eval.num_tasks", "1"]) == 2
    assert f"--out {run} holds a training run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["serve", "smollm2-135m", "--port", "99999"], "argument --port: 99999 is not in 0-65535"),
    (["serve", "smollm2-135m", "--max-batch", "0"], "argument --max-batch: must be >= 1, got 0"),
    (["rollout", "-n", "0"], "argument -n: must be >= 1, got 0"),
    (["eval", "--concurrency", "x"], "argument --concurrency: 'x' is not an integer"),
])
def test_out_of_range_options_are_refused_before_anything_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
