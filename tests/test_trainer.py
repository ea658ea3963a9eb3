import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import BF16, make_tiny_model, needs_bf16
from turnrl.algos import get_algorithm
from turnrl.config import load_config
from turnrl.trainer import Trainer


def cfg_for(tmp_path, name="run", steps=3, extra=()):
    return load_config(None, [
        "--env.name", "tests.toy_envs:LengthEnv", "--env.max_turns", "2",
        "--rollout.prompts_per_step", "2", "--rollout.group_size", "3", "--rollout.max_new_tokens", "6",
        "--rollout.temperature", "1.0", "--train.steps", str(steps), "--train.lr", "1e-3",
        "--train.out_dir", str(tmp_path / name), "--train.checkpoint_every", "1",
        "--eval.num_tasks", "2", "--eval.pass_k", "0", "--eval.before", "false", "--log.progress", "false", *extra])


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_three_steps_change_the_weights_without_nan(tmp_path, tokenizer):
    model = make_tiny_model()
    before = weights(model)
    summary = Trainer(cfg_for(tmp_path, extra=["--log.tensorboard", "true"]), model, tokenizer).train()
    after = weights(model)
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    assert changed >= len(before) // 2
    assert all(torch.isfinite(v).all() for v in after.values())
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["nan_skipped"] == 0 for r in train)
    assert abs(train[0]["ratio_mean"] - 1.0) < 1e-3  # first PPO ratio = 1 (on-policy)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    # the final model is plain Hugging Face format
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(summary["final_model"])
    assert torch.equal(reloaded.state_dict()["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    # the periodic / final evaluation is turnrl eval's code and the run ends with its report
    from turnrl.results import load_eval

    final = load_eval(tmp_path / "run" / "evals" / "step_000003")
    assert final.meta["step"] == 3 and len(final.meta["seeds"]) == 2 and len(final.episodes) == 2
    assert [r for r in rows if r["split"] == "eval"][-1]["succ@1"] == final.metrics["succ@1"]
    assert summary["report"] == str(tmp_path / "run" / "report" / "report.html")
    assert (tmp_path / "run" / "report" / "training.png").is_file()


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, tokenizer):
    straight = make_tiny_model()
    Trainer(cfg_for(tmp_path, "a", steps=4), straight, tokenizer).train()

    interrupted = make_tiny_model()
    Trainer(cfg_for(tmp_path, "b", steps=2), interrupted, tokenizer).train()  # "crash" after step 2
    resumed = make_tiny_model()  # a fresh process: weights come only from the checkpoint
    t = Trainer(cfg_for(tmp_path, "b", steps=4), resumed, tokenizer)
    t.train(resume=True)
    assert t.step == 4 and t.data_pos == 8
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    # machine.json: one record per start, the second from the step the run resumed at
    machine = json.loads((tmp_path / "b" / "machine.json").read_text())
    assert [m["from_step"] for m in machine] == [0, 2]
    assert machine[1] | {"from_step": 0} == machine[0]  # the same machine both times
    assert machine[0]["policy_dtype"] == "float32" and machine[0]["device"] == "cpu"
    assert (machine[0]["threads"], machine[0]["cpu_capability"]) == (torch.get_num_threads(),
                                                                     torch.backends.cpu.get_cpu_capability())
    evaluated = json.loads((tmp_path / "b" / "evals" / "step_000004" / "eval.json").read_text())["meta"]
    assert evaluated["machine"] == {k: v for k, v in machine[1].items() if k != "from_step"}  # eval_seconds' machine


def test_checkpoints_are_complete_and_pruned(tmp_path, tokenizer):
    Trainer(cfg_for(tmp_path, "c", steps=3, extra=["--train.keep_checkpoints", "2"]), make_tiny_model(), tokenizer).train()
    ckpts = sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    state = torch.load(tmp_path / "c" / "checkpoints" / "step_000003" / "state.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "rng", "data_pos", "step"} <= set(state)


def test_nan_loss_skips_the_update_and_the_run_goes_on(tmp_path, tokenizer):
    from dataclasses import replace

    model = make_tiny_model()
    before = weights(model)
    t = Trainer(cfg_for(tmp_path, "n", steps=2), model, tokenizer)
    good = get_algorithm("grpo")

    def nan_loss(x, cfg):  # a fault we cannot otherwise cause on demand
        loss, extra = good.loss(x, cfg)
        return loss * float("nan"), extra

    t.learner.algo = replace(good, loss=nan_loss)
    t.train()
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
    rows = [json.loads(l) for l in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert [r["nan_skipped"] for r in rows] == [1.0, 1.0]


def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen = base.model.embed_tokens.weight.detach().clone()
    cfg = cfg_for(tmp_path, "l", steps=2, extra=["--model.finetune", "lora", "--model.lora_rank", "4",
                                                 "--algo.kl_coef", "0.1", "--model.dtype", "bf16"])
    summary = Trainer(cfg, model, tokenizer).train()
    dtype = torch.bfloat16 if BF16 else torch.float32  # without native bf16 the run is fp32
    assert torch.equal(frozen.to(dtype), base.model.embed_tokens.weight)  # rounded once at most, never trained
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero; training moved it
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(summary["final_model"])
    assert not any("lora" in k for k in merged.state_dict())


def train_rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]


def test_one_epoch_and_one_minibatch_keep_the_ratio_exactly_one(tmp_path, tokenizer):
    Trainer(cfg_for(tmp_path, "r", steps=2, extra=["--algo.masks", "[]"]), make_tiny_model(), tokenizer).train()
    rows = train_rows(tmp_path / "r")
    assert [r["ratio_mean"] for r in rows] == [1.0, 1.0] and [r["clip_frac"] for r in rows] == [0.0, 0.0]
    assert [r["optimizer_steps"] for r in rows] == [1.0, 1.0]
    # the token audit compares the sampler's log-probs with the learner's on the trained ids
    assert all(0 <= r["sampler_drift_mean"] <= r["sampler_drift_max"] < 1e-3 for r in rows)


def test_ppo_epochs_and_minibatches_take_several_steps_and_clipping_acts(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, "p", steps=2, extra=["--algo.masks", "[]", "--algo.ppo_epochs", "3",
                                                 "--algo.minibatches", "2", "--train.lr", "3e-2"])
    Trainer(cfg, make_tiny_model(), tokenizer).train()
    rows = train_rows(tmp_path / "p")
    assert [r["optimizer_steps"] for r in rows] == [6.0, 6.0]  # 3 epochs x 2 minibatches (of 1 group each)
    assert any(r["clip_frac"] > 0 for r in rows)  # later passes see ratios away from 1, and the clip bites
    assert all(r["ratio_mean"] != 1.0 for r in rows)


def test_dr_grpo_normaliser_ignores_how_many_groups_are_kept():
    from turnrl.algos import get_algorithm
    from turnrl.config import AlgoConfig
    from turnrl.types import Episode, Turn

    algo, cfg = get_algorithm("dr_grpo"), AlgoConfig(name="dr_grpo", max_tokens_norm=100)
    eps = [Episode([Turn([1], [5] * n, [0.0] * n)], group_id=n) for n in (1, 2, 3, 4)]
    # 8 episodes sampled: the divisor is 100 x 8 whether 4, 2 or 1 of them survive the filter
    assert algo.norm(eps, cfg, 8, 10) == algo.norm(eps[:2], cfg, 8, 3) == algo.norm(eps[:1], cfg, 8, 1) == 800.0


def test_masks_are_counted_in_every_step(tmp_path, tokenizer):
    # max_new_tokens 6 at temperature 1 on a random model: most turns hit the limit
    Trainer(cfg_for(tmp_path, "m", steps=2, extra=["--algo.masks", '["overlong"]']), make_tiny_model(), tokenizer).train()
    rows = train_rows(tmp_path / "m")
    for r in rows:
        assert r["masked_turns_overlong"] > 0
        assert r["episodes_masked"] == r["masked_overlong"]


def test_a_step_with_every_group_filtered_says_no_update_was_taken():
    from turnrl.logging import update_note

    row = {"update_skipped": 1.0, "masked_zero_variance": 6.0, "masked_turns_zero_variance": 12.0, "masked_void": 0.0}
    assert update_note(row) == "no update: every episode masked (zero_variance 6)"
    assert update_note({"update_skipped": 0.0, "loss": 0.25}) == "loss +0.250"


def test_existing_run_directory_is_refused_and_resume_without_checkpoint_says_so(tmp_path, tokenizer, capsys):
    from turnrl.trainer import RunDirError

    cfg = cfg_for(tmp_path, "x", steps=1)
    Trainer(cfg, make_tiny_model(), tokenizer).train()
    with pytest.raises(RunDirError, match=r"already holds a run: pass --resume"):
        Trainer(cfg, make_tiny_model(), tokenizer).train()
    fresh = cfg_for(tmp_path, "y", steps=1)
    Trainer(fresh, make_tiny_model(), tokenizer).train(resume=True)
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_resume_refuses_other_training_settings_and_a_finished_run_is_left_alone(tmp_path, tokenizer, capsys):
    from turnrl.trainer import RunDirError

    first = Trainer(cfg_for(tmp_path, "f", steps=1), make_tiny_model(), tokenizer).train()
    changed = cfg_for(tmp_path, "f", steps=2, extra=["--rollout.group_size", "4", "--algo.name", "gae"])
    with pytest.raises(RunDirError, match=r"--resume: the checkpoint .*step_000001 was trained with other settings "
                                          r"\(algo\.masks = \['zero_variance'\] there, \[\] here; algo\.name = 'grpo' "
                                          r"there, 'gae' here; rollout\.group_size = 3 there, 4 here\)"):
        Trainer(changed, make_tiny_model(), tokenizer).train(resume=True)
    with pytest.raises(RunDirError, match=r"resume with them \(--algo\.masks '\[\"zero_variance\"\]' --algo\.name "
                                          r"'\"grpo\"' --rollout\.group_size '3'; only train\.steps"):
        Trainer(changed, make_tiny_model(), tokenizer).train(resume=True)
    # the same settings, train.steps not raised: the finished run is not evaluated again
    again = Trainer(cfg_for(tmp_path, "f", steps=1), make_tiny_model(), tokenizer).train(resume=True)
    assert again == json.loads(json.dumps(first)) and "already finished at step 1" in capsys.readouterr().err
    evals = [json.loads(l)["step"] for l in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "eval"]
    assert evals == [1]


def test_a_field_added_since_the_checkpoint_does_not_block_its_resume():
    from turnrl.trainer import _check_resumable

    now = cfg_for(Path("/tmp"), "x").model_dump(mode="json")
    saved = json.loads(json.dumps(now))
    del saved["rollout"]["context"]  # a checkpoint from before rollout.context existed
    _check_resumable(saved, now, "ckpt")


def test_a_run_extended_and_interrupted_before_its_end_is_not_taken_for_finished(tmp_path, tokenizer, monkeypatch):
    Trainer(cfg_for(tmp_path, "g", steps=1), make_tiny_model(), tokenizer).train()  # finished at 1: summary.json

    def crash(self):
        raise KeyboardInterrupt  # after the step-2 checkpoint, before the final model and evaluation

    with monkeypatch.context() as m:
        m.setattr(Trainer, "save_final", crash)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg_for(tmp_path, "g", steps=2), make_tiny_model(), tokenizer).train(resume=True)
    assert not (tmp_path / "g" / "summary.json").exists()  # step 1's summary went when training went on
    summary = Trainer(cfg_for(tmp_path, "g", steps=2), make_tiny_model(), tokenizer).train(resume=True)
    assert "eval_after" in summary and (tmp_path / "g" / "final").is_dir()
    evals = [json.loads(l)["step"] for l in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "eval"]
    assert evals == [1, 2]


def test_a_resumed_run_keeps_its_eval_before(tmp_path, tokenizer):
    first = cfg_for(tmp_path, "e", steps=1, extra=["--eval.before", "true"])
    before = Trainer(first, make_tiny_model(), tokenizer).train()["eval_before"]
    again = cfg_for(tmp_path, "e", steps=2, extra=["--eval.before", "true"])
    summary = Trainer(again, make_tiny_model(), tokenizer).train(resume=True)
    assert summary["eval_before"] == before


def test_rise_groups_on_an_env_without_correctness_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import turnrl.trainer as trainer_mod
    from turnrl.config import ConfigError

    monkeypatch.setattr(trainer_mod, "build_policy", lambda cfg: (_ for _ in ()).throw(AssertionError("model loaded")))
    cfg = load_config(None, ["--env.name", "tests.toy_envs:NoVerdictEnv", "--rollout.rise_groups", "2",
                             "--train.out_dir", str(tmp_path / "r")])
    with pytest.raises(ConfigError, match=r"rollout.rise_groups needs an env that reports Step.correct; env 'tests.toy_envs:NoVerdictEnv'"):
        trainer_mod.Trainer(cfg)


def _train_rows(tmp_path, name, tokenizer, extra):
    Trainer(cfg_for(tmp_path, name, steps=2, extra=["--algo.masks", "[]", *extra]), make_tiny_model(), tokenizer).train()
    rows = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_markovian_episodes_train_scored_in_their_sampling_contexts(tmp_path, tokenizer):
    train = _train_rows(tmp_path, "mk", tokenizer, ["--rollout.context", "markovian"])
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    for r in train:
        assert r["sampler_drift_max"] < 1e-4 and abs(r["ratio_mean"] - 1.0) < 1e-4
        assert r["state_missing_rate"] == 1.0  # the random model never writes a state block
        assert r["peak_context_tokens"] > 0


def test_a_history_rewriting_template_trains_with_a_critic(tmp_path, tokenizer):
    import copy

    from tests.test_rollout import QWEN3_STYLE

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN3_STYLE
    train = _train_rows(tmp_path, "q3", tok, ["--algo.name", "gae"])
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    assert all(r["sampler_drift_max"] < 1e-4 for r in train)


# -- asynchronous rollouts (scale.max_staleness) ------------------------------------------

def test_max_staleness_zero_samples_in_step_with_the_learner(tmp_path, tokenizer):
    t = Trainer(cfg_for(tmp_path, "s0", steps=2, extra=["--scale.max_staleness", "0"]), make_tiny_model(), tokenizer)
    assert t.sampler.engine is t.engine  # the learner's own model samples: nothing runs ahead
    t.train()
    assert t._pool is None
    assert [(r["staleness_mean"], r["staleness_max"]) for r in train_rows(tmp_path / "s0")] == [(0.0, 0.0), (0.0, 0.0)]


def test_rollouts_run_one_update_ahead_with_max_staleness_one(tmp_path, tokenizer):
    sync_model, async_model = make_tiny_model(), make_tiny_model()
    Trainer(cfg_for(tmp_path, "sync", steps=1), sync_model, tokenizer).train()
    # one step: its episodes come from the initial weights either way; the decoupled weight
    # pi_prox / pi_behaviour is 1 up to the sampler's rounding, so the update is the same
    Trainer(cfg_for(tmp_path, "a1", steps=1, extra=["--scale.max_staleness", "1"]), async_model, tokenizer).train()
    a, b = weights(sync_model), weights(async_model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # three steps: step 1's rollouts were started before update 1, so from version 0
    model = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, "a3", steps=3, extra=["--scale.max_staleness", "1"]), model, tokenizer)
    assert t.sampler.engine is not t.engine and t.sampler.engine.model is not model  # samples from its own copy
    t.train()
    rows = train_rows(tmp_path / "a3")
    assert [r["staleness_max"] for r in rows] == [0.0, 1.0, 1.0]
    assert all(r["nan_skipped"] == 0 and math.isfinite(r["loss"]) for r in rows)


