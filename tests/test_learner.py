"""Learner.update: which episodes enter the group statistics and which are trained."""
import dataclasses

import pytest

from tests.conftest import make_tiny_model
from tests.test_trainer import cfg_for
from turnrl.chat import ChatFormat
from turnrl.learner import Learner
from turnrl.types import Episode, Turn


def episode(reward: float, void: bool = False, failed: bool = False) -> Episode:
    turn = Turn(obs_ids=[10, 11, 12], action_ids=[20, 21], action_logprobs=[-3.0, -3.0], reward=reward, void=void)
    ep = Episode(turns=[turn], group_id=0)
    if failed:
        ep.info["failed"] = "the env raised"
    return ep


def test_masked_returns_count_in_the_group_and_failed_episodes_do_not(tmp_path, tokenizer):
    learner = Learner(cfg_for(tmp_path, extra=["--algo.masks", '["void"]']), make_tiny_model(), ChatFormat(tokenizer))
    seen = []

    def spy(eps, cfg, aux):  # the estimator's input: the episodes whose returns make the group statistics
        seen.append([e.turns[0].reward for e in eps])
        return real(eps, cfg, aux)

    real = learner.algo.advantages
    learner.algo = dataclasses.replace(learner.algo, advantages=spy)
    eps = [episode(1.0), episode(0.0, void=True), episode(0.5), episode(9.0, failed=True)]
    stats = learner.update(eps)
    # the void episode's 0 is in its group (mean 0.5: the kept episodes get +-1.2247 and 0), the failed one's 9 nowhere
    assert seen == [[1.0, 0.0, 0.5]]
    assert real(eps[:3], learner.cfg.algo, None)[0].tolist() == pytest.approx([1.224744] * 2, abs=1e-5)
    assert (stats["episodes_failed"], stats["episodes_masked"], stats["episodes_trained"]) == (1.0, 1.0, 2.0)
    assert stats["masked_void"] == 1.0 and stats["update_skipped"] == 0.0
