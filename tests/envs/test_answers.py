import pytest

from turnrl.envs.answers import (extract_answer_tag, extract_auto, extract_boxed, extract_choice, extract_last_number,
                                 normalize, verify_exact, verify_math, verify_numeric)


def test_answer_tag_takes_the_last_nonempty_tag():
    assert extract_answer_tag("<think>x</think><answer> 12 </answer> <answer>13</answer>") == "13"
    assert extract_answer_tag("no tags") is None
    assert extract_answer_tag("<answer>  </answer>") is None


def test_boxed_handles_nested_braces_and_unclosed():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{unclosed") is None


def test_last_number_strips_thousands_separators():
    assert extract_last_number("27 + 82 = 1,109.") == "1109"
    assert extract_last_number("-3.5 and then") == "-3.5"
    assert extract_last_number("none") is None


def test_choice_needs_exactly_one_distinct_letter():
    assert extract_choice("D) 103") == "D"
    assert extract_choice("The answer is (B).") == "B"
    assert extract_choice("B or C") is None
    assert extract_choice("I think so") is None  # 'I' is not an option letter


def test_auto_prefers_tag_then_boxed_then_number():
    assert extract_auto(r"<answer>7</answer> \boxed{8} 9") == "7"
    assert extract_auto(r"\boxed{8} 9") == "8"
    assert extract_auto("9 apples") == "9"


@pytest.mark.parametrize("pred,ref,ok", [("109", "109", True), ("109.0", "109", True), ("1,109", "1109", True),
                                         ("108", "109", False), ("abc", "109", False)])
def test_numeric_verifier(pred, ref, ok):
    assert verify_numeric(pred, ref) is ok


def test_math_verifier_accepts_equivalent_forms():
    assert verify_math(r"\frac{1}{2}", "0.5")
    assert verify_math("72", "72")
    assert not verify_math("71", "72")


def test_exact_is_case_and_space_insensitive():
    assert verify_exact(" Paris ", "paris")
    assert normalize("1 000") == "1000" and normalize("7.0") == "7"
