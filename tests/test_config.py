import json

import pytest

from turnrl.config import ConfigError, load_config, parse_overrides


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_are_the_ufo_recipe():
    c = load_config(None)
    assert (c.env.max_turns, c.env.success_decay, c.env.repetition_penalty, c.env.format_penalty) == (5, 0.5, 0.5, 0.1)
    assert c.env.feedback == "Incorrect. Please think again."
    assert (c.algo.clip_low, c.algo.clip_high) == (0.2, 0.28)


def test_unknown_key_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.toml: train\.learning_rate: unknown key"):
        load_config(write(tmp_path, "[train]\nlearning_rate = 1e-5\n"))


def test_wrong_type_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.group_size"):
        load_config(write(tmp_path, "[rollout]\ngroup_size = 'eight'\n"))


@pytest.mark.parametrize("text,field", [
    ("[model]\nlora_rank = 8\n", "lora_rank"),
    ("[algo]\nname = 'dr_grpo'\nscale_by_std = false\n", "scale_by_std"),
    ("[algo]\ntop_variance_fraction = 0.5\n", "top_variance_fraction"),
    ("[algo]\nname = 'grpo'\ngigpo_gamma = 0.9\n", "gigpo_gamma"),
    ("[algo]\nname = 'rloo'\nscale_by_std = false\n", "scale_by_std"),
    ("[task]\npath = 'x.jsonl'\n", "path"),
    ("[task]\nsource = 'file'\npath = 'x.jsonl'\ndigits = 3\n", "digits"),
    ("[env]\nname = 'my.mod:Env'\nfeedback = 'no'\n", "feedback"),
])
def test_knobs_the_choice_would_ignore_are_errors(tmp_path, text, field):
    with pytest.raises(ConfigError, match=rf"{field}.*would be ignored"):
        load_config(write(tmp_path, text))


def test_overrides_are_typed_and_validated():
    assert parse_overrides(["--train.lr", "1e-4", "--task.multiple_choice", "true", "--train.out_dir=x"]) == {
        "train": {"lr": 1e-4, "out_dir": "x"}, "task": {"multiple_choice": True}}
    c = load_config(None, ["--train.lr", "3e-6", "--rollout.group_size", "4"])
    assert c.train.lr == 3e-6 and c.rollout.group_size == 4
    with pytest.raises(ConfigError, match=r"overrides: rollout\.group_size"):
        load_config(None, ["--rollout.group_size", "1"])
    with pytest.raises(ConfigError, match="--section.key"):
        parse_overrides(["lr", "1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[train\n"))


def test_shipped_configs_are_valid():
    from pathlib import Path

    for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        load_config(p)


def test_unknown_algorithm_names_the_registry(tmp_path):
    with pytest.raises(ConfigError, match=r"algo: unknown algorithm 'ppo_magic'; known: .*grpo.*rloo"):
        load_config(write(tmp_path, "[algo]\nname = 'ppo_magic'\n"))


def test_an_option_the_algorithm_ignores_names_both(tmp_path):
    with pytest.raises(ConfigError, match=r"algo: igpo_gamma would be ignored: algorithm 'gigpo' does not read it"):
        load_config(write(tmp_path, "[algo]\nname = 'gigpo'\nigpo_gamma = 0.5\n"))


def test_unknown_mask(tmp_path):
    with pytest.raises(ConfigError, match=r"masks: unknown \['nope'\]"):
        load_config(write(tmp_path, "[algo]\nmasks = ['void', 'nope']\n"))


def test_pass_temperature_without_pass_at_k_is_an_error():
    with pytest.raises(ConfigError, match=r"eval: pass_temperature would be ignored: eval.pass_k is 0"):
        load_config(None, ["--eval.pass_k", "0", "--eval.pass_temperature", "1.0"])
    assert load_config(None, ["--eval.pass_k", "0"]).eval.pass_k == 0


def test_refuel_takes_no_ppo_clip(tmp_path):
    with pytest.raises(ConfigError, match=r"clip_high would be ignored: algorithm 'refuel'"):
        load_config(write(tmp_path, "[algo]\nname = 'refuel'\nclip_high = 0.3\n"))


