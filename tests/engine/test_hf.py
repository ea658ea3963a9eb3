import pytest
import torch

from turnrl.engine import GenRequest, HFEngine, SamplingParams


def _prompts(tokenizer, texts):
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"]) for t in texts]


def _reference_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, len(ids):].tolist()


def _logprobs_of_a_full_forward(model, ctx, ids, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([ctx + ids])).logits[0].float() / temperature
    return torch.log_softmax(logits, -1)[len(ctx) - 1:-1].gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def test_cached_multi_turn_greedy_equals_plain_generate(lively_model, tokenizer):
    """Rows of different lengths share one cache across turns; each row still gets
    exactly what an unpadded, uncached run produces."""
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    prompts = _prompts(tokenizer, ["What is 2 + 2?", "Hi", "Tell me a long story about the sea, please."])
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    first = eng.generate([GenRequest(i, p) for i, p in enumerate(prompts)], sp)
    fb = tokenizer.encode("\n<|im_start|>user\nAgain.<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    second_ctx = [p + r.token_ids + fb[: 3 + i] for i, (p, r) in enumerate(zip(prompts, first))]
    second = eng.generate([GenRequest(i, c) for i, c in enumerate(second_ctx)], sp)
    for c, r in [*zip(prompts, first), *zip(second_ctx, second)]:
        assert r.token_ids == _reference_greedy(lively_model, c, 6)
        # the tiny model's greedy tokens hardly depend on the context; their log-probs do
        assert torch.allclose(torch.tensor(r.logprobs), _logprobs_of_a_full_forward(lively_model, c, r.token_ids, 1.0), atol=1e-4)
    # second turn reused the cache: every row's cached ids extend its first-turn prompt
    cached = dict(zip(eng._keys, eng._cached))  # the cache's row order need not be the requests'
    assert all(cached[i][: len(p)] == p for i, p in enumerate(prompts))


def test_logprobs_match_a_full_forward(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    prompts = _prompts(tokenizer, ["a", "a longer prompt here"])
    res = eng.generate([GenRequest(i, p) for i, p in enumerate(prompts)], SamplingParams(temperature=0.8, max_new_tokens=5, seed=1))
    for p, r in zip(prompts, res):
        with torch.no_grad():
            logits = lively_model(torch.tensor([p + r.token_ids])).logits[0].float() / 0.8
        lp = torch.log_softmax(logits, -1)[len(p) - 1:-1].gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(lp, torch.tensor(r.logprobs), atol=1e-4)


def test_sampling_is_seeded_and_length_cut_is_flagged(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    req = [GenRequest(0, _prompts(tokenizer, ["x"])[0])]
    a = eng.generate(req, SamplingParams(temperature=1.0, max_new_tokens=4, seed=3))
    eng.release()
    b = eng.generate(req, SamplingParams(temperature=1.0, max_new_tokens=4, seed=3))
    assert a[0].token_ids == b[0].token_ids
    assert len(a[0].token_ids) == 4 and not a[0].stopped  # a random model never says <|im_end|> this soon


def test_top_k_one_is_greedy(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    req = [GenRequest(0, _prompts(tokenizer, ["y"])[0])]
    g = eng.generate(req, SamplingParams(temperature=0, max_new_tokens=5))
    eng.release()
    k1 = eng.generate(req, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=5, seed=9))
    assert g[0].token_ids == k1[0].token_ids


def test_repeated_prompts_are_encoded_once_and_sampled_independently(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    p, q = _prompts(tokenizer, ["same prompt", "another one"])
    reqs = [GenRequest(0, p), GenRequest(1, q), GenRequest(2, p), GenRequest(3, p)]
    greedy = eng.generate(reqs, SamplingParams(temperature=0, max_new_tokens=5))
    assert greedy[0].token_ids == greedy[2].token_ids == greedy[3].token_ids == _reference_greedy(lively_model, p, 5)
    assert greedy[1].token_ids == _reference_greedy(lively_model, q, 5)
    eng.release()
    sampled = eng.generate(reqs, SamplingParams(temperature=1.0, max_new_tokens=8, seed=0))
    assert len({tuple(r.token_ids) for r in (sampled[0], sampled[2], sampled[3])}) > 1


def test_each_request_stops_at_its_own_token_limit_and_the_cache_still_holds(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    prompts = _prompts(tokenizer, ["What is 2 + 2?", "Hi", "Tell me a long story about the sea, please."])
    limits = [3, 9, 1]
    sp = SamplingParams(temperature=0, max_new_tokens=6)  # a request's own limit replaces this one
    first = eng.generate([GenRequest(i, p, max_new_tokens=n) for i, (p, n) in enumerate(zip(prompts, limits))], sp)
    for p, n, r in zip(prompts, limits, first):
        assert r.token_ids == _reference_greedy(lively_model, p, n) and len(r.token_ids) == n and not r.stopped
    # the next turn extends each row's cache; rows without a limit of their own take the sampling's
    second_ctx = [p + r.token_ids + [28, 29] for p, r in zip(prompts, first)]
    widths = []
    hook = lively_model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    second = eng.generate([GenRequest(0, second_ctx[0], max_new_tokens=2), GenRequest(1, second_ctx[1]),
                           GenRequest(2, second_ctx[2], max_new_tokens=4)], sp)
    hook.remove()
    for c, n, r in zip(second_ctx, [2, 6, 4], second):
        assert r.token_ids == _reference_greedy(lively_model, c, n)
        assert torch.allclose(torch.tensor(r.logprobs), _logprobs_of_a_full_forward(lively_model, c, r.token_ids, 1.0), atol=1e-4)
    assert widths[0] == 3  # only the new suffix was encoded: the last sampled id + 2 glue ids


def test_a_seeded_request_samples_the_same_tokens_alone_and_in_a_batch_of_eight(lively_model, tokenizer):
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    prompts = _prompts(tokenizer, [f"question number {i}" + " and more" * i for i in range(8)])
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
    alone = eng.generate([GenRequest("x", prompts[5], seed=1234)], sp)[0]
    eng.release()
    batch = eng.generate([GenRequest(i, p, seed=1234 if i == 5 else i) for i, p in enumerate(prompts)], sp)
    assert batch[5].token_ids == alone.token_ids and len(alone.token_ids) == 8
    assert torch.allclose(torch.tensor(batch[5].logprobs), torch.tensor(alone.logprobs), atol=1e-4)


def test_the_prefix_distinct_prompts_share_is_encoded_once(lively_model, tokenizer):
    prompts = _prompts(tokenizer, ["What is 2 + 2?", "Hi", "Tell me a long story about the sea, please."])
    shared = next(i for i in range(len(prompts[1])) if len({p[i] for p in prompts}) > 1)  # system prompt + header
    assert shared >= HFEngine.MIN_SHARED_PREFIX
    seen = []
    hook = lively_model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    res = eng.generate([GenRequest(i, p) for i, p in enumerate(prompts)], SamplingParams(temperature=0, max_new_tokens=4))
    hook.remove()
    assert seen[0] == (1, shared)  # the shared prefix: one row
    assert seen[1] == (3, max(len(p) - shared for p in prompts))  # then only each prompt's own suffix
    for p, r in zip(prompts, res):  # and the tokens are those of an unshared, uncached run
        assert r.token_ids == _reference_greedy(lively_model, p, 4)


def _draw(logits_row: list[float], sp, n: int = 4000):
    """n draws from one distribution, each row with its own seeded generator."""
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    ids, logps = HFEngine._sample(torch.tensor([logits_row]).expand(n, -1).contiguous(), sp, gens)
    return torch.bincount(ids, minlength=len(logits_row)).float() / n, ids, logps


def test_sampled_frequencies_follow_the_tempered_softmax():
    import math

    # logits log(p) at T = 0.5 sample from p^2 / sum(p^2): p = (.1, .2, .3, .4) -> (1, 4, 9, 16) / 30
    freq, ids, logps = _draw([math.log(p) for p in (0.1, 0.2, 0.3, 0.4)], SamplingParams(temperature=0.5))
    assert torch.allclose(freq, torch.tensor([1, 4, 9, 16]) / 30, atol=0.025)  # 4000 draws: sd <= 0.008
    expected_logp = torch.log(torch.tensor([1, 4, 9, 16]) / 30)
    assert torch.allclose(logps, expected_logp[ids], atol=1e-5)


def test_top_p_keeps_the_nucleus_and_renormalises():
    import math

    # p = (.5, .3, .15, .05): mass before each token (0, .5, .8, .95); top_p 0.7 keeps tokens 0 and 1
    freq, ids, logps = _draw([math.log(p) for p in (0.5, 0.3, 0.15, 0.05)], SamplingParams(temperature=1.0, top_p=0.7))
    assert freq[2] == freq[3] == 0
    assert abs(float(freq[0]) - 0.5 / 0.8) < 0.025
    assert torch.allclose(logps, torch.log(torch.tensor([0.5, 0.3]))[ids], atol=1e-5)  # log-probs of the full softmax


def test_top_p_wider_than_its_candidates_falls_back_to_the_whole_vocabulary(monkeypatch):
    monkeypatch.setattr(HFEngine, "TOP_P_CANDIDATES", 2)
    # 8 equal tokens: mass before the last is 7/8 <= 0.9, so all 8 stay, though only 2 are candidates
    freq, _, _ = _draw([0.0] * 8, SamplingParams(temperature=1.0, top_p=0.9))
    assert (freq > 0.09).all() and (freq < 0.16).all()


def test_top_k_and_zero_probability_tokens():
    freq, _, _ = _draw([2.0, float("-inf"), 1.0, 0.0, -5.0], SamplingParams(temperature=1.0, top_k=2))
    assert freq[1] == freq[3] == freq[4] == 0  # -inf and outside the top 2
    import math

    assert abs(float(freq[0]) - math.e / (math.e + 1)) < 0.025
    freq, _, _ = _draw([0.0, float("-inf"), 0.0], SamplingParams(temperature=0.7))
    assert freq[1] == 0


def test_a_draw_survives_the_rounding_noise_of_another_batch():
    # a nearly flat distribution over the whole vocabulary, as a random model gives, and the
    # same logits with 1e-6 relative noise (another batch composition rounds differently):
    # every row must draw the same token (an fp32 running sum of the CDF flipped 2 of 2000)
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(1, 49152, generator=g) * 0.01).expand(2000, -1).contiguous()
    b = a * (1 + 1e-6 * torch.randn(a.shape, generator=g))
    ids = [HFEngine._sample(x, SamplingParams(temperature=1.0), [torch.Generator().manual_seed(i) for i in range(2000)])[0]
           for x in (a, b)]
    assert torch.equal(ids[0], ids[1])


def test_inverse_cdf_in_two_levels_picks_what_one_running_sum_picks():
    from turnrl.engine.hf import CDF_BLOCK, _inverse_cdf

    # 1100 entries (two levels; not a multiple of the block): mass 1/8 at 3 (block 0), 1/16 at
    # 16 and 17 (block 1), 1/4 at 500, 1/2 at 1099 (the last entry, in the padded block)
    p = torch.zeros(1, 1100)
    p[0, 3], p[0, 16], p[0, 17], p[0, 500], p[0, 1099] = 0.125, 0.0625, 0.0625, 0.25, 0.5
    assert p.shape[1] > 64 * CDF_BLOCK and p.shape[1] % CDF_BLOCK and 16 // CDF_BLOCK == 17 // CDF_BLOCK == 1
    u = torch.tensor([1e-9, 0.125, 0.15, 0.1875, 0.19, 0.25, 0.2500001, 0.5000001, 1.0])
    assert _inverse_cdf(p.expand(9, -1), u).tolist() == [3, 3, 16, 16, 17, 17, 500, 1099, 1099]
    # a peaked and a nearly flat row over SmolLM2's vocabulary, 2000 draws each: the same
    # picks as a float64 running sum over the whole row
    g = torch.Generator().manual_seed(0)
    for scale in (4.0, 0.01):
        probs = torch.softmax(torch.randn(1, 49152, generator=g) * scale, -1).expand(2000, -1)
        u = 1 - torch.rand(2000, generator=g, dtype=torch.float64).float()
        cdf = probs.double().cumsum(-1)
        ref = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None]).squeeze(-1)
        assert torch.equal(_inverse_cdf(probs, u), ref)


def test_rows_parked_mid_call_and_asked_for_out_of_order_still_see_their_own_context(lively_model, tokenizer):
    """Eight rows stop at staggered limits (parked as they finish, three times in the first
    call, behind the running ones), the next turns continue subsets in shuffled orders: every sampled
    token's log-prob is what a plain forward over that row's own conversation gives (the
    tiny model's greedy tokens hardly depend on the context; its log-probs do), and the
    cache moved rows inside its one buffer."""
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    prompts = _prompts(tokenizer, [f"question {i}" + " and more" * (i % 3) for i in range(8)])
    limits = [2, 6, 2, 6, 4, 4, 6, 3]  # done after steps 2 (two rows), 3 (one), 4 (two) and 6 (the rest)
    sp = SamplingParams(temperature=1.0, max_new_tokens=6, seed=5)
    parks = []
    park = eng._park
    eng._park = lambda n: (parks.append(n), park(n))
    first = eng.generate([GenRequest(i, p, max_new_tokens=n) for i, (p, n) in enumerate(zip(prompts, limits))], sp)
    assert parks == [2, 1, 2]  # the last three end the call: nothing left to park them for
    ctx = {}
    for i, (p, n, r) in enumerate(zip(prompts, limits, first)):
        assert len(r.token_ids) == n
        assert torch.allclose(torch.tensor(r.logprobs), _logprobs_of_a_full_forward(lively_model, p, r.token_ids, 1.0), atol=1e-4)
        ctx[i] = p + r.token_ids + [28, 29 + i]
    buffer = eng._cache.layers[0]._k.data_ptr()
    for order in ([5, 0, 7, 2, 3], [3, 7, 5, 0]):  # a subset in a new order, then a smaller one
        res = eng.generate([GenRequest(i, ctx[i], max_new_tokens=3 + i % 3) for i in order], sp)
        for i, r in zip(order, res):
            assert len(r.token_ids) == 3 + i % 3
            assert torch.allclose(torch.tensor(r.logprobs), _logprobs_of_a_full_forward(lively_model, ctx[i], r.token_ids, 1.0),
                                  atol=1e-4)
            ctx[i] = ctx[i] + r.token_ids + [30]
        assert sorted(eng._keys) == sorted(order)
    assert eng._cache.layers[0]._k.data_ptr() == buffer  # rows moved inside the one buffer


def test_an_error_mid_call_forgets_the_cache_and_the_next_call_starts_afresh(lively_model, tokenizer):
    """A forward that fails while rows are parked (an OOM, an interrupt) leaves no half-kept
    state: the engine forgets its cache, and the next call, even one asking for a
    conversation twice, prefills afresh and sees each row's own context."""
    eng = HFEngine(lively_model, [2], tokenizer.pad_token_id)
    sp = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
    ctx = {k: [5 + k, 6, 7 + k, 8] for k in range(4)}
    eng.generate([GenRequest(k, ctx[k]) for k in ctx], sp)
    forward, calls = eng._forward, []

    def failing(chunks):
        calls.append(len(chunks))
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return forward(chunks)

    eng._forward = failing
    with pytest.raises(RuntimeError, match="out of memory"):
        eng.generate([GenRequest(k, ctx[k] + [30], max_new_tokens=[1, 8, 2, 8][k]) for k in ctx], sp)
    assert calls[:3] == [4, 3, 2]  # rows 0 and 2 were parked when it failed
    assert eng._cache is None and eng._keys == [] and eng._parked == []
    eng._forward = forward
    res = eng.generate([GenRequest(1, ctx[1] + [40]), GenRequest(1, ctx[1] + [40]), GenRequest(3, ctx[3])], sp)
    for c, r in zip([ctx[1] + [40], ctx[1] + [40], ctx[3]], res):
        assert torch.allclose(torch.tensor(r.logprobs), _logprobs_of_a_full_forward(lively_model, c, r.token_ids, 1.0),
                              atol=1e-4)
