"""DESIGN.md invariants 1-4 and clean episode ends, on a real tokenizer."""
import torch

from turnrl.algos.logprobs import group_logprobs
from turnrl.config import load_config
from turnrl.engine import HFEngine, SamplingParams
from turnrl.envs import RetryEnv, Task
from turnrl.envs.base import Env
from turnrl.rollout import RolloutConfig, collect
from turnrl.types import Message, Step

TASK = Task("t", "What is 2 + 3? Answer with just the number.", "5", "numeric", "last_number", operands=(2, 3))


def _roll(model, tokenizer, chat, n=4, max_turns=3, max_new=6, max_context=1024, temperature=1.0, prefixes=None):
    eng = HFEngine(model, chat.stop_ids, tokenizer.pad_token_id)
    envs = [RetryEnv([TASK], max_turns=max_turns) for _ in range(n)]
    cfg = RolloutConfig(SamplingParams(temperature=temperature, max_new_tokens=max_new, seed=5), max_context=max_context)
    return collect(envs, [0] * n, [0] * n, eng, chat, cfg, prefixes=prefixes)


class Recorder(HFEngine):
    """Records what the sampler saw and produced (to compare with what is trained)."""

    def generate(self, requests, sampling):
        res = super().generate(requests, sampling)
        self.log = getattr(self, "log", []) + [(r.token_ids, x.token_ids) for r, x in zip(requests, res)]
        return res


