"""Ray rollout workers (``scale.rollout_workers``): same episodes as in-process sampling,
a worker killed mid-collect is replaced, an env error fails one episode, a bad address
fails fast. Needs Ray (``pip install -e .[ray]``); run with ``pytest -m ray``."""
import json
import time

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.test_trainer import cfg_for, train_rows, weights

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

from turnrl.build import build_engine  # noqa: E402
from turnrl.config import ConfigError  # noqa: E402
from turnrl.learner import Learner  # noqa: E402
from turnrl.rollout import RolloutConfig  # noqa: E402
from turnrl.scale.ray_rollout import RayRolloutPool  # noqa: E402
from turnrl.scale.sampler import LocalSampler, TrainEnvs  # noqa: E402
from turnrl.trainer import Trainer  # noqa: E402

FLAKY = "tests.toy_envs:FlakyEnv"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module; the workers import this checkout (PYTHONPATH,
    inherited from this process as the pool does it), the pools join it (and leave it
    running when they close)."""
    from turnrl.scale.ray_cluster import _environ, worker_path

    with _environ(PYTHONPATH=worker_path()):
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def config(tmp_path, env=None, kwargs=None, workers=2, extra=()):
    more = ["--scale.rollout_workers", str(workers), "--rollout.prompts_per_step", "3", *extra]
    if env:
        more += ["--env.name", env]
    if kwargs:
        more += ["--env.kwargs", json.dumps(kwargs)]
    return cfg_for(tmp_path, extra=more)


def request(cfg, step=0):
    r = cfg.rollout
    seeds = [s for s in range(r.prompts_per_step) for _ in range(r.group_size)]
    return seeds, RolloutConfig.from_section(r, seed=cfg.train.seed * 100_003 + step)


def local_episodes(cfg, model, tok, seeds, rcfg):
    """The same request sampled in this process (the reference)."""
    engine, chat = build_engine(model, tok)
    return LocalSampler(cfg, engine, chat, TrainEnvs(cfg, 2)).collect(2, seeds, seeds, rcfg)


def same_tokens(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.seed, x.group_id, len(x.turns)) == (y.seed, y.group_id, len(y.turns))
        assert [t.action_ids for t in x.turns] == [t.action_ids for t in y.turns]
        assert [t.obs_ids for t in x.turns] == [t.obs_ids for t in y.turns]
        assert [t.reward for t in x.turns] == [t.reward for t in y.turns]
        for s, t in zip(x.turns, y.turns):
            assert torch.allclose(torch.tensor(s.action_logprobs), torch.tensor(t.action_logprobs), atol=1e-4)


def test_two_workers_sample_the_episodes_of_in_process_sampling(tmp_path, tokenizer):
    cfg = config(tmp_path)
    assert cfg.rollout.temperature > 0
    model = make_tiny_model()
    seeds, rcfg = request(cfg)
    pool = RayRolloutPool(cfg, TrainEnvs(cfg, 2), model, tokenizer)
    try:
        assert len({ray.get(w.ready.remote()) for w in pool.workers}) == 2  # two processes
        got = pool.collect(2, seeds, seeds, rcfg)
        same_tokens(got, local_episodes(cfg, model, tokenizer, seeds, rcfg))
        assert {e.policy_version for e in got} == {0}
        # new weights: published once, every worker samples with them
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        pool.publish(model, 1)
        snapshot = weights(model)
        with torch.no_grad():  # a later change of the driver's model does not leak into the published snapshot
            model.lm_head.weight.add_(1.0)
        got = pool.collect(2, seeds, seeds, rcfg)
        model.load_state_dict(snapshot)
        same_tokens(got, local_episodes(cfg, model, tokenizer, seeds, rcfg))
        assert {e.policy_version for e in got} == {1}
        assert pool.workers_restarted == 0
    finally:
        pool.close()


def test_a_worker_killed_mid_collect_is_replaced_and_the_step_completes(tmp_path, tokenizer):
    marker = tmp_path / "died"
    cfg = config(tmp_path, FLAKY, {"exit_on_seed": 1, "exit_marker": str(marker)})
    model = make_tiny_model()
    seeds, rcfg = request(cfg)
    reference = local_episodes(config(tmp_path), model, tokenizer, seeds, rcfg)
    pool = RayRolloutPool(cfg, TrainEnvs(cfg, 2), model, tokenizer)
    try:
        pool.publish(model, 1)  # the replacement must load the current weights too
        got = pool.collect(2, seeds, seeds, rcfg)  # seed 1's env ends its worker's process mid-step
        assert marker.exists() and pool.workers_restarted == 1
        same_tokens(got, reference)
        assert not any(e.info.get("failed") for e in got)
        ray.kill(pool.workers[0])  # killed between steps: found dead at the next collect, replaced
        got = pool.collect(2, seeds, seeds, rcfg)
        assert pool.workers_restarted == 2
        same_tokens(got, reference)
    finally:
        pool.close()


def test_an_env_error_fails_its_episode_and_the_others_go_on(tmp_path, tokenizer):
    cfg = config(tmp_path, FLAKY, {"raise_on_seed": 1})
    model = make_tiny_model()
    seeds, rcfg = request(cfg)
    pool = RayRolloutPool(cfg, TrainEnvs(cfg, 2), model, tokenizer)
    try:
        got = pool.collect(2, seeds, seeds, rcfg)
    finally:
        pool.close()
    failed = [e for e in got if e.info.get("failed")]
    assert [e.seed for e in failed] == [1] * cfg.rollout.group_size
    assert all("flaky env: seed 1" in e.info["failed"] and e.truncated_by == "env_error" for e in failed)
    assert all(not e.turns for e in failed)  # the env failed on the first step: no turn is recorded
    ok = [e for e in got if not e.info.get("failed")]
    same_tokens(ok, [e for e in local_episodes(config(tmp_path), model, tokenizer, seeds, rcfg) if e.seed != 1])
    _, chat = build_engine(model, tokenizer)
    stats = Learner(cfg, model, chat).update(got)
    assert stats["episodes_failed"] == 3 and stats["episodes_trained"] + stats["episodes_masked"] == len(ok)


def test_an_unreachable_address_is_one_line_within_seconds(tmp_path, tokenizer):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path, extra=["--scale.ray_address", f"127.0.0.1:{port}"])
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}") as e:
        RayRolloutPool(cfg, TrainEnvs(cfg, 2), make_tiny_model(), tokenizer)
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value)


def test_three_steps_on_two_workers_train_the_weights_of_an_in_process_run(tmp_path, tokenizer):
    local = make_tiny_model()
    Trainer(cfg_for(tmp_path, "local"), local, tokenizer).train()
    remote = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, "ray", extra=["--scale.rollout_workers", "2"]), remote, tokenizer)
    assert isinstance(t.sampler, RayRolloutPool)
    t.train()
    a, b = weights(local), weights(remote)
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    assert any(not torch.equal(v, make_tiny_model().state_dict()[k]) for k, v in b.items())  # it did train
    rows = train_rows(tmp_path / "ray")
    assert [r["workers_restarted"] for r in rows] == [0.0] * 3 and [r["episodes_failed"] for r in rows] == [0.0] * 3
    assert t.sampler.workers == []  # closed with the run


def test_workers_sample_ahead_of_the_update_with_max_staleness_one(tmp_path, tokenizer):
    local = make_tiny_model()
    Trainer(cfg_for(tmp_path, "local", extra=["--scale.max_staleness", "1"]), local, tokenizer).train()
    remote = make_tiny_model()
    Trainer(cfg_for(tmp_path, "ray", extra=["--scale.rollout_workers", "2", "--scale.max_staleness", "1"]),
            remote, tokenizer).train()
    assert [r["staleness_max"] for r in train_rows(tmp_path / "ray")] == [0.0, 1.0, 1.0]
    a, b = weights(local), weights(remote)  # the same stale episodes as the in-process pipeline
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_two_rollout_workers_and_two_fsdp_ranks_train_the_single_process_weights(tmp_path, tokenizer):
    from turnrl.scale.fsdp import FSDPLearnerGroup

    local = make_tiny_model()
    Trainer(cfg_for(tmp_path, "local"), local, tokenizer).train()
    remote = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, "cluster", extra=["--scale.rollout_workers", "2", "--scale.learner_workers", "2"]),
                remote, tokenizer)
    assert isinstance(t.sampler, RayRolloutPool) and isinstance(t.learner, FSDPLearnerGroup)
    t.train()
    assert [r["step"] for r in train_rows(tmp_path / "cluster")] == [1, 2, 3]
    a, b = weights(local), weights(remote)  # the driver's model holds the group's weights after each update
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
