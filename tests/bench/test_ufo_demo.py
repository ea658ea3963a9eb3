import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ufo_demo():
    spec = importlib.util.spec_from_file_location("ufo_demo", ROOT / "bench" / "ufo_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(*answers):
    """An episode record as episodes.jsonl holds it; None is a turn without a parseable answer."""
    return {"seed": 0, "opening": [], "turns": [{"answer": a, "valid": a is not None} for a in answers]}


def test_behaviour_counts_first_answers_repeats_and_sequences():
    records = [_rec("C", "A", "B"), _rec("C", "C"), _rec("C", "A", "B"), _rec(None, "D"), _rec("A"),
               _rec("D", None, "D")]
    b = _ufo_demo().behaviour(records, top=3)
    assert b["episodes"] == 6
    assert b["first_answer"] == {"C": 3, "-": 1, "A": 1, "D": 1}
    assert list(b["first_answer"]) == ["C", "-", "A", "D"]  # by count, then by answer
    assert b["episodes_repeating_an_answer"] == 2  # C, C and D, -, D; an unparseable turn is no answer
    assert b["most_common_sequences"] == [{"answers": ["C", "A", "B"], "episodes": 2},
                                          {"answers": ["-", "D"], "episodes": 1},
                                          {"answers": ["A"], "episodes": 1}]
    assert b["most_common_openings"] == [{"answers": ["C", "A", "B"], "episodes": 2},
                                         {"answers": ["D", "-", "D"], "episodes": 1}]
