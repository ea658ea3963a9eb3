"""The critic algorithms (gae = RAGEN bi-level GAE, archer = ArCHer): their pure functions by
hand, credit on the toy env where only the first turn decides, critics that learn it, and
training runs on the tiny model (weights change, NaN skips the step, exact resume)."""
import json
import math

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.toy_envs import FirstTurnDecides
from turnrl.algos import Aux, get_algorithm
from turnrl.algos.critics import (UtteranceCritic, ValueCritic, archer_advantage, archer_targets, bilevel_gae,
                                  soft_update, utterance_transitions)
from turnrl.config import AlgoConfig, load_config
from turnrl.trainer import Trainer
from turnrl.types import Episode, Turn


def ep(rewards, lens, texts=None, gid=0):
    turns = [Turn([1], [5] * n, [0.0] * n, text=(texts[k] if texts else ""), reward=r)
             for k, (r, n) in enumerate(zip(rewards, lens))]
    return Episode(turns, group_id=gid)


def adv(name, eps, aux, **cfg):
    return [a.tolist() for a in get_algorithm(name).advantages(eps, AlgoConfig(name=name, **cfg), aux)]


# -- bi-level GAE by hand ----------------------------------------------------------------

def test_bilevel_gae_by_hand_on_a_two_turn_episode():
    # turns of 2 and 1 tokens, values [0.5, 0.6 | 0.2], rewards [0.1, 1.0], gamma 0.9, lam_turn 0.8, lam_token 0.5
    # k=2 (last token, last turn): 1.0 - 0.2 = 0.8
    # k=1 (last token of turn 0): 0.1 + 0.9 * 0.2 - 0.6 + 0.9 * 0.8 * 0.8 = 0.256
    # k=0: (0.6 - 0.5) + 0.5 * 0.256 = 0.228
    v = torch.tensor([0.5, 0.6, 0.2])
    assert bilevel_gae(v, [2, 1], [0.1, 1.0], 0.9, 0.8, 0.5).tolist() == pytest.approx([0.228, 0.256, 0.8])
    # all lambdas and gamma 1: the reward-to-go minus the value, 1.1 - 0.5, 1.1 - 0.6, 1.0 - 0.2
    assert bilevel_gae(v, [2, 1], [0.1, 1.0], 1.0, 1.0, 1.0).tolist() == pytest.approx([0.6, 0.5, 0.8])
    # a turn without tokens (reward 0.3) reaches turn 0's boundary one gamma later:
    # k=1: 0.1 + 0.9 * (0.3 + 0.9 * 0.2) - 0.6 + 0.9 * 0.8 * 0.9 * 0.8 = 0.4504 ; k=0: 0.1 + 0.5 * 0.4504
    out = bilevel_gae(v, [2, 0, 1], [0.1, 0.3, 1.0], 0.9, 0.8, 0.5)
    assert out.tolist() == pytest.approx([0.3252, 0.4504, 0.8])


def test_bilevel_gae_with_lambdas_1_is_ragens_too():
    # RAGEN's compute_bi_level_gae_advantage_return runs GAE over the turns' last tokens first, then
    # inside each turn; with every lambda 1 both are Monte Carlo with a discount between turns.
    # values (.5, .6 | .2, .9), rewards (.1, 1), gamma .95 between turns:
    # k=3: 1 - .9 = .1 ; k=2: .9 - .2 + .1 = .8 ; k=1: .1 + .95 * (.2 + .8) - .6 = .45 ; k=0: .6 - .5 + .45 = .55
    v = torch.tensor([0.5, 0.6, 0.2, 0.9])
    assert bilevel_gae(v, [2, 2], [0.1, 1.0], 0.95, 1.0, 1.0).tolist() == pytest.approx([0.55, 0.45, 0.8, 0.1])
    # with lambda_turn .95 they part: turnrl chains turn 1's first-token advantage into turn 0:
    # k=1: .1 + .95 * .2 - .6 + .95 * .95 * .795 = .40749 (k=2: .7 + .95 * .1 = .795 with lambda_token .95)
    out = bilevel_gae(v, [2, 2], [0.1, 1.0], 0.95, 0.95, 0.95).tolist()
    assert out[1] == pytest.approx(0.1 + 0.95 * 0.2 - 0.6 + 0.95 * 0.95 * 0.795) and out[2] == pytest.approx(0.795)