def test_an_asynchronous_run_resumes_exactly(tmp_path, tokenizer):
    extra = ["--scale.max_staleness", "1"]
    straight = make_tiny_model()
    Trainer(cfg_for(tmp_path, "a", steps=4, extra=extra), straight, tokenizer).train()
    crashing = Trainer(cfg_for(tmp_path, "b", steps=4, extra=extra), make_tiny_model(), tokenizer)
    real_update = crashing.update

    def update_then_crash(eps):  # the process dies during update 3, after checkpoint 2
        if crashing.step == 2:
            raise KeyboardInterrupt
        return real_update(eps)

    crashing.update = update_then_crash
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    state = torch.load(tmp_path / "b" / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    # the checkpoint holds step 2's episodes, sampled before update 2 (nothing sampled is lost)
    assert list(state["ahead"]) == [2] and {e.policy_version for e in state["ahead"][2]} == {1}
    resumed = make_tiny_model()
    Trainer(cfg_for(tmp_path, "b", steps=4, extra=extra), resumed, tokenizer).train(resume=True)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_algorithm_without_a_staleness_correction_refuses_max_staleness():
    from turnrl.config import ConfigError

    with pytest.raises(ConfigError, match=r"max_staleness = 1: algorithm 'refuel' has no correction"):
        load_config(None, ["--algo.name", "refuel", "--scale.max_staleness", "1"])


def test_drift_above_the_bound_is_a_warning_and_a_flag(tmp_path, tokenizer, capsys):
    cfg = cfg_for(tmp_path, "d", steps=1, extra=["--algo.masks", "[]", "--scale.drift_bound", "1e-12"])
    Trainer(cfg, make_tiny_model(), tokenizer).train()
    assert train_rows(tmp_path / "d")[0]["drift_warning"] == 1.0
    assert "above scale.drift_bound = 1e-12" in capsys.readouterr().err
    Trainer(cfg_for(tmp_path, "e", steps=1, extra=["--algo.masks", "[]"]), make_tiny_model(), tokenizer).train()
    assert train_rows(tmp_path / "e")[0]["drift_warning"] == 0.0  # the default bound: fp32 sampler and learner agree


# -- bf16 (model.dtype) --------------------------------------------------------------------

@pytest.mark.skipif(BF16, reason="this machine computes in bf16: the fallback is tested with a patched check in test_cli.py")
def test_bf16_on_a_machine_without_it_trains_in_fp32_and_says_so_once(tmp_path, tokenizer, capsys):
    model = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, "nb", steps=1, extra=["--model.dtype", "bf16"]), model, tokenizer)
    t.train()
    assert t.learner.master is None and all(p.dtype == torch.float32 for p in model.parameters())
    assert capsys.readouterr().err.count("no native bf16 kernels") == 1
    machine = json.loads((tmp_path / "nb" / "machine.json").read_text())  # what ran, whatever config.json asked
    assert [(m["policy_dtype"], m["bf16_native"]) for m in machine] == [("float32", False)]


