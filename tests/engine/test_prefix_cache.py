"""The prefix cache (KV kept by token ids) and the continuous batch ``turnrl serve`` runs."""
import torch

from turnrl.engine import GenRequest, HFEngine, PrefixCache, SamplingParams
from turnrl.engine.continuous import ContinuousBatch
from turnrl.types import Message

GREEDY = SamplingParams(temperature=0, max_new_tokens=6)


def _kv(n: int, start: int = 0):
    """Two layers of fake KV for n tokens: slot i holds value start + i."""
    x = torch.arange(start, start + n, dtype=torch.float32)[None, :, None].expand(2, n, 3).clone()  # (H, n, D)
    return [(x, -x), (x + 100, -x - 100)]


def _reference_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, len(ids):].tolist()


def _serve(batch: ContinuousBatch, items):
    """Run ``items`` (ids, sampling) to completion in ``batch``; results in item order."""
    batch.add([(ids, sp, i) for i, (ids, sp) in enumerate(items)])
    done = {}
    while batch.rows:
        done.update(batch.step())
    return [done[i] for i in range(len(items))]


def _widths(model):
    """Record the (rows, tokens) of every forward of ``model``; returns (list, hook)."""
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    return seen, hook


# -- the store ---------------------------------------------------------------------------
def test_the_longest_common_prefix_is_found_and_cropped():
    c = PrefixCache(100)
    c.put([1, 2, 3, 4, 5], _kv(5))
    c.put([1, 2, 9, 9], _kv(4, start=50))
    n, layers = c.match([1, 2, 3, 4, 7, 8])
    assert n == 4 and layers[0][0].shape == (2, 4, 3) and layers[0][0][0, :, 0].tolist() == [0, 1, 2, 3]
    assert layers[1][1][0, :, 0].tolist() == [-100, -101, -102, -103]
    n, layers = c.match([1, 2, 9, 9, 9])
    assert n == 4 and layers[0][0][0, :, 0].tolist() == [50, 51, 52, 53]
    assert c.match([1, 2, 3], limit=2)[0] == 2  # a request leaves at least its last token to encode
    assert c.match([7, 1, 2]) == (0, None)


def test_an_entry_extending_another_replaces_it_and_a_held_prefix_is_not_stored_twice():
    c = PrefixCache(100)
    c.put([1, 2, 3], _kv(3))
    c.put([1, 2, 3, 4, 5], _kv(5))
    assert len(c) == 1 and c.tokens == 5
    c.put([1, 2], _kv(2))
    assert len(c) == 1 and c.tokens == 5


def test_eviction_keeps_the_store_under_its_token_budget_least_recently_used_first():
    c = PrefixCache(10)
    c.put([1, 1, 1, 1], _kv(4))
    c.put([2, 2, 2, 2], _kv(4))
    c.match([1, 1, 1, 1, 5])  # touch the first: the second is now the oldest
    c.put([3, 3, 3, 3], _kv(4))
    assert c.tokens == 8 and c.match([2, 2, 2, 2, 2])[0] == 0
    assert c.match([1, 1, 1, 1, 5])[0] == 4 and c.match([3, 3, 3, 3, 5])[0] == 4
    c.put(list(range(20)), _kv(20))  # larger than the whole budget: not stored
    assert c.tokens == 8
    c.clear()
    assert c.tokens == 0 and len(c) == 0


# -- the engine with a prefix cache -------------------------------------------------------
def _three_turns(batch, chat, user_texts, max_new=6):
    """A 3-turn conversation served request by request, each reply re-rendered from text
    (as an OpenAI client sends it); returns the requests' ids and the replies' tokens."""
    messages, asked, replies = [], [], []
    for text in user_texts:
        messages.append(Message("user", text))
        ids = chat.prompt_ids(messages)
        res = _serve(batch, [(ids, SamplingParams(temperature=0, max_new_tokens=max_new))])[0]
        asked.append(ids)
        replies.append(res.token_ids)
        messages.append(Message("assistant", chat.decode_action(res.token_ids)))
    return asked, replies


def test_a_cache_hit_encodes_only_the_new_tokens_and_greedy_tokens_are_unchanged(lively_model, tokenizer, chat):
    users = ["What is 2 + 2?", "Are you sure? Think again.", "Thanks, one more time please."]
    plain = ContinuousBatch(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id))
    asked_plain, replies_plain = _three_turns(plain, chat, users)
    cache = PrefixCache(4096)
    cached = ContinuousBatch(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id, prefix_cache=cache))
    seen, hook = _widths(lively_model)
    asked, replies = _three_turns(cached, chat, users)
    hook.remove()
    assert asked == asked_plain and replies == replies_plain  # token-identical to an uncached run
    for ids, r in zip(asked, replies):
        assert r == _reference_greedy(lively_model, ids, 6)
    # forwards: turn 1's prompt, 5 decode steps; then each later turn's prefill encodes
    # only what the stored row (previous prompt + reply less its last token) does not hold
    prefills = [w for w in seen if w[1] > 1]
    assert prefills[0] == (1, len(asked[0]))
    for t in (1, 2):
        held = asked[t - 1] + replies[t - 1][:-1]
        common = next((i for i, (a, b) in enumerate(zip(held, asked[t])) if a != b), len(held))
        # the previous request came from the cache (its generation prompt's last "\n" may
        # merge with the re-encoded reply's first characters)
        assert common >= len(asked[t - 1]) - 1
        assert prefills[t] == (1, len(asked[t]) - common)
    assert sum(w[0] * w[1] for w in seen) == len(asked[0]) + sum(prefills[t][1] for t in (1, 2)) + 3 * 5
    assert cache.hit_tokens > 0 and cache.tokens <= 4096


