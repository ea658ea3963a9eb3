"""Log-probabilities of action tokens under the learner, memory-frugal.

Two savings that matter on a CPU: (1) the 49k-wide LM head runs only on action
positions, in chunks; (2) the prompt shared by a group is encoded once and its KV
cache (with gradients) is reused by every episode of the group.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from turnrl.attention import learner_attention
from turnrl.models import cache_kwargs
from turnrl.types import Episode


def _decoder(model):
    return model.get_decoder()


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temps: torch.Tensor, chunk: int, with_entropy: bool):
    """hidden (N, C), targets (N,), temps (N,) -> logprobs (N,), entropy (N,) or None.

    One chunk: plain autograd (the logits are freed after backward). Several chunks:
    each is checkpointed, so only one chunk's (n, V) logits are alive at a time."""
    def one(h, t, tau):
        logits = head(h).float() / tau[:, None]  # (n, V)
        lse = torch.logsumexp(logits, -1)  # (n,)
        return logits.gather(-1, t[:, None]).squeeze(-1) - lse, logits, lse

    def entropy(logits, lse):
        with torch.no_grad():
            return lse - (torch.softmax(logits, -1) * logits).sum(-1)

    if hidden.shape[0] <= chunk:
        lp, logits, lse = one(hidden, targets, temps)
        return lp, (entropy(logits, lse) if with_entropy else None)
    lps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        h, t, tau = hidden[s:s + chunk], targets[s:s + chunk], temps[s:s + chunk]
        if torch.is_grad_enabled():
            lps.append(checkpoint(lambda a, b, c: one(a, b, c)[0], h, t, tau, use_reentrant=False))
            if with_entropy:
                with torch.no_grad():
                    _, logits, lse = one(h.detach(), t, tau)
                    ents.append(entropy(logits, lse))
        else:
            lp, logits, lse = one(h, t, tau)
            lps.append(lp)
            if with_entropy:
                ents.append(entropy(logits, lse))
    return torch.cat(lps), (torch.cat(ents) if with_entropy else None)