def test_trained_ids_are_the_sampled_ids_in_their_sampling_context(tiny_model, tokenizer, chat):
    eng = Recorder(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    envs = [RetryEnv([TASK], max_turns=3) for _ in range(2)]
    eps = collect(envs, [0, 0], [0, 0], eng, chat, RolloutConfig(SamplingParams(1.0, max_new_tokens=5, seed=1)))
    seen = sorted(eng.log, key=lambda x: len(x[0]))
    for ep in eps:
        ids = ep.token_ids
        start = 0
        for turn in ep.turns:
            start += len(turn.obs_ids)
            ctx, act = ids[:start], ids[start:start + len(turn.action_ids)]
            assert (ctx, act) in seen  # invariant 1: same ids, same context
            start += len(turn.action_ids)


def test_stitched_ids_decode_to_the_template_of_the_whole_conversation(tiny_model, tokenizer, chat):
    for ep in _roll(tiny_model, tokenizer, chat, n=3):
        # invariant 2 (ChatML is append-only); replies as the model wrote them, special tokens kept
        conv = [{"role": "user", "content": TASK.question}]
        for i, t in enumerate(ep.turns):
            reply = tokenizer.decode([x for x in t.action_ids if x not in chat.stop_ids])
            conv.append({"role": "assistant", "content": reply})
            if i < len(ep.turns) - 1:
                conv.append({"role": "user", "content": "Incorrect. Please think again."})
        text = tokenizer.apply_chat_template(conv, tokenize=False)
        stitched = tokenizer.decode(ep.token_ids)
        if not ep.turns[-1].cut_by_length:
            stitched += "\n"  # the template closes the last message with a newline
        else:
            stitched += "<|im_end|>\n"
        assert stitched == text


def test_loss_mask_is_true_exactly_on_sampled_tokens(tiny_model, tokenizer, chat):
    for ep in _roll(tiny_model, tokenizer, chat):
        mask, ids = ep.loss_mask, ep.token_ids
        expected = [False] * len(ids)
        pos = 0
        for t in ep.turns:
            pos += len(t.obs_ids)
            for j in range(len(t.action_ids)):
                expected[pos + j] = True
            pos += len(t.action_ids)
        assert mask == expected  # invariant 3
        assert sum(mask) == ep.num_action_tokens and not mask[0]
        feedback = tokenizer.encode("Incorrect. Please think again.", add_special_tokens=False)
        for t in ep.turns[1:]:
            assert feedback[0] in t.obs_ids  # feedback lives in obs, which is never trained


def test_recomputed_logprobs_match_sampler_logprobs(tiny_model, tokenizer, chat):
    eps = _roll(tiny_model, tokenizer, chat, n=4, temperature=0.7)
    with torch.no_grad():
        for share in (True, False):
            lps, _ = group_logprobs(tiny_model, eps, share_prefix=share)
            for lp, ep in zip(lps, eps):
                old = torch.tensor([x for t in ep.turns for x in t.action_logprobs])
                assert torch.allclose(lp, old, atol=1e-4)  # invariant 4: first PPO ratio = 1


def test_garbage_model_yields_invalid_turns_not_a_crash(tiny_model, tokenizer, chat):
    eps = _roll(tiny_model, tokenizer, chat, n=3, max_turns=3, max_new=4)
    for ep in eps:
        assert len(ep.turns) == 3 and ep.truncated and ep.truncated_by == "max_turns"
        assert all(t.cut_by_length for t in ep.turns)


def test_context_limit_truncates_cleanly(tiny_model, tokenizer, chat):
    prompt_len = len(chat.prompt_ids([Message("user", TASK.question)]))
    eps = _roll(tiny_model, tokenizer, chat, n=2, max_turns=5, max_new=8, max_context=prompt_len + 20)
    for ep in eps:
        assert ep.truncated and ep.truncated_by == "context"
        assert len(ep.token_ids) <= prompt_len + 20


def test_replayed_prefix_is_context_not_trained(tiny_model, tokenizer, chat):
    eps = _roll(tiny_model, tokenizer, chat, n=2, max_turns=3, prefixes=[["7"], ["7"]])
    for ep in eps:
        assert ep.turns[0].frozen and ep.turns[0].text == "7"
        n0 = len(ep.turns[0].obs_ids) + len(ep.turns[0].action_ids)
        assert not any(ep.loss_mask[:n0]) and any(ep.loss_mask[n0:])
        assert len(ep.live_turns) == 2


def test_a_long_episode_does_not_shorten_the_other_episodes_turns(tiny_model, tokenizer, chat):
    """Each episode's turn budget is its own room in the context: a long prompt next to a
    short one leaves the short one its full max_new_tokens."""
    long_task = Task("l", "Please read carefully. " * 20 + "What is 2 + 3?", "5", "numeric", "last_number")
    long_len = len(chat.prompt_ids([Message("user", long_task.question)]))
    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    envs = [RetryEnv([TASK], max_turns=1), RetryEnv([long_task], max_turns=1)]
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=16, seed=5), max_context=long_len + 10)
    short, long = collect(envs, [0, 0], [0, 1], eng, chat, cfg)
    assert len(short.turns[0].action_ids) == 16  # before: 10, the long episode's room
    assert len(long.turns[0].action_ids) == 10 and long.turns[0].cut_by_length


class NeverEnds(Env):
    """An env that never ends an episode itself: only the rollout's turn cap stops it."""

    max_turns = 3

    def reset(self, seed):
        return [Message("user", "Say anything.")]

    def step(self, action):
        return Step([Message("user", "Go on.")], 0.0, False, False)


def test_the_rollout_stops_an_episode_at_the_envs_max_turns(tiny_model, tokenizer, chat):
    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=4, seed=0), max_context=2048)
    eps = collect([NeverEnds(), NeverEnds()], [0, 1], [0, 1], eng, chat, cfg)
    for ep in eps:  # before: 4 tokens + ~10 glue a turn until the 2048-token context ran out
        assert len(ep.turns) == 3 and ep.truncated and ep.truncated_by == "max_turns" and not ep.terminated


