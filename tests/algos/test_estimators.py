"""Each estimator and mask against values computed by hand, and the credit test on a toy env
where only the first of two turns decides the outcome."""
import pytest
import torch

from tests.toy_envs import FirstTurnDecides
from turnrl.algos import Aux, get_algorithm
from turnrl.algos.masks import apply_masks
from turnrl.config import AlgoConfig
from turnrl.types import Episode, Turn


def ep(gid, rewards, lens, states=None, **flags):
    turns = [Turn(obs_ids=[1], action_ids=[5] * n, action_logprobs=[0.0] * n, reward=r,
                  state=(states[k] if states else None)) for k, (r, n) in enumerate(zip(rewards, lens))]
    return Episode(turns=turns, group_id=gid, **flags)


def group():
    """Returns R = 1, 0.5, 0; live turns 2, 1, 2; tokens per turn (2, 1), (3,), (1, 1)."""
    return [ep(0, [0.0, 1.0], [2, 1], ["s0", "s1"]), ep(0, [0.5], [3], ["s0"]), ep(0, [0.0, 0.0], [1, 1], ["s0", "s2"])]


def adv(name, eps, aux=None, **cfg):
    algo = get_algorithm(name)
    return [a.tolist() for a in algo.advantages(eps, AlgoConfig(name=name, **cfg), aux or Aux())]


def test_grpo_and_dr_grpo_by_hand():
    # mean 0.5, population std sqrt(1/6) = 0.408248 -> +-1.224745
    a = adv("grpo", group())
    assert a[0] == pytest.approx([1.224742] * 3, abs=1e-5) and a[1] == [0.0] * 3
    assert a[2] == pytest.approx([-1.224742] * 2, abs=1e-5)
    assert adv("dr_grpo", group()) == [pytest.approx([0.5] * 3), [0.0] * 3, pytest.approx([-0.5] * 2)]


def test_rloo_by_hand():
    # 1 - (0.5 + 0)/2 = 0.75 ; 0.5 - (1 + 0)/2 = 0 ; 0 - (1 + 0.5)/2 = -0.75
    assert adv("rloo", group()) == [pytest.approx([0.75] * 3), [0.0] * 3, pytest.approx([-0.75] * 2)]


def test_reinforce_pp_by_hand():
    # group-centred: 0.5 x3, 0 x3, -0.5 x2 tokens; token mean 0.0625, std 0.390312
    a = adv("reinforce_pp", group())
    assert a[0] == pytest.approx([1.120894] * 3, abs=1e-5)
    assert a[1] == pytest.approx([-0.160128] * 3, abs=1e-5)
    assert a[2] == pytest.approx([-1.441150] * 2, abs=1e-5)


def test_turn_returns_by_hand():
    # gamma 1: G = [1, 1], [0.5], [0, 0]; leave-one-out baselines per turn index:
    # e0: t0 1 - (0.5 + 0)/2 = 0.75, t1 1 - 0 = 1 ; e1: 0.5 - (1 + 0)/2 = 0 ; e2: t0 0 - 0.75, t1 0 - 1
    assert adv("turn_returns", group()) == [[0.75, 0.75, 1.0], [0.0] * 3, [-0.75, -1.0]]
    # gamma 0.5: G = [0.5, 1], [0.5], [0, 0]; e0 t0 0.5 - 0.25 ; e1 0.5 - 0.25 ; e2 t0 0 - 0.5
    assert adv("turn_returns", group(), turn_gamma=0.5) == [[0.25, 0.25, 1.0], [0.25] * 3, [-0.5, -1.0]]


def test_turn_returns_baseline_ignores_the_episode_itself():
    # one episode per group: nothing to compare with, baseline 0 -> the raw returns
    assert adv("turn_returns", [ep(0, [1.0, 2.0], [1, 1])]) == [[3.0, 2.0]]


def test_gigpo_by_hand():
    # episode part: GRPO +-1.224742 ; step group s0 = {0.95, 0.5, 0} (G with gamma 0.95):
    # mean 0.483333, std 0.388015 -> 1.202696, 0.042954, -1.245649 ; s1, s2 are singletons -> 0
    a = adv("gigpo", group())
    assert a[0] == pytest.approx([2.427442, 2.427442, 1.224742], abs=1e-5)
    assert a[1] == pytest.approx([0.042954] * 3, abs=1e-5)
    assert a[2] == pytest.approx([-2.470395, -1.224742], abs=1e-5)


