"""SeeUPO and REFUEL against values computed by hand; both through the trainer on a tiny model."""
import math

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.test_trainer import cfg_for, weights
from turnrl.algos import Aux, LossInputs, get_algorithm
from turnrl.algos.refuel import pair_norm, pairs_of
from turnrl.algos.seeupo import turn_ratios
from turnrl.config import AlgoConfig, ConfigError, load_config
from turnrl.trainer import Trainer
from turnrl.types import Episode, Turn


def ep(gid, rewards, lens):
    turns = [Turn(obs_ids=[1], action_ids=[5] * n, action_logprobs=[0.0] * n, reward=r) for r, n in zip(rewards, lens)]
    return Episode(turns=turns, group_id=gid)


# -- SeeUPO ------------------------------------------------------------------------------

def seeupo_group():
    """Live turns 2, 1, 2; tokens per turn (2, 1), (3,), (1, 1); rewards per turn below."""
    return [ep(0, [0.0, 1.0], [2, 1]), ep(0, [0.5], [3]), ep(0, [0.0, 0.5], [1, 1])]


def test_seeupo_phases_run_from_the_last_turn_to_the_first():
    algo = get_algorithm("seeupo")
    assert algo.phases(seeupo_group(), AlgoConfig(name="seeupo")) == [1, 0]
    assert algo.phases([ep(0, [1.0], [1])], AlgoConfig(name="seeupo")) == [0]


def test_seeupo_advantages_by_hand():
    algo, cfg = get_algorithm("seeupo"), AlgoConfig(name="seeupo", seeupo_clip=0.2)
    eps = seeupo_group()
    # phase 1 (last turn first): G_1 = 1 (e0), 0.5 (e2); e1 has no turn 1. Group mean 0.75.
    a1 = algo.advantages(eps, cfg, Aux(phase=1))
    assert [a.tolist() for a in a1] == [[0.0, 0.0, 0.25], [0.0] * 3, [0.0, -0.25]]
    # phase 0, after turn 1 was updated: log-ratio of e0's turn 1 = +0.1 -> rho = exp(0.1) = 1.1051709;
    # e2's turn 1: +0.5 -> exp(0.5) = 1.6487 clipped to 1.2. Turn 0's own ratios do not enter.
    old = [torch.zeros(3), torch.zeros(3), torch.zeros(2)]
    new = [torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.4, 0.0, 0.0]), torch.tensor([-0.7, 0.5])]
    a0 = algo.advantages(eps, cfg, Aux(phase=0, logprobs=new, old_logprobs=old))
    # G_0 = 0 + 1.1051709 * 1 = 1.1051709 ; 0.5 ; 0 + 1.2 * 0.5 = 0.6 ; mean 0.7350570
    assert a0[0].tolist() == pytest.approx([0.3701139, 0.3701139, 0.0], abs=1e-6)
    assert a0[1].tolist() == pytest.approx([-0.2350570] * 3, abs=1e-6)
    assert a0[2].tolist() == pytest.approx([-0.1350570, 0.0], abs=1e-6)


def test_seeupo_ratio_is_clipped_on_both_sides():
    e = ep(0, [0.0, 0.0, 0.0], [1, 2, 1])
    r = turn_ratios(e, torch.tensor([0.0, -0.5, -0.5, 0.1]), torch.zeros(4), 0.2)
    assert r == pytest.approx([1.0, 0.8, math.exp(0.1)])  # exp(-1) = 0.37 -> 0.8


def test_seeupo_needs_a_phase():
    with pytest.raises(ValueError, match="aux.phase"):
        get_algorithm("seeupo").advantages(seeupo_group(), AlgoConfig(name="seeupo"), Aux())


def train_steps(trainer, n):
    """``n`` training steps without the run's evaluations, checkpoints and report."""
    out = []
    for step in range(n):
        out.append(trainer.update(trainer.collect(step)))
        trainer.data_pos += trainer.cfg.rollout.prompts_per_step
    return out