@pytest.mark.parametrize("args,field", [(["--rollout.window_turns", "2"], "window_turns"),
                                        (["--rollout.context", "window", "--rollout.state_tag", "mem"], "state_tag")])
def test_context_fields_the_strategy_ignores_are_errors(args, field):
    with pytest.raises(ConfigError, match=rf"rollout: {field} would be ignored: rollout.context is '(full|window)'"):
        load_config(None, args)
    assert load_config(None, ["--rollout.context", "markovian", "--rollout.state_tag", "mem"]).rollout.state_tag == "mem"


@pytest.mark.parametrize("toml, message", [
    ('[rollout]\ngroup_size = "4"\n', r"rollout\.group_size: expected a number, got '4'"),
    ('[train]\nlr = "1e-5"\n', r"train\.lr: expected a number, got '1e-5'"),
    ('[task]\nmultiple_choice = "yes"\n', r"task\.multiple_choice: expected true or false, got 'yes'"),
    ('[task]\nmultiple_choice = 1\n', r"task\.multiple_choice: expected true or false, got 1"),
    ('[rollout]\ngroup_size = true\n', r"rollout\.group_size: expected a number, got True"),
    ('[train]\nlr = inf\n', r"train\.lr: Input should be a finite number"),
    ('[rollout]\ntemperature = inf\n', r"rollout\.temperature: Input should be a finite number"),
    ('[train]\nbetas = [1.5, 0.999]\n', r"train\.betas: each must be in \[0, 1\), got \[1\.5, 0\.999\]"),
    ('[train]\nbetas = ["0.9", 0.999]\n', r"train\.betas: expected a number, got '0\.9'"),
    ('[rollout]\nmax_turns_schedule = [[true, 2]]\n', r"rollout\.max_turns_schedule: expected a number, got True"),
])
def test_values_of_the_wrong_type_or_infinite_are_errors_naming_the_field(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, toml))


def test_an_int_is_a_float_where_a_float_is_asked(tmp_path):
    assert load_config(write(tmp_path, "[train]\nlr = 1\n")).train.lr == 1.0


def test_an_unknown_env_with_a_task_section_is_reported_as_unknown(tmp_path):
    from turnrl.build import env_factory

    cfg = load_config(write(tmp_path, '[env]\nname = "mazee"\n[task]\ndigits = 2\n'))  # not "takes no task source"
    with pytest.raises(ValueError, match="unknown env 'mazee'; registered: .*maze"):
        env_factory(cfg, "train")


@pytest.mark.parametrize("template, message", [
    ("{question} {oops}", r"task\.prompt_template: '\{question\} \{oops\}': only \{question\} can be filled in .*KeyError"),
    ("Q: {0}", r"task\.prompt_template: 'Q: \{0\}' has no \{question\}"),
])
def test_a_prompt_template_that_cannot_be_filled_is_an_error(tmp_path, template, message):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["--task.source", "file", "--task.path", str(data), "--task.prompt_template", json.dumps(template)])
    literal = load_config(None, ["--task.source", "file", "--task.path", str(data), "--task.prompt_template", '"{{x}} {question}"'])
    assert literal.task.prompt_template == "{{x}} {question}"


def test_config_files_that_are_not_text_or_not_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[train]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not UTF-8 text \(invalid start byte at byte 0\)"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"task\.operators: String should match pattern"):
        load_config(None, ["--task.operators", "/x"])


def test_numbers_json_does_not_read_are_numbers_on_the_command_line():
    assert parse_overrides(["--rollout.temperature", ".7", "--train.steps", "1_0", "--train.lr", "5."]) == {
        "rollout": {"temperature": 0.7}, "train": {"steps": 10, "lr": 5.0}}
    assert parse_overrides(["--train.out_dir", "runs/x.5", "--env.name", "inf"]) == {
        "train": {"out_dir": "runs/x.5"}, "env": {"name": "inf"}}