def test_gae_estimator_whitens_over_the_trained_tokens_of_the_step():
    # raw: e0 [0.228, 0.256, 0.8] (above); e1 one token, V 0, reward 0.5 -> 0.5; e2 not trained -> zeros
    # mean 0.446, population std 0.230139 -> (x - 0.446) / 0.230139
    eps = [ep([0.1, 1.0], [2, 1]), ep([0.5], [1]), ep([1.0], [2])]
    aux = Aux(values=[torch.tensor([0.5, 0.6, 0.2]), torch.tensor([0.0]), None])
    a = adv("gae", eps, aux, gae_gamma=0.9, gae_lambda_turn=0.8, gae_lambda_token=0.5)
    assert a[0] == pytest.approx([-0.947253, -0.825588, 1.538199], abs=1e-5)
    assert a[1] == pytest.approx([0.234641], abs=1e-5) and a[2] == [0.0, 0.0]


@pytest.mark.parametrize("name", ["gae", "archer"])
def test_one_nan_from_the_critic_makes_every_advantage_of_the_step_nan(name):
    eps = [ep([0.0, 1.0], [1, 1]), ep([1.0], [2])]
    if name == "gae":
        aux = Aux(values=[torch.tensor([0.1, float("nan")]), torch.tensor([0.2, 0.3])])
    else:
        aux = Aux(utterance_adv=[[0.5, float("nan")], [0.2]])
    a = adv(name, eps, aux)
    assert all(math.isnan(x) for row in a for x in row)


# -- ArCHer by hand ------------------------------------------------------------------------

def test_archer_targets_and_advantage_by_hand():
    r, done = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    q1_t, q2_t, v1_t, v2_t = archer_targets(r, done, torch.tensor([0.4, 9.0]), torch.tensor([0.2, 9.0]),
                                            torch.tensor([0.7, 0.1]), torch.tensor([0.3, 0.6]), gamma=0.5)
    # Q_i <- r + 0.5 * (1 - done) * V_target_i(s'): 1 + 0.2 = 1.2 / 1 + 0.1 = 1.1 ; done row: 0 (V(s') ignored)
    assert q1_t.tolist() == pytest.approx([1.2, 0.0]) and q2_t.tolist() == pytest.approx([1.1, 0.0])
    # V_i <- Q_target_i(s, a)
    assert v1_t.tolist() == pytest.approx([0.7, 0.1]) and v2_t.tolist() == pytest.approx([0.3, 0.6])
    # advantage min(Q1, Q2) - min(V1, V2): min(1, 0.8) - min(0.5, 0.6) = 0.3 ; min(0, 0.2) - min(0.4, -0.1) = 0.1
    a = archer_advantage(torch.tensor([1.0, 0.0]), torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.4]),
                         torch.tensor([0.6, -0.1]))
    assert a.tolist() == pytest.approx([0.3, 0.1])


def test_soft_update_by_hand():
    target, online = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        target.weight.fill_(0.0), target.bias.fill_(2.0), online.weight.fill_(1.0), online.bias.fill_(0.0)
    soft_update(target, online, tau=0.1)  # 0.9 * 0 + 0.1 * 1 ; 0.9 * 2 + 0.1 * 0
    assert target.weight.item() == pytest.approx(0.1) and target.bias.item() == pytest.approx(1.8)


def test_utterance_transitions_read_the_features_of_each_turn():
    # episode 0: turns of 2 and 1 tokens, features f0..f2 (scalars in 1 dim); episode 1 not trained
    eps = [ep([0.0, 1.0], [2, 1]), ep([1.0], [1])]
    feats = [torch.tensor([[1.0], [3.0], [5.0]]), None]
    tr = utterance_transitions(eps, [0], feats)
    assert tr["s"].squeeze(-1).tolist() == [1.0, 5.0]  # feature before each turn's first token
    assert tr["sa"].squeeze(-1).tolist() == [2.0, 5.0]  # mean over the turn's tokens
    assert tr["s_next"].squeeze(-1).tolist() == [5.0, 0.0] and tr["done"].tolist() == [0.0, 1.0]
    assert tr["r"].tolist() == [0.0, 1.0] and tr["episode"].tolist() == [0, 0] and tr["turn"].tolist() == [0, 1]


