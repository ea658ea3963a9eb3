import pytest
import torch

from tests.conftest import make_tiny_model
from turnrl.algos.logprobs import group_logprobs, length_buckets
from turnrl.types import Episode, Turn


def _episodes():
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(10, 40000, (n,), generator=g).tolist()
    prompt = rand(12)
    eps = []
    for n in (3, 5, 4):
        eps.append(Episode([Turn(prompt, rand(n), [0.0] * n, temperature=0.7), Turn(rand(4), rand(n + 1), [0.0] * (n + 1))], 0))
    return eps


def _plain(model, eps):
    """Reference: one full forward per episode, log_softmax over the whole vocabulary."""
    total = 0.0
    for ep in eps:
        ids = torch.tensor([ep.token_ids])
        logits = model(ids).logits[0, :-1].float() / torch.tensor(ep.temperatures[1:])[:, None]
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        total = total + (lp * torch.tensor(ep.loss_mask[1:])).sum()
    return total


def test_shared_prefix_chunked_head_and_sparse_embedding_grads_equal_a_plain_forward():
    eps = _episodes()
    ref_model, model = make_tiny_model(1), make_tiny_model(1)
    _plain(ref_model, eps).backward()
    lps, _ = group_logprobs(model, eps, chunk=4)  # several head chunks -> checkpointed path
    sum(l.sum() for l in lps).backward()
    ref = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[name].grad, atol=1e-5, rtol=1e-4), name


def test_logprobs_per_episode_match_a_plain_forward():
    eps = _episodes()
    model = make_tiny_model(2)
    with torch.no_grad():
        for share in (True, False):
            lps, ents = group_logprobs(model, eps, with_entropy=True, share_prefix=share)
            for lp, ent, ep in zip(lps, ents, eps):
                ids = torch.tensor([ep.token_ids])
                logits = model(ids).logits[0, :-1] / torch.tensor(ep.temperatures[1:])[:, None]
                full = torch.log_softmax(logits, -1)
                m = torch.tensor(ep.loss_mask[1:])
                assert torch.allclose(lp, full.gather(-1, ids[0, 1:, None]).squeeze(-1)[m], atol=1e-5)
                assert torch.allclose(ent, -(full.exp() * full).sum(-1)[m], atol=1e-4)


def test_length_buckets_minimise_padded_slots_plus_a_cost_per_batch():
    # [100, 1, 100]: one batch pads to 3 x 100 + 32 = 332, two cost 1 + 32 + 2 x 100 + 32 = 265
    assert length_buckets([100, 1, 100], 32) == [[1], [0, 2]]
    # [90, 100]: one batch 232, two 254
    assert length_buckets([90, 100], 32) == [[0, 1]]
    # a UFO demo group: 3 x 12 + 71 + 2 x 116 + 2 x 133 + 4 x 32 = 733 slots, against 1064 + 32 in one batch
    assert length_buckets([7, 12, 12, 71, 104, 116, 130, 133], 32) == [[0, 1, 2], [3], [4, 5], [6, 7]]
    assert length_buckets([], 32) == []


def test_episodes_of_very_different_lengths_run_in_batches_and_equal_a_plain_forward():
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(10, 40000, (n,), generator=g).tolist()
    prompt = rand(12)
    eps = [Episode([Turn(prompt, rand(n), [0.0] * n, temperature=0.7)] +
                   [Turn(rand(5), rand(n), [0.0] * n) for _ in range(turns - 1)], 0)
           for n, turns in ((2, 1), (3, 1), (30, 4), (28, 4))]
    ref_model, model = make_tiny_model(1), make_tiny_model(1)
    _plain(ref_model, eps).backward()
    calls = []
    hook = model.get_decoder().register_forward_pre_hook(lambda m, a, kw: calls.append(kw["inputs_embeds"].shape[:2]),
                                                         with_kwargs=True)
    lps, _ = group_logprobs(model, eps)
    hook.remove()
    # the shared prompt once (12 tokens, less the one before the first action), then the two
    # short episodes together and the two long ones together
    assert calls == [(1, 11), (2, 4), (2, 1 + 3 * 5 + 4 * 30)]
    sum(l.sum() for l in lps).backward()
    ref = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[name].grad, atol=1e-5, rtol=1e-4), name