def test_turnrl_rollout_uses_the_retry_temperature(monkeypatch, capsys, tiny_model, tokenizer):
    import turnrl.build
    import turnrl.rollout
    from turnrl.cli import main

    seen = []
    real = turnrl.rollout.collect
    monkeypatch.setattr(turnrl.build, "build_policy", lambda cfg: (tiny_model, tokenizer))
    monkeypatch.setattr(turnrl.rollout, "collect", lambda *a, **kw: seen.append(a[5]) or real(*a, **kw))
    assert main(["rollout", "-n", "1", "--env.max_turns", "2", "--rollout.max_new_tokens", "2",
                 "--rollout.temperature", "0.5", "--rollout.retry_temperature", "1.3"]) == 0
    (cfg,) = seen
    assert cfg.retry_temperature == 1.3 and cfg.sampling.temperature == 0.5
    assert RolloutConfig.from_section(load_config(None, ["--rollout.retry_temperature", "0.9"]).rollout, 0).retry_temperature == 0.9


def test_picking_episodes_by_correctness_needs_an_env_that_reports_it(tiny_model, tokenizer, chat):
    import pytest

    from turnrl.config import ConfigError
    from turnrl.rollout import require_correct

    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=2, seed=0))
    never = collect([NeverEnds()], [0], [0], eng, chat, cfg)
    with pytest.raises(ConfigError, match="rollout.rise_groups needs an env that reports Step.correct; env 'never'"):
        require_correct(never, "rollout.rise_groups", "never")
    require_correct(collect([RetryEnv([TASK], max_turns=1)], [0], [0], eng, chat, cfg), "rollout.rise_groups", "retry")


def test_the_env_is_told_when_the_token_limit_cut_a_reply_off(tiny_model, tokenizer, chat):
    class Recording(NeverEnds):
        max_turns = 1

        def step(self, action):
            self.seen = action
            return super().step(action)

    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    env = Recording()
    (ep,) = collect([env], [0], [0], eng, chat, RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=3, seed=0)))
    assert ep.turns[0].cut_by_length and env.seen.cut_off and env.seen == ep.turns[0].text


def test_an_episode_samples_the_same_tokens_whatever_batch_it_is_in(tiny_model, tokenizer, chat):
    tasks = [Task(f"t{i}", f"What is {i} + 3?" + " Think." * i, str(i + 3), "numeric", "last_number") for i in range(8)]
    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=5, seed=9), max_context=1024)
    (alone,) = collect([RetryEnv(tasks, max_turns=2)], [5], [5], eng, chat, cfg)
    batch = collect([RetryEnv(tasks, max_turns=2) for _ in range(8)], list(range(8)), list(range(8)), eng, chat, cfg)
    assert [t.action_ids for t in batch[5].turns] == [t.action_ids for t in alone.turns]
    group = collect([RetryEnv(tasks, max_turns=1) for _ in range(3)], [5] * 3, [5] * 3, eng, chat, cfg)
    assert len({tuple(e.turns[0].action_ids) for e in group}) == 3  # members of a group sample apart


# -- per-turn contexts (markovian, window, history-rewriting templates) ------------------

#: sha256 of [[(obs_ids, action_ids) per turn] per episode] of the rollout below, recorded
#: with the stitching code as it was before per-turn contexts existed (re-recorded, stitching
#: unchanged, when the sampler moved from torch.multinomial to one uniform draw per token)
FULL_RECORDING = "270268a303398d9dfebe17f32bddc1f86d003942c40a3e9c6c9b615885318d9e"

QWEN3_STYLE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{%- set c = m.content -%}"
    "{%- if loop.index0 < ns.last_user and '</think>' in c -%}{%- set c = c.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
    "{{ '<|im_start|>assistant\\n' + c + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")


def _ctx_roll(eng, chat, context, n=2, max_turns=4, max_new=6, prefixes=None, **kw):
    envs = [RetryEnv([TASK], max_turns=max_turns) for _ in range(n)]
    cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=5), context=context, **kw)
    return collect(envs, [0] * n, [0] * n, eng, chat, cfg, prefixes=prefixes)