# -- credit on the toy env where only the first turn decides -------------------------------

def toy_episodes():
    """FirstTurnDecides played with scripted replies AA, AA, BB, BB (the second copies the
    first): reward 1 on turn 0 for a first "A". Each reply is 2 tokens (letter, end of turn)."""
    out = []
    for first, second in [("A", "A"), ("A", "A"), ("B", "B"), ("B", "B")]:
        env = FirstTurnDecides()
        env.reset(0)
        rewards = [env.step(first).reward, env.step(second).reward]
        out.append(ep(rewards, [2, 2], [first, second]))
    return out


def credit(advs, eps, turn):
    """Mean advantage of turn ``turn``'s first token when its reply was A, minus when it was B."""
    a = [float(x[2 * turn]) for x, e in zip(advs, eps) if e.turns[turn].text == "A"]
    b = [float(x[2 * turn]) for x, e in zip(advs, eps) if e.turns[turn].text == "B"]
    return sum(a) / len(a) - sum(b) / len(b)


def test_given_true_critic_values_credit_the_deciding_turn_and_not_the_noise_turn():
    eps = toy_episodes()
    grpo = adv("grpo", eps, Aux())
    assert credit(grpo, eps, 0) == pytest.approx(credit(grpo, eps, 1))  # GRPO: the noise turn as much as the deciding one
    # gae, the true values: 0.5 before the first reply, then 1 (A) or 0 (B), 0 once the outcome is paid.
    # turn 0's last token: r0 + V(s1) - V = 0 ; its first: (1 or 0) - 0.5 = +-0.5 ; turn 1: 0 everywhere.
    # tokens +-0.5 (4 of 16), 0 (12): mean 0, std sqrt(1/16) = 0.25 -> +-2: credit 4 on turn 0, 0 on turn 1
    values = [torch.tensor([0.5, 1.0 if e.turns[0].text == "A" else 0.0, 0.0, 0.0]) for e in eps]
    a = adv("gae", eps, Aux(values=values))
    assert credit(a, eps, 0) == pytest.approx(4.0, abs=1e-4) and credit(a, eps, 1) == pytest.approx(0.0, abs=1e-6)
    # archer, the true critic: Q(s0, A) = 1, Q(s0, B) = 0, V(s0) = 0.5 ; Q(s1, .) = V(s1) = 0
    q = [torch.tensor([1.0 if e.turns[0].text == "A" else 0.0, 0.0]) for e in eps]
    v = torch.tensor([0.5, 0.0])
    u = [archer_advantage(qi, qi, v, v).tolist() for qi in q]
    a = adv("archer", eps, Aux(utterance_adv=u))
    assert credit(a, eps, 0) == pytest.approx(1.0) and credit(a, eps, 1) == pytest.approx(0.0)


def history_features(eps, width=16):
    """A feature per trained token that encodes the conversation so far (a fixed random vector
    per history), as a policy's hidden state would: before each turn, then after its letter."""
    g = torch.Generator().manual_seed(0)
    table: dict[str, torch.Tensor] = {}

    def f(history: str) -> torch.Tensor:
        if history not in table:
            table[history] = torch.randn(width, generator=g)
        return table[history]

    out = []
    for e in eps:
        rows, hist = [], ""
        for t in e.turns:
            rows += [f(hist + "|"), f(hist + "|" + t.text)]
            hist += "|" + t.text + "."
        out.append(torch.stack(rows))  # (4, width)
    return out


