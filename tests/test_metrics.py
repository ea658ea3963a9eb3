import pytest

from turnrl.metrics import episode_metrics, pass_at_k, succ_at_k, unique_answer_ratio
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