def _check_scored_as_sampled(model, eng, eps):
    """Every live turn: (context, action) is a pair the engine saw and produced, and the
    learner's log-probs of the actions equal the sampler's (first PPO ratio 1)."""
    for ep in eps:
        for ctx, t in zip(ep.contexts(), ep.turns):
            if not t.frozen:
                assert (ctx, t.action_ids) in eng.log
    with torch.no_grad():
        for share in (True, False):
            lps, _ = group_logprobs(model, eps, share_prefix=share)
            for lp, ep in zip(lps, eps):
                old = torch.tensor([x for t in ep.live_turns for x in t.action_logprobs])
                assert lp.shape == old.shape and torch.allclose(lp, old, atol=1e-4)


def test_full_context_episodes_are_token_identical_to_the_stitched_recording(tiny_model, tokenizer, chat):
    import hashlib
    import json

    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    envs = [RetryEnv([TASK], max_turns=3) for _ in range(3)]
    eps = collect(envs, [0, 0, 1], [0, 0, 1], eng, chat, RolloutConfig(SamplingParams(1.0, max_new_tokens=6, seed=3)))
    assert all(ep.append_only and len(ep.turns) == 3 for ep in eps)
    got = json.dumps([[(t.obs_ids, t.action_ids) for t in e.turns] for e in eps])
    assert hashlib.sha256(got.encode()).hexdigest() == FULL_RECORDING


def test_markovian_context_stays_flat_and_is_scored_as_sampled(tiny_model, tokenizer, chat):
    from turnrl.rollout import state_instruction

    eng = Recorder(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    eps = _ctx_roll(eng, chat, "markovian", n=3, max_turns=5)
    opening = [Message("user", TASK.question + state_instruction("state"))]
    first = chat.prompt_ids(opening)
    later = chat.prompt_ids([*opening, Message("assistant", "<state></state>"),
                             Message("user", "Incorrect. Please think again.")])
    for ep in eps:
        assert not ep.append_only and len(ep.turns) == 5
        # the random model writes no state block: every turn is rebuilt from the empty state
        assert [len(c) for c in ep.contexts()] == [len(first)] + [len(later)] * 4
        assert ep.contexts()[0] == first and ep.contexts()[3] == later
        assert all(t.void and t.info["state_missing"] for t in ep.turns)
    _check_scored_as_sampled(tiny_model, eng, eps)
    full = _ctx_roll(HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id), chat, "full", n=1, max_turns=5)[0]
    assert len(full.contexts()[-1]) > len(later) + 4 * 6  # full history grows by every reply