@needs_bf16
def test_bf16_samples_and_trains_in_bf16_with_fp32_master_weights(tmp_path, tokenizer):
    model = make_tiny_model()
    before = weights(model)
    # lr 1e-6: Adam moves each weight by ~1e-6, below bf16's spacing (~1e-4 at 0.02), so only
    # fp32 master weights can keep such updates
    cfg = cfg_for(tmp_path, "bf", steps=2, extra=["--model.dtype", "bf16", "--algo.masks", "[]", "--algo.kl_coef", "0.1",
                                                  "--train.lr", "1e-6"])
    t = Trainer(cfg, model, tokenizer)
    assert t.engine.model is model and all(p.dtype == torch.bfloat16 for p in model.parameters())  # the sampler too
    assert all(m.dtype == torch.float32 for m in t.learner.master.masters)
    t.train()
    assert json.loads((tmp_path / "bf" / "machine.json").read_text())[0]["policy_dtype"] == "bfloat16"
    rows = train_rows(tmp_path / "bf")
    # step 1: the learner scores its own bf16 weights, and the reference is the same bf16 model
    assert rows[0]["ratio_mean"] == 1.0 and rows[0]["kl"] == 0.0
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    masters = dict(zip(names, t.learner.master.masters))
    after = dict(model.named_parameters())
    # the model is its fp32 masters rounded to bf16 ...
    assert all(torch.equal(after[n], masters[n].to(torch.bfloat16)) for n in names)
    # ... and the masters keep updates that bf16 alone would have rounded away
    n = "model.layers.0.mlp.down_proj.weight"
    moved = masters[n] != before[n]
    lost = after[n] == before[n].to(torch.bfloat16)
    assert (moved & lost).any()
    assert all(0 < r["bf16_weights_changed"] < 0.5 for r in rows)  # most of each step stays in the masters


