import socket

from turnrl.endpoint import ChatEndpoint
from turnrl.envs import ArithmeticTasks, FeedbackEnv, ModelUser, RuleBasedUser, check_env
from turnrl.metrics import episode_metrics
from turnrl.types import Episode, Turn


def test_rule_based_user_hints_by_hand():
    e = FeedbackEnv(ArithmeticTasks("eval"), user=RuleBasedUser(seed=1))
    e.reset(0)  # 56 + 47 = 103
    s = e.step("The answer is 90")
    hint = s.messages[0].content
    assert hint.endswith("90 is too low. Recheck your calculation.") and "103" not in hint
    assert s.info["sim_tokens"] == len(hint.split()) and s.info["sim_error"] is None
    assert e.step("hmm").messages[0].content.endswith("I could not find a final answer in your reply; please state it clearly.")
    assert e.step("103").reward > 0
    check_env(FeedbackEnv(ArithmeticTasks("eval")))


def test_model_user_on_the_built_in_engine_never_states_the_answer(tokenizer):
    from turnrl.build import build_engine
    from turnrl.models import load_model

    user = ModelUser(build_engine(load_model("smollm2-135m"), tokenizer), persona="a strict teacher", max_new_tokens=24)
    e = FeedbackEnv(ArithmeticTasks("eval"), user=user)
    e.reset(0)
    s = e.step("The answer is 90")
    hint = s.messages[0].content
    assert hint and "103" not in hint and s.info["sim_error"] is None
    assert 0 < s.info["sim_tokens"] <= 24 and s.info["sim_latency_s"] > 0


def test_model_user_reply_with_the_answer_is_redacted():
    class Echo:  # a backend that gives the answer away, as a careless simulator would
        def complete(self, messages, sp):
            from turnrl.endpoint import Completion
            return Completion("Think again: it is 103, not 90.", True, 9, 0.0)

    e = FeedbackEnv(ArithmeticTasks("eval"), user=ModelUser(Echo()))
    e.reset(0)
    assert e.step("90").messages[0].content == "Think again: it is [...], not 90."


def test_simulator_failures_are_counted_apart_from_the_policy():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = ChatEndpoint(f"http://127.0.0.1:{port}/v1", "m", max_retries=0, timeout_s=2)
    e = FeedbackEnv(ArithmeticTasks("eval"), user=ModelUser(dead), max_turns=3)
    e.reset(0)
    turns = []
    for action in ("90", "91", "92"):
        st = e.step(action)
        turns.append(Turn([], [], [], text=action, info=st.info, feedback=st.messages))
    assert turns[0].feedback[0].content == "Incorrect. Please think again."  # the episode goes on, UFO-style
    assert "APIConnectionError" in turns[0].info["sim_error"]
    m = episode_metrics([Episode(turns, group_id=0)], 3)
    assert m["simulator_errors"] == 2.0  # two hints asked for (the third answer ends the episode)
    assert m["invalid_format_rate"] == 0.0  # the policy made no format error