def test_markovian_keeps_the_last_state_when_a_reply_has_none(tiny_model, tokenizer, chat):
    from turnrl.metrics import episode_metrics

    eng = Recorder(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    eps = _ctx_roll(eng, chat, "markovian", n=2, max_turns=4, prefixes=[["<state>tried 7</state> 7"]] * 2)
    for ep in eps:
        frozen, second, third = ep.turns[0], ep.turns[1], ep.turns[2]
        assert frozen.frozen and not frozen.void and frozen.info["answer"] == "7"  # the env saw "7", not the block
        assert "<state>tried 7</state>" in tokenizer.decode(second.context_ids)
        assert "<|im_start|>assistant\n<state>tried 7</state><|im_end|>" in tokenizer.decode(third.context_ids)
        assert second.void and second.info["state_missing"]  # counted invalid, run goes on
    m = episode_metrics(eps, 4)
    assert m["state_missing_rate"] == 1.0  # 3 live turns per episode, none wrote a block: 6 / 6
    assert m["invalid_format_rate"] >= 1.0
    _check_scored_as_sampled(tiny_model, eng, eps)


def test_window_keeps_the_sampled_ids_of_the_last_turns(tiny_model, tokenizer, chat):
    eng = Recorder(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    eps = _ctx_roll(eng, chat, "window", n=2, max_turns=4, window_turns=1)
    opening = chat.prompt_ids([Message("user", TASK.question)])
    fb = [Message("user", "Incorrect. Please think again.")]
    for ep in eps:
        ctxs = ep.contexts()
        assert ctxs[0] == opening
        for k in range(1, 4):
            prev = ep.turns[k - 1]
            glue = chat.continuation_ids(fb, not prev.cut_by_length, prev.action_ids[-1])
            assert ctxs[k] == opening + prev.action_ids + glue  # only the last turn, its ids as sampled
    _check_scored_as_sampled(tiny_model, eng, eps)


def test_history_rewriting_template_contexts_are_what_the_template_renders(tiny_model, tokenizer):
    import copy

    from turnrl.chat import ChatFormat

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN3_STYLE
    chat = ChatFormat(tok)
    assert not chat.append_only
    eng = Recorder(tiny_model, chat.stop_ids, tok.pad_token_id)
    reply = "<think>\nseven is a guess\n</think>\n\n7"
    eps = _ctx_roll(eng, chat, "full", n=2, max_turns=4, prefixes=[[reply]] * 2)
    fb = {"role": "user", "content": "Incorrect. Please think again."}
    for ep in eps:
        conv = [{"role": "user", "content": TASK.question}]
        for k, (ctx, t) in enumerate(zip(ep.contexts(), ep.turns)):
            want = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
            want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
            assert ctx == list(want), k  # token for token what the template renders
            conv += [{"role": "assistant", "content": t.text}, fb]
        # the earlier turn's reasoning is gone from later contexts, its answer kept
        assert "seven is a guess" not in tok.decode(ep.contexts()[1]) and "7<|im_end|>" in tok.decode(ep.contexts()[1])
        assert ep.turns[0].action_ids == tok.encode(reply, add_special_tokens=False) + [chat.end_of_turn_id]
    _check_scored_as_sampled(tiny_model, eng, eps)


# -- env errors -----------------------------------------------------------------------------

class _Breaks(Env):
    """Two turns; seed 0 raises in reset, seed 1 in its second step, others never."""

    max_turns = 2

    def __init__(self, parallel=False):
        self.parallel_steps = parallel

    def reset(self, seed):
        if seed == 0:
            raise ValueError("no instance 0")
        self.seed, self.t = seed, 0
        return [Message("user", f"Say something about {seed}.")]

    def step(self, action):
        self.t += 1
        if self.seed == 1 and self.t == 2:
            raise KeyError("lost state")
        return Step([Message("user", "More.")], 0.5, False, self.t >= 2)


def test_an_env_error_stops_the_rollout_or_fails_only_its_episode(tiny_model, tokenizer, chat):
    import pytest

    from turnrl.envs import EnvStepError

    eng = HFEngine(tiny_model, chat.stop_ids, tokenizer.pad_token_id)
    seeds = [0, 1, 2, 2]
    for context, parallel in (("full", False), ("full", True), ("window", False)):
        cfg = RolloutConfig(SamplingParams(temperature=1.0, max_new_tokens=4, seed=3), context=context)
        with pytest.raises(EnvStepError, match=r"_Breaks: reset\(seed=0\) raised ValueError"):
            collect([_Breaks(parallel) for _ in seeds], seeds, seeds, eng, chat, cfg)  # the default: "raise"
        eps = collect([_Breaks(parallel) for _ in seeds], seeds, seeds, eng, chat, cfg, on_env_error="fail")
        assert [bool(e.info.get("failed")) for e in eps] == [True, True, False, False]
        assert "reset(seed=0) raised ValueError" in eps[0].info["failed"] and not eps[0].turns
        assert "seed 1, turn 2 raised KeyError" in eps[1].info["failed"] and len(eps[1].turns) == 1
        assert all(e.truncated_by == "env_error" for e in eps[:2])
        assert [len(e.turns) for e in eps[2:]] == [2, 2] and all(e.terminated or e.truncated for e in eps[2:])
        alone = collect([_Breaks(parallel)], [2], [2], eng, chat, cfg)  # the others sample as if alone
        assert [t.action_ids for t in alone[0].turns] == [t.action_ids for t in eps[2].turns]
