"""evaluate(): distinct held-out instances and Pass@k from n > k samples, with a scripted runner."""
import pytest

from turnrl.config import load_config
from turnrl.evaluate import evaluate
from turnrl.rollout import add_turn
from turnrl.types import Episode, Turn


class Scripted:
    """Plays each seed with the env's gold answer on a seed's first single-attempt sample
    and a wrong guess otherwise; multi-turn episodes are solved at attempt 1."""

    name = "scripted"

    def __init__(self):
        self.samples: dict[int, int] = {}
        self.reported = 0

    def run(self, make_env, seeds, cfg, batch_size, done=None):
        out = []
        for s in seeds:
            env = make_env()
            ep = Episode([], group_id=s, seed=s, messages=env.reset(s))
            single = env.max_turns == 1
            nth = self.samples.get(s, 0)
            self.samples[s] = nth + 1 if single else nth
            text = env.gold_answer() if (not single or nth == 0) else "0"
            step = env.step(text)
            add_turn(ep, Turn([], [], [], text=text, reward=step.reward, void=not step.valid, info=step.record()), step)
            out.append(ep)
            if done is not None:  # evaluate's progress bar
                done(1)
                self.reported += 1
        return out


def test_distinct_instances_and_pass_at_k_from_twice_k_samples():
    cfg = load_config(None, ["--env.name", "guess_number", "--eval.num_tasks", "60", "--eval.pass_k", "2"])
    runner = Scripted()
    res = evaluate(runner, cfg)
    assert res.meta["distinct_instances"] == 20 and res.metrics["distinct_instances"] == 20.0  # 60 seeds, 20 numbers
    assert res.meta["split_instances"] == 20 and res.meta["held_out"] == "env split"
    assert res.meta["pass_n"] == 4 and res.meta["reports_correct"] is True
    assert res.meta["machine"] is None  # no in-process model: nothing to say where it ran
    # each task: 1 right of n = 4 samples; Pass@2 = 1 - C(3,2)/C(4,2) = 1/2, Pass@1 = 1/4
    assert res.metrics["pass@2"] == pytest.approx(0.5) and res.metrics["pass@1"] == pytest.approx(0.25)
    assert res.metrics["succ@1"] == 1.0
    assert runner.reported == 60 + 60 * 4  # the progress bar counted every episode and sample


def test_pass_n_below_pass_k_is_a_config_error():
    from turnrl.config import ConfigError

    with pytest.raises(ConfigError, match="pass_n=3 must be >= pass_k=5"):
        load_config(None, ["--eval.pass_n", "3"])
