import copy
import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tests.conftest import make_tiny_model
from turnrl.attention import (LEARNER_SCORES, NAME, SHORT_QUERY, learner_attention, short_query_attention,
                              use_short_query_attention)
from turnrl.engine.kv import GrowingCache
from turnrl.models import load_model

GQA = types.SimpleNamespace(num_key_value_groups=2, is_causal=True)  # 4 query heads over 2 KV heads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_query_averages_the_unmasked_values(dtype):
    # a zero query scores every slot 0, so attention is the mean of the values it may see
    q = torch.zeros(1, 4, 1, 2, dtype=dtype)
    k = torch.randn(1, 2, 3, 2).to(dtype)
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]], [[0.0, 0.0], [6.0, 6.0], [9.0, 3.0]]]], dtype=dtype)
    mask = torch.tensor([[[[False, True, True]]]])  # slot 0 is padding
    out, _ = short_query_attention(GQA, q, k, v, mask)  # (1, 1, 4, 2)
    # heads 0 and 1 read KV head 0: mean of (3, 4) and (5, 9); heads 2 and 3 read KV head 1
    expected = torch.tensor([[4.0, 6.5], [4.0, 6.5], [7.5, 4.5], [7.5, 4.5]], dtype=dtype)
    assert torch.equal(out[0, 0], expected)


def test_short_queries_take_the_matmul_path_and_long_ones_sdpa(monkeypatch):
    import transformers.integrations.sdpa_attention as hf_sdpa

    calls = []
    monkeypatch.setattr(hf_sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape[2]) or (a[1], None))
    for dtype in (torch.float32, torch.bfloat16):
        for n, mask in ((1, torch.ones(2, 1, 1, 40, dtype=torch.bool)), (1, None), (SHORT_QUERY, torch.ones(2, 1, SHORT_QUERY, 40, dtype=torch.bool)),
                        (SHORT_QUERY + 1, torch.ones(2, 1, SHORT_QUERY + 1, 40, dtype=torch.bool)), (2, None)):
            q, k, v = (torch.randn(2, 4, n, 8).to(dtype), torch.randn(2, 2, 40, 8).to(dtype), torch.randn(2, 2, 40, 8).to(dtype))
            short_query_attention(GQA, q, k, v, mask)
    assert calls == [SHORT_QUERY + 1, 2] * 2  # a long query, and an unmasked one longer than 1 (causal: SDPA's)


def test_one_key_gets_all_the_weight_when_its_score_dominates():
    q = torch.tensor([10.0, 0.0]).expand(1, 4, 1, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 2, 2, 2)  # slot 0 scores 10/sqrt(2), slot 1 scores 0
    v = torch.tensor([[2.0, -1.0], [7.0, 7.0]]).expand(1, 2, 2, 2)
    out, _ = short_query_attention(GQA, q, k, v, None)
    w0 = 1 / (1 + torch.exp(torch.tensor(-10 / 2 ** 0.5)))  # softmax weight of slot 0
    assert torch.allclose(out[0, 0, 0], w0 * torch.tensor([2.0, -1.0]) + (1 - w0) * torch.tensor([7.0, 7.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_sdpa_for_decode_and_short_suffixes_with_padding(dtype):
    torch.manual_seed(0)
    for q_len in (1, 3, SHORT_QUERY):
        q, k, v = torch.randn(3, 4, q_len, 8), torch.randn(3, 2, 20, 8), torch.randn(3, 2, 20, 8)
        mask = torch.ones(3, 1, q_len, 20, dtype=torch.bool).tril(20 - q_len)
        mask[1, ..., :5] = False  # a left-padded row
        ours, _ = short_query_attention(GQA, q.to(dtype), k.to(dtype), v.to(dtype), mask)
        ref, _ = sdpa_attention_forward(GQA, q, k, v, mask)  # fp32 reference
        assert ours.shape == ref.shape == (3, q_len, 4, 8)
        assert (ours.float() - ref).abs().max() < (1e-5 if dtype == torch.float32 else 3e-2)


def test_long_queries_go_to_sdpa_unchanged():
    torch.manual_seed(0)
    n = SHORT_QUERY + 1
    q, k, v = torch.randn(2, 4, n, 8), torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
    mask = torch.ones(2, 1, n, n, dtype=torch.bool).tril()
    assert torch.equal(short_query_attention(GQA, q, k, v, mask)[0], sdpa_attention_forward(GQA, q, k, v, mask)[0])


def _learner_inputs(b, n, length, dtype, grad=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, 4, n, 8, generator=g), torch.randn(b, 2, length, 8, generator=g),
               torch.randn(b, 2, length, 8, generator=g))
    return [t.to(dtype).requires_grad_(grad) for t in (q, k, v)]


def test_the_bf16_learner_takes_the_matmul_path_while_its_scores_are_small(monkeypatch):
    import transformers.integrations.sdpa_attention as hf_sdpa

    calls = []
    monkeypatch.setattr(hf_sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].dtype) or (a[1], None))
    n = SHORT_QUERY + 8  # longer than a short query: only the learner rule can route it to the matmul path
    mask = torch.ones(2, 1, n, 50, dtype=torch.bool)
    with learner_attention():
        short_query_attention(GQA, *_learner_inputs(2, n, 50, torch.bfloat16), mask)  # 2*4*40*50 = 16,000 scores
        short_query_attention(GQA, *_learner_inputs(2, n, 50, torch.bfloat16), None)  # causal, no mask given
        with torch.no_grad():  # old and reference log-probs round as the trained forward does
            short_query_attention(GQA, *_learner_inputs(2, n, 50, torch.bfloat16, grad=False), mask)
        assert calls == []
        short_query_attention(GQA, *_learner_inputs(2, n, 50, torch.float32), mask)  # fp32: SDPA is as fast
        # 2 * 4 * 40 * length > LEARNER_SCORES: the scores would be too large to hold per layer
        length = LEARNER_SCORES // (2 * 4 * n) + 1
        short_query_attention(GQA, *_learner_inputs(2, n, length, torch.bfloat16),
                              torch.ones(2, 1, n, length, dtype=torch.bool))
        non_causal = types.SimpleNamespace(num_key_value_groups=2, is_causal=False)
        short_query_attention(non_causal, *_learner_inputs(2, n, n, torch.bfloat16), None)  # no mask, not causal
    short_query_attention(GQA, *_learner_inputs(2, n, 50, torch.bfloat16), mask)  # not the learner (the engine's prefill)
    assert calls == [torch.float32] + [torch.bfloat16] * 3