def test_turns_with_their_own_contexts_are_scored_each_in_its_context():
    """A rebuilt (not append-only) episode: each live turn scored after its own
    context_ids, one value per trained token in live-turn order; frozen turns skipped;
    hidden states and entropies aligned the same way."""
    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(10, 40000, (n,), generator=g).tolist()
    q = rand(6)
    c0, c1, c2 = q + rand(3), q + rand(5), q + rand(2)  # each turn: the question + a different rest
    a0, a1, a2 = rand(2), rand(3), rand(4)
    ep = Episode([Turn(c0, a0, [0.0] * 2, frozen=True, context_ids=c0), Turn(c1, a1, [0.0] * 3, context_ids=c1),
                  Turn(c2, a2, [0.0] * 4, temperature=0.5, context_ids=c2)], 0)
    model = make_tiny_model(2)
    with torch.no_grad():
        lps, ents, hid = group_logprobs(model, [ep], with_entropy=True, return_hidden=True)
        want = []
        for ctx, act, tau in ((c1, a1, 1.0), (c2, a2, 0.5)):
            ids = torch.tensor([ctx + act])
            logits = model(ids).logits[0, len(ctx) - 1:-1].float() / tau
            want.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(act)[:, None]).squeeze(-1))
    assert lps[0].shape == (7,) and ents[0].shape == (7,) and hid[0].shape == (7, 32)
    assert torch.allclose(lps[0], torch.cat(want), atol=1e-5)
    with pytest.raises(ValueError, match="not append-only"):
        ep.token_ids


def test_gold_beliefs_teacher_force_after_each_turns_own_context(chat):
    from turnrl.algos.logprobs import gold_beliefs

    q = chat.encode("Question?")
    c0, c1 = q + chat.encode(" state one"), q + chat.encode(" a different state")
    a0, a1 = chat.encode(" 4"), chat.encode(" 5")
    ep = Episode([Turn(c0, a0, [0.0], context_ids=c0), Turn(c1, a1, [0.0], context_ids=c1)], 0, gold_answer="5")
    model = make_tiny_model(4)
    gold = chat.encode("5")
    want = []
    with torch.no_grad():
        for ctx in (c0, c1):  # b_k = exp(mean log p(gold | context_k)), context_k as sampled
            logp = torch.log_softmax(model(torch.tensor([ctx + gold])).logits[0].float(), -1)
            want.append(float(torch.exp(logp[len(ctx) - 1:-1].gather(-1, torch.tensor(gold)[:, None]).mean())))
    assert gold_beliefs(model, [ep], chat)[0] == pytest.approx(want, rel=1e-4)


def test_a_bf16_learner_on_a_cpu_uses_matmul_attention_in_every_forward_and_rounds_them_alike(monkeypatch):
    import transformers.integrations.sdpa_attention as hf_sdpa
    from turnrl.attention import use_short_query_attention

    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(10, 40000, (n,), generator=g).tolist()
    prompt = rand(12)
    # past the shared prompt each episode has 1 + n + 4 + n tokens: 45 to 49 queries, more than SHORT_QUERY
    eps = [Episode([Turn(prompt, rand(n), [0.0] * n), Turn(rand(4), rand(n), [0.0] * n)], 0) for n in (20, 22, 21)]
    fp32 = make_tiny_model(3)
    use_short_query_attention(fp32)
    bf16 = make_tiny_model(3).to(torch.bfloat16)
    use_short_query_attention(bf16)
    sdpa, calls = hf_sdpa.sdpa_attention_forward, []
    monkeypatch.setattr(hf_sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].dtype) or sdpa(*a, **k))
    trained, _ = group_logprobs(bf16, eps)
    with torch.no_grad():  # the old (or reference) log-probs of the same policy
        old, _ = group_logprobs(bf16, eps)
    assert calls == []  # prefix (causal, no mask) and padded batch: both on the matmul path
    for a, b in zip(trained, old):
        assert torch.equal(a.detach(), b)  # ratio exactly 1, KL exactly 0 at step 0
    ref, _ = group_logprobs(fp32, eps)
    assert calls == [torch.float32] * 4  # fp32 keeps SDPA: 2 layers x (prefix, batch)
    for a, b in zip(trained, ref):
        assert (a.detach() - b.detach()).abs().max() < 0.05  # bf16 rounding of the same model