def test_generate_uses_the_prefix_cache_after_release_and_forgets_it_on_new_weights(lively_model, tokenizer):
    from tests.conftest import make_tiny_model

    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"])
               for t in ("What is 2 + 2?", "Tell me a long story about the sea, please.")]
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id, prefix_cache=PrefixCache(1000))
    first = eng.generate([GenRequest(i, p) for i, p in enumerate(prompts)], GREEDY)
    eng.release()  # the rows go to the prefix cache
    nxt = [p + r.token_ids + [28, 29, 30] for p, r in zip(prompts, first)]
    seen, hook = _widths(lively_model)
    second = eng.generate([GenRequest(i, c) for i, c in enumerate(nxt)], GREEDY)
    hook.remove()
    assert seen[0] == (2, 4)  # each row: its last sampled id + 3 new ones
    for c, r in zip(nxt, second):
        assert r.token_ids == _reference_greedy(lively_model, c, 6)
    eng.release()
    assert eng.prefix_cache.tokens > 0
    eng.load_weights(make_tiny_model(seed=1, init_std=0.2))
    assert eng.prefix_cache.tokens == 0


def test_a_tiny_budget_evicts_and_results_are_unchanged(lively_model, tokenizer, chat):
    questions = [chat.prompt_ids([Message("user", f"Question {i}: what is {i} + {i}?")]) for i in range(4)]
    row = len(questions[0]) + 5  # a stored row: the prompt and the reply less its last token
    budget = row + row // 2  # one row fits, two do not
    cache = PrefixCache(budget)
    batch = ContinuousBatch(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id, prefix_cache=cache))
    plain = ContinuousBatch(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id))
    for i, ids in enumerate(questions):
        assert len(ids) + 5 == row
        got = _serve(batch, [(ids, GREEDY)])[0]
        assert got.token_ids == _serve(plain, [(ids, GREEDY)])[0].token_ids
        assert cache.tokens == row and len(cache) == 1  # the previous question's row was evicted
    assert cache.hit_tokens > 0  # later questions started from the system prompt the evicted rows held


# -- continuous batching ------------------------------------------------------------------
def test_a_request_joining_a_running_batch_finishes_first_with_the_tokens_it_gets_alone(lively_model, tokenizer, chat):
    eng = HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id, prefix_cache=PrefixCache(4096))
    batch = ContinuousBatch(eng)
    long_ids = chat.prompt_ids([Message("user", "Tell me a long story about the sea, please.")])
    short_ids = chat.prompt_ids([Message("user", "Hi")])
    long_sp = SamplingParams(temperature=0, max_new_tokens=30)
    short_sp = SamplingParams(temperature=0.9, top_k=50, max_new_tokens=4, seed=7)
    batch.add([(long_ids, long_sp, "long")])
    finished = []
    for _ in range(10):
        finished += batch.step()
    seen, hook = _widths(lively_model)
    batch.add([(short_ids, short_sp, "short")])  # joins at a step boundary
    while batch.rows:
        finished += [(h, r, len(seen)) for h, r in batch.step()]
    hook.remove()
    order = [f[0] for f in finished]
    assert order == ["short", "long"]
    assert (2, 1) in seen  # the two decoded together
    res = {f[0]: f[1] for f in finished}
    alone = ContinuousBatch(HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id))
    assert res["short"].token_ids == _serve(alone, [(short_ids, short_sp)])[0].token_ids
    assert res["long"].token_ids == _serve(alone, [(long_ids, long_sp)])[0].token_ids == _reference_greedy(lively_model, long_ids, 30)
    assert len(res["short"].token_ids) == 4 and len(res["long"].token_ids) == 30


def test_rows_with_different_sampling_settings_share_a_batch_and_sample_as_alone(lively_model, tokenizer, chat):
    prompts = [chat.prompt_ids([Message("user", f"question number {i}" + " and more" * i)]) for i in range(4)]
    settings = [SamplingParams(temperature=0, max_new_tokens=5),
                SamplingParams(temperature=1.0, max_new_tokens=8, seed=3),
                SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=6, seed=4),
                SamplingParams(temperature=1.2, top_k=20, max_new_tokens=7, seed=5)]
    eng = HFEngine(lively_model, chat.stop_ids, tokenizer.pad_token_id)
    together = _serve(ContinuousBatch(eng), list(zip(prompts, settings)))
    for p, sp, r in zip(prompts, settings, together):
        alone = _serve(ContinuousBatch(eng), [(p, sp)])[0]
        assert r.token_ids == alone.token_ids and len(r.token_ids) == sp.max_new_tokens
        assert torch.allclose(torch.tensor(r.logprobs), torch.tensor(alone.logprobs), atol=1e-4)