def test_gigpo_without_states_is_a_clear_error():
    with pytest.raises(ValueError, match="Env.state"):
        adv("gigpo", [ep(0, [1.0], [1]), ep(0, [0.0], [1])])


def test_igpo_by_hand():
    # beliefs: e0 0.1 -> 0.4 (gain 0.3), outcome 1 ; e1 outcome 0.5 ; e2 0.1 -> 0.05 (gain -0.05), outcome 0
    # group rewards [0.3, 1, 0.5, -0.05, 0]: mean 0.35, std 0.382099 ; gamma 1 sums forward
    a = adv("igpo", group(), Aux(beliefs=[[0.1, 0.4], [0.2], [0.1, 0.05]]))
    assert a[0] == pytest.approx([1.570268, 1.570268, 1.701123], abs=1e-5)
    assert a[1] == pytest.approx([0.392567] * 3, abs=1e-5)
    assert a[2] == pytest.approx([-1.962835, -0.915989], abs=1e-5)


def test_masks_by_hand():
    eps = group()
    eps[0].turns[1].void = True  # SimpleTIR: the whole trajectory goes
    eps[1].turns[0].cut_by_length = True  # overlong: that turn goes
    eps[2].truncated, eps[2].truncated_by = True, "max_turns"  # Mini-o3
    cfg = AlgoConfig()
    keep, counts = apply_masks(eps, cfg, ["void", "over_turn", "overlong"])
    assert keep == [[False, False], [False], [False, False]]
    assert counts == {"masked_void": 1, "masked_turns_void": 2, "masked_over_turn": 1, "masked_turns_over_turn": 2,
                      "masked_overlong": 1, "masked_turns_overlong": 1}
    keep, _ = apply_masks(eps, cfg, ["overlong"])
    assert keep == [[True, True], [False], [True, True]]


def test_variance_filters_by_hand():
    eps = group() + [ep(1, [1.0], [1]), ep(1, [1.0], [1]), ep(2, [1.0], [1]), ep(2, [0.0], [1])]
    keep, counts = apply_masks(eps, AlgoConfig(), ["zero_variance"])
    assert [k[0] for k in keep] == [True, True, True, False, False, True, True] and counts["masked_zero_variance"] == 2
    # variances: g0 1/6, g1 0, g2 1/4 -> the top third (1 group) is g2
    keep, _ = apply_masks(eps, AlgoConfig(masks=["top_variance"], top_variance_fraction=0.34), ["top_variance"])
    assert [k[0] for k in keep] == [False] * 5 + [True, True]
    # the fraction of the groups rounded down, at least one (round() would keep 2 of 6 but 2 of 10)
    for n_groups, kept in ((3, 1), (6, 1), (10, 2), (14, 3)):
        eps = [ep(g, [float(k == g % 2)], [1]) for g in range(n_groups) for k in range(2)]
        keep, _ = apply_masks(eps, AlgoConfig(masks=["top_variance"]), ["top_variance"])
        assert sum(k[0] for k in keep) == 2 * kept, n_groups
    eps = [ep(g, [float(k)], [1]) for g in range(100) for k in range(2)]
    keep, _ = apply_masks(eps, AlgoConfig(masks=["top_variance"], top_variance_fraction=0.29), ["top_variance"])
    assert sum(k[0] for k in keep) == 2 * 29


def test_igpo_group_of_one_turn_gets_zero():
    # one single-turn episode in its group (group_size 1, or the others failed): as GRPO, no signal
    assert adv("igpo", [ep(0, [1.0], [2])], Aux(beliefs=[[0.3]])) == [[0.0, 0.0]]
    assert adv("grpo", [ep(0, [1.0], [2])]) == [[0.0, 0.0]]