def test_rounding_the_masters_reports_the_share_of_bf16_weights_that_changed():
    from turnrl.learner import MasterWeights

    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)  # bf16 spacing at 1.0 is 2^-7 = 0.0078125: a master rounds up past 1.0039
    mw = MasterWeights(lin)
    with torch.no_grad():
        mw.masters[0] += torch.tensor([[0.0, 1e-3, 5e-3, 1e-2]])
    assert mw.round_into_model() == 0.5  # 1.0 and 1.001 stay 1.0; 1.005 and 1.01 become 1.0078125
    assert lin.weight.tolist() == [[1.0, 1.0, 1.0078125, 1.0078125]]
    assert mw.round_into_model() == 0.0  # nothing moved since


def test_master_gradients_add_up_in_fp32():
    from turnrl.learner import MasterWeights

    lin = torch.nn.Linear(2, 1, bias=False)
    mw = MasterWeights(lin)
    for g in ([1.0, 2.0], [2.0 ** -9, 3.0]):  # both exact in bf16
        lin.weight.grad = torch.tensor([g], dtype=torch.bfloat16)
        mw.accumulate()
        assert lin.weight.grad is None
    # 1 + 2^-9 is below bf16's spacing at 1 (2^-7): a bf16 sum would give 1.0
    assert mw.masters[0].grad.dtype == torch.float32
    assert mw.masters[0].grad.tolist() == [[1.001953125, 5.0]]


@needs_bf16
def test_bf16_resume_equals_an_uninterrupted_run(tmp_path, tokenizer):
    extra = ["--model.dtype", "bf16"]
    straight = make_tiny_model()
    Trainer(cfg_for(tmp_path, "a", steps=3, extra=extra), straight, tokenizer).train()
    Trainer(cfg_for(tmp_path, "b", steps=2, extra=extra), make_tiny_model(), tokenizer).train()
    resumed = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, "b", steps=3, extra=extra), resumed, tokenizer)
    t.train(resume=True)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