def _embed(model, ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings whose gradient is added sparsely into the embedding matrix.

    Autograd's embedding backward builds a dense (vocab, C) gradient for every call
    (49k x 576 for SmolLM2): on a CPU that cost more than the layers it feeds. Here the
    lookup is taken as a leaf and a hook ``index_add_``s its (n, C) gradient into the
    rows that were used: the same numbers, a fraction of the work."""
    emb = model.get_input_embeddings()
    w = emb.weight
    if not (torch.is_grad_enabled() and w.requires_grad):
        return emb(ids)
    with torch.no_grad():
        x = emb(ids)
    x.requires_grad_(True)
    flat = ids.reshape(-1)

    def add_to_embedding(g: torch.Tensor) -> None:
        g = g.reshape(-1, g.shape[-1]).to(w.dtype)
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.index_add_(0, flat, g)

    x.register_hook(add_to_embedding)
    return x


#: the cost of one more forward + backward of the learner, in padded token slots, by device
#: type: on a CPU the work grows with the slots, so a group whose episodes differ in length
#: runs as a few batches of similar lengths (a UFO demo group is about a third padding in one
#: batch). On a GPU a call costs more than the slots it saves (``bench/gpu_check.py``'s
#: profile: the learner is host-bound), so one batch.
BUCKET_OVERHEAD_TOKENS = {"cpu": 32}


def length_buckets(lengths: list[int], overhead: int) -> list[list[int]]:
    """Split rows into batches of similar lengths: contiguous runs of the rows sorted by
    length, chosen to minimise the padded slots (rows x the longest) plus ``overhead`` per
    batch (an exact dynamic programme, O(n^2)). Returns the row indices of each batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sl = [lengths[i] for i in order]
    best, cut = [0] + [float("inf")] * len(sl), [0] * (len(sl) + 1)
    for j in range(1, len(sl) + 1):
        for i in range(j):  # the last batch: sorted rows i..j-1, padded to sl[j - 1]
            c = best[i] + (j - i) * sl[j - 1] + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    out, j = [], len(sl)
    while j:
        out.append(order[cut[j]:j])
        j = cut[j]
    return out[::-1]


def common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def group_logprobs(
    model, episodes: list[Episode], chunk: int = 1024, with_entropy: bool = False, share_prefix: bool = True,
    return_hidden: bool = False,
):
    """Log-probs (and entropies) of every trained action token of ``episodes``, one
    tensor per episode, in token order. Episodes should share a prompt (one GRPO group)
    for the prefix sharing to pay off; any list is correct. With ``return_hidden``, a third
    element: the detached hidden state that predicts each trained token, (n_tokens, C) per
    episode (what critics read).

    An episode whose turns have their own contexts (not append-only) is scored turn by
    turn: each live turn's action in exactly the ids it was sampled after, all turns of
    all episodes in one batch (sharing their common prefix, e.g. the question); the
    result is the same one value per trained token, in live-turn order."""
    if not all(ep.append_only for ep in episodes):
        return _per_turn_logprobs(model, episodes, chunk, with_entropy, share_prefix, return_hidden)
    with learner_attention():  # bf16 on a CPU: matmul attention, not SDPA's slow backward (turnrl/attention.py)
        return _group_logprobs(model, episodes, chunk, with_entropy, share_prefix, return_hidden)


def _group_logprobs(model, episodes, chunk, with_entropy, share_prefix, return_hidden):
    seqs = [ep.token_ids for ep in episodes]
    masks = [ep.loss_mask for ep in episodes]
    temps_all = [ep.temperatures for ep in episodes]
    # Shared prefix: stop one token before the first trained token, so every trained
    # token is predicted from a position inside the per-episode part.
    first_action = min(m.index(True) if True in m else len(m) for m in masks)
    p = min(common_prefix_len(seqs), first_action) - 1 if share_prefix and len(seqs) > 1 else 0
    p = max(p, 0)
    body = _decoder(model)
    head = model.get_output_embeddings()
    dev = head.weight.device  # inputs are built on the CPU, then moved once to the model's device
    cache, prefix = None, []
    if p > 0:
        cache = DynamicCache()
        body(inputs_embeds=_embed(model, torch.tensor([seqs[0][:p]], device=dev)), use_cache=True,
             **cache_kwargs(body, cache))
        prefix = [(layer.keys, layer.values) for layer in cache.layers]  # (1, heads, P, d) each
    hiddens: list[torch.Tensor] = [None] * len(seqs)  # per episode: (its width, C), position j predicts p + j + 1
    overhead = BUCKET_OVERHEAD_TOKENS.get(dev.type)
    for rows in (length_buckets([len(s) - p for s in seqs], overhead) if overhead is not None else [range(len(seqs))]):
        n, width = len(rows), max(len(seqs[b]) for b in rows) - p
        ids = torch.full((n, width), 0, dtype=torch.long)  # (n, W) right-padded
        attn = torch.zeros((n, p + width), dtype=torch.long)  # (n, P+W)
        for j, b in enumerate(rows):
            ids[j, : len(seqs[b]) - p] = torch.tensor(seqs[b][p:])
            attn[j, : len(seqs[b])] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = torch.arange(p, p + width, device=dev)[None].expand(n, -1)  # (n, W)
        if cache is not None:  # every row of the batch attends to the one prefix (gradients flow back into it)
            for layer, (k, v) in zip(cache.layers, prefix):
                layer.keys, layer.values = k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)
        hidden = body(inputs_embeds=_embed(model, ids), attention_mask=attn, position_ids=pos,
                      **cache_kwargs(body, cache), use_cache=cache is not None).last_hidden_state  # (n, W, C)
        for j, b in enumerate(rows):
            hiddens[b] = hidden[j]
    # Position j of the per-episode part predicts token p + j + 1.
    cols, tgts, taus = [], [], []  # cols: per episode, the positions that predict its trained tokens
    for s, m, tt in zip(seqs, masks, temps_all):
        ks = [k for k in range(max(p, 1), len(s)) if m[k]]
        cols.append(torch.tensor([k - 1 - p for k in ks], dtype=torch.long, device=dev))
        tgts += [s[k] for k in ks]
        taus += [tt[k] for k in ks]
    h = torch.cat([hb[c] for hb, c in zip(hiddens, cols)])  # (N, C), in token order
    tgts, taus = torch.tensor(tgts, device=dev), torch.tensor(taus, device=dev)
    lp, ent = _head_logprobs(head, h, tgts, taus, chunk, with_entropy)
    counts = [len(c) for c in cols]
    out = list(lp.split(counts)), (list(ent.split(counts)) if ent is not None else None)
    if return_hidden:
        return (*out, list(h.detach().float().split(counts)))
    return out


