import math

import numpy as np
import pytest
import torch

from tests.conftest import make_tiny_model
from turnrl.config import load_config
from turnrl.diagnostics import (collapse_metrics, mi_proxy, retrieval_accuracy, retrieval_hits, score_matrix,
                                top_first_answer)
from turnrl.types import Episode, Turn

L = np.log

# scores[i, j] = log p(y_j | x_i). Columns as probabilities:
#   j=0: [0.5, 0.25, 0.25] -> own input best; mean 1/3, term log(0.5 / (1/3)) = log 1.5
#   j=1: [0.1, 0.6, 0.2]   -> own input best; mean 0.3, term log(0.6 / 0.3)   = log 2
#   j=2: [0.4, 0.1, 0.1]   -> input 0 best (miss); mean 0.2, term log(0.1 / 0.2) = log 0.5
DOMINANT = L(np.array([[0.5, 0.1, 0.4],
                       [0.25, 0.6, 0.1],
                       [0.25, 0.2, 0.1]]))
COLLAPSED = np.array([[-1.0, -7.0, -3.0]] * 3)  # every input gives every output the same score


def test_retrieval_accuracy_and_mi_proxy_by_hand():
    assert retrieval_accuracy(DOMINANT) == pytest.approx(2 / 3)
    assert mi_proxy(DOMINANT) == pytest.approx((math.log(1.5) + math.log(2) + math.log(0.5)) / 3)  # = log(1.5) / 3


def test_a_collapsed_policy_retrieves_at_chance_and_has_no_information():
    assert retrieval_accuracy(COLLAPSED) == pytest.approx(1 / 3)  # three-way tie everywhere: 1/3 each
    assert mi_proxy(COLLAPSED) == pytest.approx(0.0, abs=1e-12)


def test_ties_and_the_upper_bound():
    # output 0 ties between both inputs (1/2), output 1 is retrieved by its own input (1)
    assert list(retrieval_hits(L(np.array([[0.5, 0.1], [0.5, 0.9]])))) == [0.5, 1.0]
    # a perfectly input-specific policy reaches the InfoNCE ceiling log n
    sharp = np.full((4, 4), -1000.0)
    np.fill_diagonal(sharp, 0.0)
    assert retrieval_accuracy(sharp) == 1.0 and mi_proxy(sharp) == pytest.approx(math.log(4))
    with pytest.raises(ValueError, match="square"):
        retrieval_accuracy(np.zeros((2, 3)))


def first(answer, text="reply"):
    return Episode([Turn([1], [2], [0.0], text=text, info={"answer": answer})], group_id=0)


def test_top_first_answer_share_by_hand():
    eps = [first("C"), first("C"), first("A"), first(None, "hello"), first(None, " hello\n"), first("C")]
    eps.append(Episode([Turn([1], [2], [0.0], text="x", frozen=True, info={"answer": "B"}),
                        Turn([3], [4], [0.0], text="y", info={"answer": "C"})], group_id=1))  # first live turn: C
    assert top_first_answer(eps) == ("answer: C", pytest.approx(4 / 7))
    assert top_first_answer(eps[3:5]) == ("text: hello", 1.0)  # no parsed answer: the stripped text counts
    assert top_first_answer([]) == (None, 0.0)


@pytest.fixture(scope="module")
def pairs(tokenizer):
    from turnrl.chat import ChatFormat
    from turnrl.types import Message

    chat = ChatFormat(tokenizer)
    qs = ["What is 2 + 3?", "Name a colour.", "What is 17 + 25? Answer with a number."]
    prompts = [chat.prompt_ids([Message("user", q)]) for q in qs]
    replies = [tokenizer.encode(r, add_special_tokens=False) for r in ["5", "Blue, like the sky.", "The answer is 42"]]
    return prompts, replies


def test_repeated_replies_are_scored_once_with_the_same_numbers(pairs):
    prompts, replies = pairs
    model = make_tiny_model()
    full, _ = score_matrix(model, prompts, [replies[0], replies[1], replies[0]])
    assert np.allclose(full[:, 2], full[:, 0]) and full.shape == (3, 3)
    ref, ent = score_matrix(model, prompts[:2], replies[:2])
    assert np.allclose(full[:2, :2], ref, atol=1e-4)


def test_score_matrix_on_the_tiny_model_equals_plain_forwards(pairs):
    prompts, replies = pairs
    model = make_tiny_model()
    scores, entropy = score_matrix(model, prompts, replies)
    assert scores.shape == (3, 3) and np.isfinite(scores).all()
    ents = []
    with torch.no_grad():
        for i, x in enumerate(prompts):
            for j, y in enumerate(replies):
                logits = model(torch.tensor([x + y])).logits[0, len(x) - 1: len(x) + len(y) - 1]  # predict the reply
                rows = torch.log_softmax(logits.double(), -1)
                assert scores[i, j] == pytest.approx(float(rows[torch.arange(len(y)), torch.tensor(y)].sum()), abs=1e-3)
                if i == j:
                    ents += (-(rows.exp() * rows).sum(-1)).tolist()
    assert entropy == pytest.approx(np.mean(ents), abs=1e-3)
    assert not model.training


def test_collapse_metrics_without_a_model_keep_the_model_free_share():
    eps = [first("C"), first("C"), first("A"), first("C")]
    m, ci, meta = collapse_metrics(eps, None, 32)
    assert m == {"top_first_answer_share": 0.75} and ci == {} and "no model" in meta["scores"]
    m, _, meta = collapse_metrics(eps, None, 0)
    assert m == {"top_first_answer_share": 0.75} and "off" in meta["scores"]


def test_evaluate_reports_the_collapse_diagnostic(tokenizer):
    from turnrl.chat import ChatFormat
    from turnrl.engine.hf import HFEngine
    from turnrl.evaluate import EngineRunner, evaluate

    chat = ChatFormat(tokenizer)
    engine = HFEngine(make_tiny_model(), chat.stop_ids, tokenizer.pad_token_id)
    cfg = load_config(None, ["--eval.num_tasks", "4", "--eval.pass_k", "0", "--env.max_turns", "1",
                             "--eval.max_new_tokens", "4", "--eval.collapse_sample", "3"])
    res = evaluate(EngineRunner(engine, chat, name="tiny"), cfg)
    m = res.metrics
    assert m["collapse_n"] == 3  # the first three of the four seeds
    assert 3 * m["retrieval_accuracy"] == pytest.approx(round(3 * m["retrieval_accuracy"]))  # 0, 1, 2 or 3 of 3 hits
    assert math.isfinite(m["mi_proxy"]) and m["mi_proxy"] <= math.log(3) + 1e-9  # the InfoNCE ceiling log n
    assert math.isfinite(m["reply_entropy"]) and m["reply_entropy"] > 0
    lo, hi = res.intervals["retrieval_accuracy"]
    assert lo <= m["retrieval_accuracy"] <= hi
    assert m["top_first_answer_share"] >= 0.25 and "seeds" in res.meta["collapse"]["scores"]


def test_collapse_sample_set_for_an_endpoint_is_an_error():
    from turnrl.endpoint import ChatEndpoint
    from turnrl.evaluate import evaluate

    cfg = load_config(None, ["--eval.num_tasks", "2", "--eval.pass_k", "0", "--eval.collapse_sample", "8"])
    with pytest.raises(ValueError, match="eval.collapse_sample = 8 would be ignored"):
        evaluate(ChatEndpoint("http://127.0.0.1:9/v1", "nothing-there", max_retries=0), cfg)
