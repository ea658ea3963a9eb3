import pytest
import torch

from turnrl.algos.core import (aggregate, group_advantages, kl_k3, ppo_clip_token_loss, top_std_keep,
                               zero_variance_keep)


def test_group_advantages_by_hand():
    # group 0: returns 1, 0 -> mean 0.5, population std 0.5 -> +1, -1
    # group 1: returns 0.25, 0.25, 1.0 -> mean 0.5, std sqrt(((.25)^2*2 + .5^2)/3) = 0.353553
    r = torch.tensor([1.0, 0.0, 0.25, 0.25, 1.0])
    adv = group_advantages(r, [0, 0, 1, 1, 1], scale_by_std=True, eps=0.0)
    assert adv.tolist() == pytest.approx([1.0, -1.0, -0.707107, -0.707107, 1.414214], abs=1e-5)
    dr = group_advantages(r, [0, 0, 1, 1, 1], scale_by_std=False)  # Dr. GRPO: centred only
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.25, -0.25, 0.5])


def test_zero_variance_groups_are_dropped():
    keep = zero_variance_keep(torch.tensor([1.0, 1.0, 0.0, 1.0, -0.1, -0.1]), [0, 0, 1, 1, 2, 2])
    assert keep.tolist() == [False, False, True, True, False, False]


def test_top_std_keeps_the_most_varied_groups():
    # stds: g0 = 0, g1 = 0.5, g2 = 0.25, g3 = 0.5 ; keep 50% = 2 groups -> g1, g3
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.0])
    keep = top_std_keep(r, [0, 0, 1, 1, 2, 2, 3, 3], 0.5)
    assert keep.tolist() == [False, False, True, True, False, False, True, True]


def test_ppo_clip_loss_by_hand():
    # ratios e^0.5=1.6487, e^-0.5=0.6065, 1; A = +1, -1, +2 ; clip bounds [0.8, 1.28]
    lp = torch.tensor([0.5, -0.5, 0.0])
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, clipped = ppo_clip_token_loss(lp, old, adv, clip_low=0.2, clip_high=0.28)
    # token 0: min(1.6487, 1.28) = 1.28 -> -1.28 ; token 1: min(-0.6065, -0.8) = -0.8 -> 0.8 ; token 2: -2
    assert loss.tolist() == pytest.approx([-1.28, 0.8, -2.0], abs=1e-4)
    assert clipped.tolist() == [True, True, False]


def test_ppo_gradient_vanishes_outside_the_clip_range():
    lp = torch.tensor([0.5], requires_grad=True)
    loss, _ = ppo_clip_token_loss(lp, torch.zeros(1), torch.tensor([1.0]), 0.2, 0.28)
    loss.sum().backward()
    assert lp.grad.item() == 0.0


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    # d = ref - pi = -0.5 -> e^-0.5 + 0.5 - 1 = 0.106531
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.5])).item() == pytest.approx(0.106531, abs=1e-6)


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert aggregate(loss, mask, "token_mean", norm=4).item() == pytest.approx(10 / 4)
    # per sequence: 2.0 and 4.0 -> mean 3.0
    assert aggregate(loss, mask, "seq_mean", norm=2).item() == pytest.approx(3.0)
    assert aggregate(loss, mask, "token_sum_norm", norm=100).item() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        aggregate(loss, mask, "nope", 1)


def test_micro_batches_add_up_to_the_full_batch():
    loss = torch.rand(4, 5)
    mask = torch.rand(4, 5) > 0.3
    mask[:, 0] = True
    for mode, norm in (("token_mean", float(mask.sum())), ("seq_mean", 4.0)):
        whole = aggregate(loss, mask, mode, norm)
        parts = aggregate(loss[:2], mask[:2], mode, norm) + aggregate(loss[2:], mask[2:], mode, norm)
        assert whole.item() == pytest.approx(parts.item())