def test_turn_returns_with_episodes_of_different_lengths_by_hand():
    # per-turn rewards A (0, 1), B (0.5,), C (0, 0, 0); gamma 0.5: G_A = (0.5, 1), G_B = (0.5,), G_C = (0, 0, 0)
    eps = [ep(0, [0.0, 1.0], [1, 1]), ep(0, [0.5], [1]), ep(0, [0.0, 0.0, 0.0], [1, 1, 1])]
    # turn 0, baseline the mean of the other two: A 0.5 - 0.25, B 0.5 - 0.25, C 0 - 0.5
    # turn 1, only A and C reached it: A 1 - 0, C 0 - 1; turn 2, C alone: no baseline, 0 - 0
    assert adv("turn_returns", eps, turn_gamma=0.5) == [[0.25, 1.0], [0.25], [-0.5, -1.0, 0.0]]


def test_defaults_are_the_papers():
    c = AlgoConfig()
    assert (c.gigpo_gamma, c.gigpo_step_weight) == (0.95, 1.0)  # GiGPO
    assert (c.archer_gamma, c.archer_tau) == (0.95, 0.1)  # ArCHer
    assert c.refuel_eta == 1000.0  # REFUEL
    assert (c.clip_low, c.clip_high) == (0.2, 0.28)  # DAPO clip-higher
    assert (c.gae_gamma, c.gae_lambda_turn, c.gae_lambda_token) == (1.0, 0.95, 1.0)  # turnrl's bi-level GAE


def test_equal_returns_are_dropped_by_default_only_where_their_advantages_are_zero():
    # both episodes return 1, from per-turn rewards (1, 0) and (0, 1); turn 0 is the same state
    eps = [ep(0, [1.0, 0.0], [1, 1], ["s0", "s1"]), ep(0, [0.0, 1.0], [1, 1], ["s0", "s2"])]
    assert adv("grpo", eps) == [[0.0, 0.0], [0.0, 0.0]]
    # turn_returns (gamma 1): G = (1, 0) and (1, 1); leave-one-out per turn index: (0, 0 - 1), (0, 1 - 0)
    assert adv("turn_returns", eps) == [[0.0, -1.0], [0.0, 1.0]]
    # gigpo: episode part 0; step group s0 holds both turn 0s, returns 1 + .95 * 0 and 0 + .95 * 1: +-1
    assert adv("gigpo", eps) == [pytest.approx([1.0, 0.0], abs=1e-4), pytest.approx([-1.0, 0.0], abs=1e-4)]
    for name, kept in (("grpo", False), ("turn_returns", True), ("gigpo", True)):
        cfg = AlgoConfig(name=name)  # algo.masks unset: the algorithm's default
        keep, _ = apply_masks(eps, cfg, cfg.masks)
        assert keep == [[kept, kept], [kept, kept]], name


def test_default_masks_per_algorithm():
    from turnrl.algos import ALGORITHMS

    centred = {"grpo", "dr_grpo", "rloo", "reinforce_pp", "refuel"}  # equal returns: zero advantages (refuel: zero gap)
    assert {n: AlgoConfig(name=n).masks for n in ALGORITHMS} == {
        n: (["zero_variance"] if n in centred else []) for n in ALGORITHMS}
    assert AlgoConfig(name="gigpo", masks=["zero_variance"]).masks == ["zero_variance"]  # set: kept as set
    cfg = AlgoConfig()  # a default follows the name assigned later; a mask list set stays
    cfg.name = "gigpo"
    assert cfg.masks == [] and cfg.model_dump()["masks"] == []
    cfg.name = "rloo"
    assert cfg.masks == ["zero_variance"]
    cfg.masks = ["void"]
    cfg.name = "gigpo"
    assert cfg.masks == ["void"]
    assert AlgoConfig(name="igpo", masks=None).masks == []  # None: unset


def test_void_masked_rewards_still_count_in_the_group():
    eps = group()
    eps[0].turns[0].void = True
    a = adv("dr_grpo", eps)  # advantages come from all three returns, whatever is masked later
    assert a[2] == pytest.approx([-0.5, -0.5])