def turn_samples(ep: Episode) -> list[Episode]:
    """One single-turn episode per live turn of ``ep``: the turn's full context as its
    observation and its action, exactly as sampled."""
    return [Episode([replace(t, obs_ids=list(ctx), context_ids=None)], ep.group_id)
            for ctx, t in zip(ep.contexts(), ep.turns) if not t.frozen]


def _per_turn_logprobs(model, episodes, chunk, with_entropy, share_prefix, return_hidden):
    samples = [turn_samples(ep) for ep in episodes]
    flat = [s for per in samples for s in per]
    n_out = 3 if return_hidden else 2
    if not flat:
        empty = [torch.zeros(0) for _ in episodes]
        return tuple(empty if j != 1 or with_entropy else None for j in range(n_out))
    res = group_logprobs(model, flat, chunk, with_entropy, share_prefix, return_hidden)

    def regroup(parts):  # per-turn tensors -> one tensor per episode, in live-turn order
        out, k = [], 0
        for per in samples:
            out.append(torch.cat(parts[k:k + len(per)]) if per else torch.zeros(0))
            k += len(per)
        return out

    return tuple(regroup(r) if r is not None else None for r in res)


@torch.no_grad()
def gold_beliefs(model, episodes: list[Episode], chat, batch: int = 16) -> list[list[float]]:
    """IGPO's belief (arXiv 2510.14967): for each live turn k of each episode, the geometric
    mean probability of the gold answer's tokens, teacher-forced right after the context
    turn k was sampled in: ``b_k = exp(mean_j log p(g_j | context_k, g_<j))``. One list per
    episode, one value per live turn. Temperature 1 (the model's own distribution)."""
    jobs: list[tuple[int, list[int], int]] = []  # (episode, ids, gold length)
    for i, ep in enumerate(episodes):
        if not ep.gold_answer:
            raise ValueError(f"igpo: episode {i} (group {ep.group_id}) has no gold answer; the env must "
                             "implement Env.gold_answer()")
        gold = chat.encode(ep.gold_answer)
        for ctx, turn in zip(ep.contexts(), ep.turns):
            if not turn.frozen:
                jobs.append((i, ctx + gold, len(gold)))
    was_training = model.training
    model.eval()
    beliefs: list[list[float]] = [[] for _ in episodes]
    for s in range(0, len(jobs), batch):
        part = jobs[s:s + batch]
        width = max(len(ids) for _, ids, _ in part)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        attn = torch.zeros((len(part), width), dtype=torch.long)
        for b, (_, seq, _) in enumerate(part):
            ids[b, :len(seq)] = torch.tensor(seq)
            attn[b, :len(seq)] = 1
        logits = model(input_ids=ids, attention_mask=attn).logits.float()  # (B, W, V)
        logp = torch.log_softmax(logits, -1)
        for b, (i, seq, g) in enumerate(part):
            pos = torch.arange(len(seq) - g - 1, len(seq) - 1)  # positions predicting the gold tokens
            lp = logp[b, pos, torch.tensor(seq[len(seq) - g:])]
            beliefs[i].append(float(torch.exp(lp.mean())))
    model.train(was_training)
    return beliefs
