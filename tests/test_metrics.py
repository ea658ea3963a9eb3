import pytest

import numpy as np

from turnrl.metrics import bootstrap_ci, episode_intervals, episode_metrics, pass_at_k, succ_at_k, unique_answer_ratio
from turnrl.types import Episode, Turn


def ep(answers, correct_at=None):
    turns = []
    for i, a in enumerate(answers, 1):
        turns.append(Turn([1], [2], [0.0], text=str(a), void=a is None,
                          info={"answer": a, "valid": a is not None, "correct": i == correct_at}))
    return Episode(turns, group_id=0)


def test_succ_at_k_by_hand():
    eps = [ep(["1"], 1), ep(["2", "3"], 2), ep(["4", "4", "4"]), ep(["5", "6", "7"], 3)]
    assert succ_at_k(eps, 3) == {1: 0.25, 2: 0.5, 3: 0.75}


def test_unique_answer_ratio_ignores_invalid_turns():
    # ep1: 4,4,4 -> 1/3 ; ep2: 1,None,2 -> 2/2 ; ep3: all invalid -> skipped
    assert unique_answer_ratio([ep(["4", "4", "4"]), ep(["1", None, "2"]), ep([None])]) == pytest.approx((1 / 3 + 1) / 2)


def test_pass_at_k_unbiased_estimator_by_hand():
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    # n=4, c=2, k=2: 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)


def test_episode_metrics_retry_accuracy_and_attempts():
    eps = [ep(["1"], 1), ep(["2", "3"], 2), ep([None, "4", "4"])]
    m = episode_metrics(eps, 3)
    assert m["multi_turn_gain"] == pytest.approx(1 / 3)
    assert m["mean_attempts_to_solve"] == 1.5
    assert m["retry_accuracy"] == pytest.approx(1 / 3)  # retries: "3" (right), "4", "4"
    assert m["invalid_format_rate"] == pytest.approx(1 / 6)


def test_turn_level_rates_by_hand():
    eps = [
        ep(["1", "2"], 2),  # wrong at attempt 1, solved later: a self-correction; answer changed
        ep(["4", "4", "4"]),  # wrong at attempt 1, never solved; no change, 2 repeats
        ep([None, "5", "5"]),  # wrong (invalid) at attempt 1, never solved; change counted only for 5 -> 5
        ep(["7"], 1),  # solved at once: in no denominator but invalid_format's
    ]
    m = episode_metrics(eps, 3)
    assert m["self_correction_rate"] == pytest.approx(1 / 3)  # episodes: 1 of the 3 wrong at attempt 1
    assert m["answer_change_rate"] == pytest.approx(1 / 4)
    assert m["repeated_answer_rate"] == pytest.approx(3 / 5)
    assert m["invalid_format_rate"] == pytest.approx(1 / 9)
    assert m["mean_attempts_to_solve"] == pytest.approx(1.5)


def test_tokens_and_latency_per_episode():
    a = ep(["1", "2"], 2)
    for t in a.turns:
        t.latency_s = 0.5
    b = Episode([Turn([], [], [], text="3", completion_tokens=7, latency_s=2.0,
                      info={"answer": "3", "valid": True, "correct": True})], group_id=1)
    m = episode_metrics([a, b], 2)
    assert m["tokens_per_episode"] == pytest.approx((2 + 7) / 2)  # ids when known, the server's count otherwise
    assert m["latency_s_per_episode"] == pytest.approx((1.0 + 2.0) / 2)


def test_bootstrap_interval_of_a_known_case():
    assert bootstrap_ci(np.ones(50)) == (1.0, 1.0)
    assert bootstrap_ci(np.array([])) == (0.0, 0.0)
    # 200 of 400 correct: the interval is p +- 1.96 * sqrt(p (1 - p) / n) = 0.5 +- 0.049
    x = np.array([1.0, 0.0] * 200)
    lo, hi = bootstrap_ci(x)
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    assert bootstrap_ci(x) == (lo, hi)  # fixed seed: same data, same interval
    # a pooled ratio: units (2 of 2) and (0 of 6) give 0.25 overall; resampling only those
    # two kinds of unit can give nothing outside [0, 1] and both ends are reached
    num, den = np.array([2.0, 0.0] * 20), np.array([2.0, 6.0] * 20)
    lo, hi = bootstrap_ci(num, den)
    assert 0.0 < lo < 0.25 < hi < 1.0


def test_episode_intervals_bracket_the_point_estimates():
    eps = [ep(["1"], 1), ep(["2", "3"], 2), ep(["4", "4", "4"]), ep(["5", "6", "7"], 3)] * 10
    m, ci = episode_metrics(eps, 3), episode_intervals(eps, 3)
    for key in ("succ@1", "succ@3", "self_correction_rate", "repeated_answer_rate"):
        assert ci[key][0] <= m[key] <= ci[key][1], key


def test_self_correction_counts_episodes_and_retry_accuracy_counts_retry_turns():
    # episodes that stop at their first right answer: the two rates once were one number
    eps = [ep(["1", "2", "3"], 3), ep(["4", "5"]), ep(["6"], 1)]
    m = episode_metrics(eps, 3)
    assert m["self_correction_rate"] == pytest.approx(1 / 2)  # of 2 episodes wrong at attempt 1, 1 solved later
    assert m["retry_accuracy"] == pytest.approx(1 / 3)  # of 3 retry turns ("2", "3", "5"), 1 right
