import pytest

from turnrl.envs import ArithmeticTasks, RetryEnv, Task
from turnrl.envs.answers import (extract_answer_tag, extract_auto, extract_boxed, extract_choice, extract_explicit,
                                 extract_last_number, normalize, option_letters, verify_exact, verify_math, verify_numeric)
from turnrl.types import ActionText


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


def test_choice_reads_every_letter_of_an_eight_option_question():
    assert extract_choice("The answer is (G).", letters="ABCDEFGH") == "G"
    assert extract_choice("E) 103", letters="ABCDE") == "E"
    assert extract_choice("E) 103", letters="ABCD") is None  # not an option of a 4-way question


def test_option_letters_come_from_the_count_or_the_labels_in_the_question():
    assert option_letters("q", 6) == "ABCDEF"
    assert option_letters("Pick one.\nA) 1\nB) 2\n(C) 3\nD. 4\nE: 5\nAnswer with the letter.") == "ABCDE"
    assert option_letters("What is the capital of France?") == "ABCDEFGH"  # no labels: any of A-H


@pytest.mark.parametrize("num_choices", [5, 6, 8])
def test_every_option_of_a_five_to_eight_way_question_can_be_answered(num_choices):
    tasks = ArithmeticTasks("eval", multiple_choice=True, num_choices=num_choices)
    letters = "ABCDEFGH"[:num_choices]
    seen = set()
    for i in range(60):
        task = tasks[i]
        env = RetryEnv([task])
        env.reset(0)
        s = env.step(f"The answer is {task.answer}.")
        assert s.valid and s.correct, (task.question, task.answer)
        seen.add(task.answer)
    assert seen & set(letters[4:])  # options E.. were the right answer at least once


def test_file_choice_task_reads_the_options_labelled_in_its_question():
    q = "Which is prime?\nA) 4\nB) 6\nC) 8\nD) 9\nE) 10\nF) 11\nAnswer with the letter."
    env = RetryEnv([Task("f", q, "F", "choice", "choice")])
    env.reset(0)
    assert env.step("F").correct
    env = RetryEnv([Task("f", "Which is prime?\nA) 4\nB) 5\nC) 8\nD) 9", "B", "choice", "choice")])
    env.reset(0)
    assert not env.step("G").valid  # G is no option of this question


def test_explicit_answers_are_tag_boxed_or_stated_never_a_last_number_guess():
    assert extract_explicit("so <answer>12</answer> and 13") == "12"
    assert extract_explicit(r"thus \boxed{7}. 8") == "7"
    assert extract_explicit("The answer is 1,250. Check: 3") == "1250"
    assert extract_explicit("Final answer: -3.5") == "-3.5"
    assert extract_explicit("Step 1: 4 + 7 = 11.\n11. Next we") is None


GSM = Task("g", "Tom has 4 apples and buys 7. How many?", "11", "math", "auto")
UNFINISHED = "Let's count.\n1. Tom starts with 4.\n2. He buys 7 more, so 4 + 7"  # cut off mid-reasoning


def _step(action, **kw):
    env = RetryEnv([GSM], **kw)
    env.reset(0)
    return env.step(action)


def test_a_cut_off_reply_without_an_explicit_answer_is_invalid():
    s = _step(ActionText(UNFINISHED, cut_off=True))
    assert not s.valid and s.info["reason"] == "cut_off" and s.reward == pytest.approx(-0.1)  # before: 7 was its answer
    assert _step(ActionText(UNFINISHED, cut_off=False)).valid  # a finished reply keeps the last-number reading
    s = _step(ActionText("4 + 7 = 11, so the answer is 11. To double-check, 1", cut_off=True))
    assert s.valid and s.correct
    s = _step(ActionText("We add 4 and 7 to get 11", cut_off=True), lenient_cutoff=True)
    assert s.valid and s.correct  # the lenient reading asked for


def test_lenient_cutoff_is_a_retry_env_setting():
    from turnrl.build import env_factory
    from turnrl.config import load_config

    assert env_factory(load_config(None, ["--env.lenient_cutoff", "true"]), "train")().lenient_cutoff is True
    assert env_factory(load_config(None, []), "train")().lenient_cutoff is False