def toy_episodes():
    """FirstTurnDecides played with scripted replies: the first reply decides (reward on turn
    0), the second is noise that here happens to copy the first (AA, AA, BB, BB)."""
    out = []
    for first, second in [("A", "A"), ("A", "A"), ("B", "B"), ("B", "B")]:
        env = FirstTurnDecides()
        env.reset(0)
        turns = []
        for text in (first, second):
            state = env.state()
            step = env.step(text)
            turns.append(Turn([1], [5], [0.0], text=text, reward=step.reward, state=(state, turns[0].text if turns else "")))
        out.append(Episode(turns, group_id=0, gold_answer=env.gold_answer()))
    return out


def credit(advs, eps, turn):
    """Mean advantage of turn ``turn`` when its reply was A, minus when it was B."""
    a = [float(x[turn]) for x, e in zip(advs, eps) if e.turns[turn].text == "A"]
    b = [float(x[turn]) for x, e in zip(advs, eps) if e.turns[turn].text == "B"]
    return sum(a) / len(a) - sum(b) / len(b)


@pytest.mark.parametrize("name,ratio", [("turn_returns", 0.0), ("gigpo", 0.5), ("igpo", 2 / 3)])
def test_per_turn_estimators_credit_the_deciding_turn_and_grpo_does_not(name, ratio):
    eps = toy_episodes()
    grpo = adv("grpo", eps)
    # trajectory-level GRPO pushes the noise turn exactly as hard as the deciding one
    assert credit(grpo, eps, 0) == pytest.approx(credit(grpo, eps, 1))
    # beliefs in the gold answer "A": 0.2 before; 0.6 after a first "A", 0.1 after a first "B"
    aux = Aux(beliefs=[[0.2, 0.6 if e.turns[0].text == "A" else 0.1] for e in eps])
    a = adv(name, eps, aux)
    c0, c1 = credit(a, eps, 0), credit(a, eps, 1)
    assert c0 > 0  # the deciding turn is credited
    # the noise turn gets less credit than the deciding one: by hand, turn_returns 0 (G_1 = 0 for all),
    # gigpo 1/2 (turn 0: episode +- 1 plus step +- 1; turn 1: episode only), igpo (1/s) / (1.5/s) = 2/3
    assert c1 / c0 == pytest.approx(ratio, abs=1e-4)


def test_an_env_without_what_the_algorithm_needs_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import turnrl.trainer as trainer_mod
    from turnrl.algos.base import NeedsError
    from turnrl.config import load_config

    def no_model(cfg):  # the check must come first: loading a model here is a failure of the test
        raise AssertionError("the model was loaded before the env was checked")

    monkeypatch.setattr(trainer_mod, "build_policy", no_model)
    base = ["--env.name", "tests.toy_envs:LengthEnv", "--train.out_dir", str(tmp_path / "r")]
    with pytest.raises(NeedsError, match=r"algorithm 'gigpo' needs the env's anchor state.*LengthEnv.*Env.state\(\)"):
        trainer_mod.Trainer(load_config(None, [*base, "--algo.name", "gigpo"]))
    with pytest.raises(NeedsError, match=r"algorithm 'igpo' needs the env's gold answer.*Env.gold_answer\(\)"):
        trainer_mod.Trainer(load_config(None, [*base, "--algo.name", "igpo"]))


def test_the_worked_example_in_docs_adds_an_estimator():
    """docs/algorithms.md: one pure function, one registry entry, one hand-computed test."""
    from turnrl.algos import ALGORITHMS, _grpo_like, register
    from turnrl.algos.base import groups_of
    from turnrl.algos.core import episode_returns
    from turnrl.algos.estimators import _per_episode

    def max_baseline(episodes, cfg, aux):
        r = episode_returns(episodes)
        out = torch.zeros_like(r)
        for idx in groups_of(episodes).values():
            out[idx] = r[idx] - r[idx].max()
        return _per_episode(out, episodes)

    register(_grpo_like("max_baseline", "", max_baseline, summary="return minus the group's best"))
    try:
        assert adv("max_baseline", group()) == [[0.0] * 3, [-0.5] * 3, [-1.0] * 2]
        assert AlgoConfig(name="max_baseline", clip_high=0.3).clip_high == 0.3
    finally:
        del ALGORITHMS["max_baseline"]
