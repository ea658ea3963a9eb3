import pytest

from turnrl.envs import RetryEnv, Task, check_env, make, resolve
from turnrl.envs.check import EnvCheckError
from turnrl.types import Message, Step

TASK = Task("t0", "What is 2 + 3? Answer with just the number.", "5", "numeric", "last_number", operands=(2, 3))


def run(actions, **kw):
    env = RetryEnv([TASK], **kw)
    env.reset(0)
    steps = []
    for a in actions:
        s = env.step(a)
        steps.append(s)
        if s.terminated or s.truncated:
            break
    return steps


def test_solved_first_attempt_gets_reward_one():
    (s,) = run(["5"])
    assert s.reward == 1.0 and s.terminated and not s.truncated and s.messages == []


def test_success_decays_with_attempts_and_repetition_is_penalised():
    # attempts: 4, 4, 5 -> success at k=3: 0.5**2 = 0.25; valid answers T=3, distinct E=2:
    # -0.5 * (1 - 2/3) = -1/6 on the last turn.
    steps = run(["4", "4", "5"])
    assert [s.reward for s in steps[:2]] == [0.0, 0.0]
    assert steps[2].reward == pytest.approx(0.25 - 0.5 / 3)
    assert steps[0].messages == [Message("user", "Incorrect. Please think again.")]


def test_unsolved_episode_is_truncated_with_format_and_repetition_penalties():
    # 3 attempts: "x" (no answer: -0.1), "4", "4": T=2, E=1 -> -0.5 * (1 - 1/2) = -0.25
    steps = run(["x", "4", "4"], max_turns=3)
    assert [s.reward for s in steps] == pytest.approx([-0.1, 0.0, -0.25])
    assert steps[-1].truncated and not steps[-1].terminated


def test_penalties_can_be_switched_off_and_feedback_changed():
    steps = run(["x", "4", "4"], max_turns=3, repetition_penalty=0, format_penalty=0, feedback="Try again.")
    assert [s.reward for s in steps] == [0.0, 0.0, 0.0]
    assert steps[0].messages[0].content == "Try again."
    (s,) = run(["5"], success_decay=1.0)
    assert s.reward == 1.0


def test_rewritten_question_is_a_format_failure():
    (s, *_rest) = run(["2 + 4 = 6", "2 + 3 = 5"])
    assert s.info["reason"] == "rewrote_question" and not s.valid and s.reward == pytest.approx(-0.1)
    assert _rest[0].correct


def test_choice_answer_by_value_maps_to_its_letter():
    t = Task("m", "q", "B", "choice", "choice", choices=("10", "11", "12", "13"))
    env = RetryEnv([t])
    env.reset(0)
    assert env.step("11").correct


def test_retry_env_passes_check_env():
    check_env(RetryEnv([TASK, TASK]))


class NonDeterministic:
    max_turns = 1

    def __init__(self):
        self.n = 0

    def reset(self, seed):
        self.n += 1
        return [Message("user", f"call {self.n}")]

    def step(self, action):
        return Step([], 0.0, True, False, {})


class BadReward(NonDeterministic):
    def reset(self, seed):
        return [Message("user", "q")]

    def step(self, action):
        return Step([], float("nan"), True, False, {})


def test_check_env_catches_nondeterminism_and_bad_rewards():
    with pytest.raises(EnvCheckError, match="not deterministic"):
        check_env(NonDeterministic())
    with pytest.raises(EnvCheckError, match="finite"):
        check_env(BadReward())


def test_registry_and_module_path():
    assert isinstance(make("retry", tasks=[TASK]), RetryEnv)
    assert resolve("tests.envs.test_retry:BadReward") is BadReward
    with pytest.raises(ValueError, match="unknown env 'nope'"):
        make("nope")
    with pytest.raises(ValueError, match="cannot import"):
        resolve("no.such.module:Env")
