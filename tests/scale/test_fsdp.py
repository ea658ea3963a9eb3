"""The update on an FSDP group (turnrl.scale.fsdp): 2 Ray actors, gloo on CPU. Marked
``ray`` (not in the default run): ``pytest -m ray``."""
import json

import pytest

from tests.conftest import make_tiny_model
from tests.test_trainer import cfg_for, weights
from turnrl.config import ConfigError, load_config
from turnrl.learner import Learner
from turnrl.trainer import Trainer

FSDP = ["--scale.learner_workers", "2"]
ATOL = 1e-6  # fp32: the ranks' gradients are summed in another order than one process adds them


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        from turnrl.scale.ray_cluster import _environ, worker_path

        with _environ(PYTHONPATH=worker_path()):  # the ranks import this checkout, as a local cluster of the trainer's does
            ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def assert_close(a: dict, b: dict, atol: float = ATOL):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max |diff| {worst:.3g} > {atol}"


@pytest.mark.ray
def test_one_update_on_two_ranks_equals_one_process(tmp_path, tokenizer, ray_cluster):
    from turnrl.scale.fsdp import FSDPLearnerGroup

    extra = ["--rollout.prompts_per_step", "3", "--algo.minibatches", "2", "--algo.kl_coef", "0.05"]
    single_cfg = cfg_for(tmp_path, "one", extra=extra)
    t = Trainer(single_cfg, make_tiny_model(), tokenizer)
    eps = t.collect(0)  # 3 groups: the ranks train 2 + 1 of them in the first minibatch, 1 + 0 in the second
    one = Learner(single_cfg, make_tiny_model(), t.chat)
    s1 = one.update(eps)

    group = FSDPLearnerGroup(cfg_for(tmp_path, "two", extra=[*extra, *FSDP]), make_tiny_model(), t.chat)
    try:
        s2 = group.update(eps)
        assert_close(weights(one.model), weights(group.model))
        assert weights(one.model)["model.norm.weight"].ne(weights(make_tiny_model())["model.norm.weight"]).any()
        for k in ("loss", "grad_norm", "kl", "entropy", "ratio_mean", "trained_tokens", "optimizer_steps"):
            assert s2[k] == pytest.approx(s1[k], rel=1e-5, abs=1e-7), k
        # the checkpoint state has the one-process format (each loads into the other)
        state, ref = group.state_dict(), one.state_dict()
        assert state["scheduler"] == ref["scheduler"]
        assert state["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
        assert state["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
        for i, s in ref["optimizer"]["state"].items():
            assert_close(s, state["optimizer"]["state"][i])
    finally:
        group.close()


@pytest.mark.ray
def test_three_trainer_steps_on_two_ranks_equal_one_process(tmp_path, tokenizer, ray_cluster):
    single, fsdp = make_tiny_model(), make_tiny_model()
    Trainer(cfg_for(tmp_path, "one"), single, tokenizer).train()
    Trainer(cfg_for(tmp_path, "two", extra=FSDP), fsdp, tokenizer).train()
    assert_close(weights(single), weights(fsdp), atol=1e-5)
    rows = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]


@pytest.mark.ray
def test_fsdp_resume_equals_uninterrupted_run(tmp_path, tokenizer, ray_cluster):
    straight = make_tiny_model()
    Trainer(cfg_for(tmp_path, "a", steps=4), straight, tokenizer).train()  # one process
    Trainer(cfg_for(tmp_path, "b", steps=2, extra=FSDP), make_tiny_model(), tokenizer).train()  # "crash" after step 2
    resumed = make_tiny_model()  # a fresh process: weights and optimizer state come from the checkpoint
    t = Trainer(cfg_for(tmp_path, "b", steps=4, extra=FSDP), resumed, tokenizer)
    t.train(resume=True)
    assert t.step == 4
    assert_close(weights(straight), weights(resumed), atol=1e-5)


@pytest.mark.parametrize("extra", [["--algo.name", "gae"], ["--algo.name", "archer"], ["--model.finetune", "lora"],
                                   ["--model.dtype", "bf16"]])
def test_what_fsdp_does_not_run_is_a_config_error(tmp_path, extra):
    with pytest.raises(ConfigError, match="learner_workers = 2"):
        load_config(None, ["--env.name", "tests.toy_envs:LengthEnv", *FSDP, *extra])


def test_an_unreachable_ray_address_is_one_line():
    from turnrl.scale.ray_cluster import ClusterError, probe

    with pytest.raises(ClusterError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 "):
        probe("127.0.0.1:1", timeout=2)
    with pytest.raises(ClusterError, match="expected"):
        probe("nonsense", timeout=2)
    probe("auto")  # nothing to probe: Ray finds the cluster itself
