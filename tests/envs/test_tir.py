import time

import pytest

from turnrl.envs import ArithmeticTasks, TIREnv, check_env
from turnrl.rollout import step_envs
from turnrl.tools.sandbox import bwrap_path

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap not installed (.ci/run installs it)")


def env(**kw):
    return TIREnv(ArithmeticTasks("eval", digits=3), **kw)


def test_code_then_boxed_answer_by_hand():
    e = env(max_turns=3)
    msgs = e.reset(0)
    assert msgs[0].role == "system" and msgs[1].content == "What is 530 + 307? Answer with just the number."
    s = e.step("Let me compute.\n```python\nprint(530 + 307)\n```")
    assert (s.reward, s.terminated, s.truncated) == (0.0, False, False)
    assert s.messages[0].content == "```output\n837\n```" and s.info["kind"] == "code" and s.valid
    s = e.step("So the answer is \\boxed{837}.")
    assert (s.reward, s.terminated, s.correct) == (1.0, True, True)


def test_interpreter_state_carries_over_between_turns():
    e = env()
    e.reset(0)
    e.step("```python\nx = 41\nprint('set')\n```")
    s = e.step("```python\nprint(x + 1)\n```")
    assert s.messages[0].content == "```output\n42\n```"  # earlier output is not repeated


def test_void_turn_ends_the_episode_and_is_flagged():
    e = env()
    e.reset(1)
    s = e.step("I think it is about a thousand.")
    assert s.terminated and s.reward == 0.0 and s.valid is False and s.info["kind"] == "void"


def test_wrong_answer_errors_and_turn_cap():
    e = env(max_turns=2)
    e.reset(0)
    s = e.step("```python\n1/0\n```")
    assert "ZeroDivisionError" in s.messages[0].content and not s.terminated
    s = e.step("```python\nprint(1)\n```")  # the last allowed turn, still no answer
    assert s.truncated and not s.terminated and s.messages == []
    e.reset(0)
    assert e.step("\\boxed{836}").reward == 0.0


def test_passes_check_env():
    check_env(env())


def test_code_of_many_episodes_runs_concurrently():
    envs = [env() for _ in range(4)]
    for i, e in enumerate(envs):
        e.reset(i)
    t0 = time.monotonic()
    steps = step_envs(envs, ["```python\nimport time\ntime.sleep(1)\nprint('done')\n```"] * 4)
    assert time.monotonic() - t0 < 2.5  # four one-second runs side by side, not 4 s in a row
    assert all(s.messages[0].content == "```output\ndone\n```" for s in steps)


def test_tool_output_tokens_are_context_never_trained(tiny_model, tokenizer, chat):
    from turnrl.engine import HFEngine, SamplingParams
    from turnrl.rollout import RolloutConfig, collect

    # the first reply (code) is replayed, so its tool output is certain; the model then samples
    eps = collect([env()], [0], [0], HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id), chat,
                  RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=4)),
                  prefixes=[["```python\nprint(6 * 7)\n```"]])
    ep = eps[0]
    sampled = ep.turns[1]
    out = tokenizer.encode("```output\n42\n```", add_special_tokens=False)
    obs = sampled.obs_ids
    at = next(i for i in range(len(obs)) if obs[i:i + len(out)] == out)  # the tool output, as tokens
    start = len(ep.turns[0].obs_ids) + len(ep.turns[0].action_ids)
    mask = ep.loss_mask
    assert not any(mask[start + at:start + at + len(out)])
    assert mask[start + len(obs):start + len(obs) + len(sampled.action_ids)] == [True] * len(sampled.action_ids)


def test_void_turn_without_ending_gets_a_nudge():
    e = env(end_on_void=False, max_turns=2)
    e.reset(1)
    s = e.step("no idea")
    assert not (s.terminated or s.truncated) and s.valid is False
    assert s.messages[0].content == "Write a ```python block to run code, or give your final answer as \\boxed{...}."
    s = e.step("still no idea")
    assert s.truncated and s.messages == []