@pytest.fixture
def one_thread():
    """Tensors of a few rows: threads only add waiting (much of it on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name,critic_cls", [("gae", ValueCritic), ("archer", UtteranceCritic)])
def test_trained_critic_credits_the_deciding_turn_and_not_the_noise_turn(name, critic_cls, one_thread):
    eps = toy_episodes()
    feats = history_features(eps)
    cfg = AlgoConfig(name=name, critic_lr=1e-2, critic_epochs=4)
    torch.manual_seed(0)
    critic = critic_cls(16, cfg)
    for _ in range(40):  # the same four episodes, step after step
        aux = Aux()
        critic.prepare(eps, [0, 1, 2, 3], feats, aux, cfg)
        critic.update(cfg)
    a = adv(name, eps, aux)
    c0, c1 = credit(a, eps, 0), credit(a, eps, 1)
    assert c0 > 0.5 and abs(c1) < 0.1 * c0  # GRPO would give c1 == c0


# -- training runs on the tiny model -------------------------------------------------------

def cfg_for(tmp_path, algo, name="run", steps=3, extra=()):
    return load_config(None, [
        "--env.name", "tests.toy_envs:LengthEnv", "--env.max_turns", "2", "--algo.name", algo,
        "--rollout.prompts_per_step", "2", "--rollout.group_size", "3", "--rollout.max_new_tokens", "6",
        "--rollout.temperature", "1.0", "--train.steps", str(steps), "--train.lr", "1e-3",
        "--train.out_dir", str(tmp_path / name), "--train.checkpoint_every", "1",
        "--eval.num_tasks", "2", "--eval.pass_k", "0", "--eval.before", "false", "--log.progress", "false", *extra])


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def train_rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in l]


@pytest.mark.parametrize("algo", ["gae", "archer"])
def test_three_steps_train_policy_and_critic_without_nan(tmp_path, tokenizer, algo):
    model = make_tiny_model()
    t = Trainer(cfg_for(tmp_path, algo), model, tokenizer)
    before, critic_before = weights(model), weights(t.critic)
    t.train()
    after, critic_after = weights(model), weights(t.critic)
    assert sum(not torch.equal(before[k], after[k]) for k in before) >= len(before) // 2
    assert all(torch.isfinite(v).all() for v in after.values())
    online = [k for k in critic_before if not k.startswith("target.")]
    assert all(not torch.equal(critic_before[k], critic_after[k]) for k in online if k.endswith("weight"))
    rows = train_rows(tmp_path / "run")
    assert all(r["nan_skipped"] == 0 and math.isfinite(r["loss"]) and math.isfinite(r["critic_loss"]) for r in rows)
    assert abs(rows[0]["ratio_mean"] - 1.0) < 1e-3
    if algo == "archer":  # the buffer holds the transitions of the last replay_steps (4) steps: 12 per step here
        assert [r["replay_transitions"] for r in rows] == [12.0, 24.0, 36.0]
        assert not torch.equal(critic_before["target.q1.1.weight"], critic_after["target.q1.1.weight"])


@pytest.mark.parametrize("algo,head", [("gae", "v"), ("archer", "online.q1")])
def test_a_nan_critic_skips_the_policy_update_and_the_run_goes_on(tmp_path, tokenizer, algo, head):
    model = make_tiny_model()
    before = weights(model)
    t = Trainer(cfg_for(tmp_path, algo, steps=1), model, tokenizer)
    with torch.no_grad():  # a fault we cannot otherwise cause on demand: a critic that outputs NaN
        t.critic.get_submodule(head)[-1].bias.fill_(float("nan"))
    t.train()
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
    rows = train_rows(tmp_path / "run")
    assert [r["nan_skipped"] for r in rows] == [1.0]
    assert [r["critic_nan_skipped"] for r in rows] == [4.0]  # critic_epochs steps, each skipped
    assert (tmp_path / "run" / "final").is_dir()  # the run finished: final model, evaluation


# archer's state is a superset of gae's (optimizer moments, target copies, replay buffer)
@pytest.mark.parametrize("algo", [pytest.param("gae", marks=pytest.mark.slow), "archer"])
def test_resume_restores_the_critic_exactly(tmp_path, tokenizer, algo):
    straight = Trainer(cfg_for(tmp_path, algo, "a", steps=2), make_tiny_model(), tokenizer)
    straight.train()
    Trainer(cfg_for(tmp_path, algo, "b", steps=1), make_tiny_model(), tokenizer).train()  # "crash" after step 1
    resumed = Trainer(cfg_for(tmp_path, algo, "b", steps=2), make_tiny_model(), tokenizer)
    resumed.train(resume=True)
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = straight.critic.state_dict(), resumed.critic.state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in ca if k != "_extra_state")
    oa, ob = ca["_extra_state"]["optimizer"]["state"], cb["_extra_state"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[p]["exp_avg_sq"], ob[p]["exp_avg_sq"]) for p in oa)
    if algo == "archer":
        ra, rb = ca["_extra_state"]["replay"], cb["_extra_state"]["replay"]
        assert len(ra) == len(rb) == 2 and all(torch.equal(x["s"], y["s"]) for x, y in zip(ra, rb))
