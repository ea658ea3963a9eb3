import json

import pytest

from tests.conftest import GSM8K, needs_gsm8k
from turnrl.envs.tasks import ArithmeticTasks, DataError, FileTasks, eval_expr, split_tasks


def test_arithmetic_is_deterministic_and_correct():
    a, b = ArithmeticTasks("train")[17], ArithmeticTasks("train")[17]
    assert a == b
    x, y = (int(t) for t in a.question.removeprefix("What is ").split("?")[0].split(" + "))
    assert int(a.answer) == x + y and a.operands == (x, y) and 10 <= x <= 99


def test_train_and_eval_splits_never_overlap():
    train = {ArithmeticTasks("train")[i].question for i in range(3000)}
    ev = {ArithmeticTasks("eval")[i].question for i in range(300)}
    assert not train & ev


def test_multiple_choice_has_one_correct_option():
    t = ArithmeticTasks("eval", multiple_choice=True)[5]
    value = eval_expr([int(n) for n in t.question.split("?")[0].split()[2::2]], ["+"])
    assert t.choices["ABCD".index(t.answer)] == str(value)
    assert len(set(t.choices)) == 4


def test_precedence_in_expressions():
    assert eval_expr([2, 3, 4], ["+", "*"]) == 14
    assert eval_expr([10, 3, 2], ["-", "-"]) == 5


@needs_gsm8k
def test_gsm8k_real_file_parses_final_answers():
    src = FileTasks(GSM8K, answer_format="gsm8k")
    assert len(src) == 7473
    assert src[0].answer == "72"  # Natalia sold 48 + 24 = 72 clips


def test_jsonl_missing_field_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'answer'"):
        FileTasks(p)
    p.write_text(json.dumps({"question": None, "answer": "1"}) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'question' is empty \(None\)"):
        FileTasks(p)


def test_unparsable_gsm8k_answer_names_line(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "x\n#### 5"}) + "\n" + json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"g\.jsonl:2: .*'####"):
        FileTasks(p, answer_format="gsm8k")
    p.write_text(json.dumps({"question": "q", "answer": "#### five"}) + "\n")
    with pytest.raises(DataError, match=r"g\.jsonl:1: answer 'five' is not a number"):
        FileTasks(p, answer_format="gsm8k")


def test_invalid_json_names_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        FileTasks(p)


def test_csv_and_parquet_with_custom_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = tmp_path / "d.csv"
    c.write_text("prompt,target\nWhat is 1+1?,2\nWhat is 2+2?,\n")
    with pytest.raises(DataError, match=r"d\.csv:3: field 'target' is empty \(''\)"):
        FileTasks(c, question_field="prompt", answer_field="target")
    q = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "target": ["1", "2"]}), q)
    src = FileTasks(q, question_field="prompt", answer_field="target", prompt_template="Q: {question}")
    assert [t.question for t in src] == ["Q: a", "Q: b"] and src[1].answer == "2"


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        FileTasks(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        FileTasks(tmp_path / "x.txt")
    with pytest.raises(DataError, match="a directory, not a file"):
        FileTasks(tmp_path)


def test_a_file_whose_rows_all_repeat_the_eval_questions_leaves_no_training_rows(tmp_path):
    rows = tmp_path / "dups.jsonl"
    rows.write_text('{"question": "same?", "answer": "1"}\n' * 6)
    src = FileTasks(rows)
    assert len(split_tasks(src, "eval", 2)) == 2
    with pytest.raises(DataError, match=r"dups\.jsonl: no training rows left: all 4 rows outside the eval split "
                                        r"repeat one of its 2 questions"):
        split_tasks(src, "train", 2)


@needs_gsm8k
def test_file_split_is_disjoint_and_seeded():
    src = FileTasks(GSM8K, answer_format="gsm8k", limit=300)
    ev, tr = split_tasks(src, "eval", 50), split_tasks(src, "train", 50)
    assert len(ev) == 50 and len(tr) == 250
    assert not {t.id for t in ev} & {t.id for t in tr}
    assert [t.id for t in split_tasks(src, "eval", 50)] == [t.id for t in ev]
