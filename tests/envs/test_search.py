import pytest

from turnrl.envs import DataError, check_env
from turnrl.envs.games import play
from turnrl.envs.search import SearchEnv, TemplatePlayer, answer_matches


def test_search_then_answer_by_hand():
    e = SearchEnv("all")
    msgs = e.reset(0)
    assert msgs[0].content.endswith("Question: On which river lies the town where Marela Quint was born?")
    s = e.step("<search>Marela Quint</search>")
    assert s.messages[0].content.startswith("[1] Marela Quint: Marela Quint is a painter born in the town of Quillan.")
    s = e.step("<search>Quillan</search>")
    assert "Quillan is a town on the river Cray" in s.messages[0].content
    s = e.step("<answer>the river Cray</answer>")
    assert s.terminated and s.reward == 1.0 and s.info["searches"] == 2


def test_answer_matching():
    assert answer_matches("Cray", "Cray") and answer_matches("the river Cray.", "Cray")
    assert answer_matches("It was founded by Agnes Morrow", "Agnes Morrow")
    assert not answer_matches("Morrow", "Agnes Morrow") and not answer_matches("Tallow", "Cray")
    assert not answer_matches("Cray or Tallow or Seren or Waddle", "Cray")  # listing everything is no answer


def test_void_and_empty_queries():
    e = SearchEnv()
    e.reset(0)
    assert e.step("I do not know").valid is False
    assert e.step("<search>the of</search>").messages[0].content == "No documents found."


def test_splits_are_disjoint_and_the_reference_player_solves_all():
    train, ev = SearchEnv("train"), SearchEnv("eval")
    assert {q["id"] for q in train.questions}.isdisjoint(q["id"] for q in ev.questions)
    assert (train.num_instances(), ev.num_instances()) == (24, 12)
    for env in (train, ev):
        rs = [play(env, TemplatePlayer, s) for s in range(env.num_instances())]
        assert all(r.solved and r.turns == 3 for r in rs)
    check_env(ev)


def test_bad_corpus_is_one_clear_error(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"id": "a", "title": "A"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:1: document has no 'text'"):
        SearchEnv(corpus=str(bad))