def test_seeupo_trains_one_optimizer_step_per_turn(tmp_path, tokenizer):
    model = make_tiny_model()
    before = weights(model)
    stats = train_steps(Trainer(cfg_for(tmp_path, extra=["--algo.name", "seeupo"]), model, tokenizer), 2)
    assert [s["optimizer_steps"] for s in stats] == [2.0, 2.0]  # LengthEnv: 2 turns -> phases 1, 0
    assert all(math.isfinite(s["loss"]) and s["nan_skipped"] == 0 for s in stats)
    after = weights(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


# -- REFUEL ------------------------------------------------------------------------------

def refuel_inputs(lp, old, mask, returns, gids):
    eps = [Episode(turns=[], group_id=g) for g in gids]
    T = lp.shape[1]
    adv = torch.tensor(returns, dtype=torch.float32)[:, None].expand(-1, T).clone()
    return LossInputs(episodes=eps, logprobs=lp, old_logprobs=old, advantages=adv, mask=mask,
                      turn_ids=torch.zeros_like(mask, dtype=torch.long), agg="token_sum_norm",
                      norm=pair_norm(eps, None, len(eps), 0))


def test_refuel_loss_and_gradient_sign_by_hand():
    lp = torch.tensor([[0.1, 0.2], [0.05, 9.0], [0.0, 0.0], [-0.1, 0.3]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    x = refuel_inputs(lp, torch.zeros(4, 2), mask, [1.0, 0.0, 0.5, 0.5], [7, 7, 7, 7])
    loss, stats = get_algorithm("refuel").loss(x, AlgoConfig(name="refuel", refuel_eta=0.5))
    # D = 0.3, 0.05, 0, 0.2. Pair (0,1): (0.3 - 0.05) - 0.5 * (1 - 0) = -0.25 -> 0.0625
    # pair (2,3): (0 - 0.2) - 0.5 * 0 = -0.2 -> 0.04 ; mean over 2 pairs = 0.05125
    assert loss.item() == pytest.approx(0.05125)
    assert stats["pairs"] == 2 and stats["unpaired"] == 0
    loss.backward()
    # d/d lp: 2 * (-0.25) / 2 = -0.25 on row 0, +0.25 on row 1's trained token; -0.2 / +0.2 on rows 2 / 3.
    # Gradient descent raises the better rollout's log-prob (row 0) and lowers row 1's.
    assert torch.allclose(lp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.0], [-0.2, -0.2], [0.2, 0.2]]))


def test_refuel_on_policy_loss_is_eta_squared_return_gap():
    lp = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    x = refuel_inputs(lp, lp.detach(), torch.ones(2, 1, dtype=torch.bool), [0.25, 0.0], [0, 0])
    loss, _ = get_algorithm("refuel").loss(x, AlgoConfig(name="refuel", refuel_eta=4.0))
    assert loss.item() == pytest.approx((4.0 * 0.25) ** 2)  # D = 0 at the start of the update
    loss.backward()
    assert torch.allclose(lp.grad, torch.tensor([[-2.0], [2.0]]))  # 2 * (0 - 1) * (+1, -1)


def test_refuel_pairs_stay_inside_groups():
    assert pairs_of([3, 3, 4, 4, 4, 3]) == ([(0, 1), (2, 3)], 2)  # group 3: rows 0,1,5; group 4: rows 2,3,4
    eps = [Episode(turns=[], group_id=g) for g in [0, 0, 0, 0, 1, 1, 2]]
    assert pair_norm(eps, None, 7, 0) == 3.0


def test_refuel_rejects_an_odd_group_size():
    with pytest.raises(ConfigError, match=r"group_size = 3 is odd: algorithm 'refuel'") as e:
        load_config(None, ["--algo.name", "refuel", "--rollout.group_size", "3"])
    assert len(str(e.value).splitlines()) == 1


def test_branch_groups_need_two_turns(tmp_path, tokenizer):
    cfg = cfg_for(tmp_path, extra=["--env.max_turns", "1", "--rollout.branch_groups", "1"])
    with pytest.raises(ConfigError, match="rollout.branch_groups = 1 would be ignored: episodes have at most 1 turn"):
        Trainer(cfg, make_tiny_model(), tokenizer)


def test_refuel_trains_three_steps_with_branch_groups(tmp_path, tokenizer):
    model = make_tiny_model()
    before = weights(model)
    cfg = cfg_for(tmp_path, extra=["--algo.name", "refuel", "--algo.refuel_eta", "10", "--rollout.group_size", "2",
                                   "--env.max_turns", "3", "--rollout.branch_groups", "2", "--algo.masks", "[]"])
    trainer = Trainer(cfg, model, tokenizer)
    eps = trainer.collect(0)
    main, branches = eps[:4], eps[4:]
    assert [e.group_id for e in branches] == [-1, -1, -2, -2]
    again = trainer.collect(0)  # seeded from train.seed and the step: the same cut points
    for b, b2 in zip(branches, again[4:]):
        h = sum(t.frozen for t in b.turns)
        assert 1 <= h <= 2 and h == sum(t.frozen for t in b2.turns)
        assert all(t.frozen for t in b.turns[:h]) and not any(t.frozen for t in b.turns[h:])
        src = [m for m in main if m.seed == b.seed and [t.text for t in m.turns[:h]] == [t.text for t in b.turns[:h]]]
        assert src, "the replayed prefix is a sampled episode's first h replies"
        assert len(b.turns) == 3  # LengthEnv runs all 3 turns
    stats = train_steps(trainer, 3)
    assert all(math.isfinite(s["loss"]) and s["nan_skipped"] == 0 for s in stats)
    assert [s["episodes_trained"] for s in stats] == [8.0] * 3  # 2 x 2 sampled + 2 branch groups x 2
    after = weights(model)
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    assert all(torch.isfinite(v).all() for v in after.values())