@pytest.mark.parametrize("masked", [True, False])
def test_the_bf16_learner_path_matches_sdpa_with_its_gradients(masked):
    n, length = SHORT_QUERY + 8, (SHORT_QUERY + 8 + 15 if masked else SHORT_QUERY + 8)
    mask = None
    if masked:  # 15 cached slots before the queries, row 1 left-padded by 6
        mask = torch.ones(2, 1, n, length, dtype=torch.bool).tril(length - n)
        mask[1, ..., :6] = False
    ours_in, ref_in = _learner_inputs(2, n, length, torch.bfloat16), _learner_inputs(2, n, length, torch.float32)
    with learner_attention():
        ours, _ = short_query_attention(GQA, *ours_in, mask)
    ref, _ = sdpa_attention_forward(GQA, *ref_in, mask)  # fp32 reference; None: causal
    assert ours.shape == ref.shape == (2, n, 4, 8)
    assert (ours.float() - ref).abs().max() < 3e-2
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ours.float() * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in zip(ours_in, ref_in):  # d/dq, d/dk, d/dv: bf16 rounding apart
        assert (a.grad.float() - b.grad).abs().max() < 0.05 * b.grad.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_fully_masked_row_reads_nothing(dtype):
    out, _ = short_query_attention(GQA, torch.randn(1, 4, 1, 8).to(dtype), torch.randn(1, 2, 5, 8).to(dtype),
                                   torch.randn(1, 2, 5, 8).to(dtype), torch.zeros(1, 1, 1, 5, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(1, 1, 4, 8, dtype=dtype))


def test_turnrl_models_use_it_and_decode_the_same_logits():
    model = load_model("smollm2-135m").eval()
    assert model.config._attn_implementation == NAME
    stock = copy.deepcopy(model)
    stock.set_attn_implementation("sdpa")
    ids = torch.randint(100, 1000, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = []
    with torch.no_grad():
        for m in (model, stock):
            cache = GrowingCache()
            m(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            out = m(input_ids=ids[:, :2], attention_mask=torch.cat([mask, torch.ones(2, 2, dtype=torch.long)], 1),
                    position_ids=pos[:, -1:] + torch.tensor([[1, 2]]), cache=cache, use_cache=True)
            logits.append(out.logits)
    assert (logits[0] - logits[1]).abs().max() < 1e-3
    assert torch.equal(logits[0].argmax(-1), logits[1].argmax(-1))


def test_a_model_on_eager_attention_is_left_alone():
    model = make_tiny_model()
    model.set_attn_implementation("eager")
    use_short_query_attention(model)
    assert model.config._attn_implementation == "eager"


def test_decoding_from_a_growing_cache_matches_a_dynamic_cache():
    from transformers import DynamicCache

    model = load_model("smollm2-135m").eval()
    ids = torch.randint(100, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = {}
    with torch.no_grad():
        for cls in (DynamicCache, GrowingCache):
            cache, m, p, out = cls(), mask, pos, []
            model(input_ids=ids, attention_mask=m, position_ids=p, cache=cache, use_cache=True)
            for i in range(4):
                m, p = torch.cat([m, torch.ones(2, 1, dtype=torch.long)], 1), p[:, -1:] + 1
                out.append(model(input_ids=ids[:, i:i + 1], attention_mask=m, position_ids=p, cache=cache,
                                 use_cache=True).logits)
            logits[cls] = torch.cat(out, 1)
    assert (logits[DynamicCache] - logits[GrowingCache]).abs().max() < 1e-4
