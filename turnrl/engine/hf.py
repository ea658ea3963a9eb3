"""Hugging Face engine: batched sampling with one KV cache kept across turns.

All conversations of a rollout live in one batched KV cache (``GrowingCache``: it grows in place). When a request
extends the ids already cached for its key, only the new suffix is encoded: earlier
turns are never re-encoded. Rows have different lengths, so the suffixes are
left-padded; padded slots are masked out (``attention_mask`` 0) and every real token
gets its true position id, so the model sees exactly the context of an unpadded run.
Identical prompts are encoded once, and the prefix that distinct prompts share (a system
prompt, the template's header) once for all of them. A row that finishes its turn is parked
at once (set aside behind the running rows in the cache's buffer, ``turnrl/engine/kv.py``), so
no compute goes to it, and runs again at the end of the call.

Tensors live on the model's device (CUDA or CPU): inputs are built on the CPU and moved
once per forward, each request's sampler is a generator on that device, and the sampled
ids come back to the CPU once per step.

With a ``PrefixCache``, rows dropped by ``release`` keep their KV there, and a fresh
prefill starts each prompt from the longest stored prefix it shares. ``turnrl serve``
decodes step by step (``turnrl/engine/continuous.py``) with the pieces below:
``_prefill_fresh``, ``_sample_step``, ``_forward``, ``_split`` / ``_merge_rows``.
"""
from __future__ import annotations

from typing import Hashable

import torch
from turnrl.engine.kv import GrowingCache

from turnrl.engine.base import GenRequest, GenResult, SamplingParams, mix_seed
from turnrl.engine.prefix_cache import PrefixCache
from turnrl.models import cache_kwargs


class HFEngine:
    #: a shared prompt prefix shorter than this is not worth a separate forward
    MIN_SHARED_PREFIX = 8

    def __init__(self, model, stop_ids: list[int], pad_id: int, prefix_cache: PrefixCache | None = None):
        self.model = model
        self.stop_ids = frozenset(stop_ids)
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache  # None: rows are forgotten on release
        self._reset()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- state ---------------------------------------------------------------------------
    def release(self) -> None:
        if self.prefix_cache is not None and self._cache is not None:
            self._stash(range(len(self._keys)))
        self._reset()

    def _reset(self) -> None:
        self._keys: list[Hashable] = []
        self._cached: list[list[int]] = []  # ids held in the cache, per row
        self._cache: GrowingCache | None = None
        self._mask: torch.Tensor | None = None  # (B, L) 1 where the cache slot is real
        self._parked: list = []  # (keys, cached ids, mask) of the rows parked this call, in parking order

    def load_weights(self, model) -> None:
        self.model = model
        if self.prefix_cache is not None:
            self.prefix_cache.clear()  # KV of the old weights
        self._reset()

    def _select(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the cache, in that order (the cache moves only the rows whose
        place changes)."""
        if self._cache is not None:  # the cache first: if it refuses, the lists still match it
            self._cache.select(rows)
            self._mask = self._mask[torch.tensor(rows, dtype=torch.long, device=self.device)]
        self._keys = [self._keys[r] for r in rows]
        self._cached = [self._cached[r] for r in rows]

    def _reusable_rows(self, requests: list[GenRequest]) -> list[int] | None:
        pos = {k: i for i, k in enumerate(self._keys)}
        rows = []
        for r in requests:
            i = pos.get(r.key)
            if i is None:
                return None
            c = self._cached[i]
            if len(r.token_ids) <= len(c) or r.token_ids[: len(c)] != c:
                return None
            rows.append(i)
        return rows

    # -- forward -------------------------------------------------------------------------
    def _forward(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append ``chunks`` (one per row, each non-empty) to the cache; return last logits (B, V)."""
        width = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), width), self.pad_id, dtype=torch.long)  # (B, W)
        new_mask = torch.zeros((len(chunks), width), dtype=torch.long)  # (B, W)
        pos = torch.zeros((len(chunks), width), dtype=torch.long)  # (B, W)
        for b, c in enumerate(chunks):
            n0 = len(self._cached[b])
            ids[b, width - len(c):] = torch.tensor(c)
            new_mask[b, width - len(c):] = 1
            pos[b, width - len(c):] = torch.arange(n0, n0 + len(c))
            self._cached[b] = self._cached[b] + c
        dev = self.device
        ids, new_mask, pos = ids.to(dev), new_mask.to(dev), pos.to(dev)
        mask = new_mask if self._mask is None else torch.cat([self._mask, new_mask], dim=1)  # (B, L+W)
        if self._cache is None:
            self._cache = GrowingCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kwargs(self.model, self._cache),
                         use_cache=True, logits_to_keep=1)
        self._mask = mask
        return out.logits[:, -1, :].float()  # (B, V)

    # -- sampling ------------------------------------------------------------------------
    #: top-p first looks for its nucleus among this many most likely tokens (all of the vocabulary
    #: when a row's nucleus is wider)
    TOP_P_CANDIDATES = 1024

    @classmethod
    def _sample(cls, logits: torch.Tensor, sp: SamplingParams, gens: list[torch.Generator]):
        """Return sampled ids (B,) and their log-probs under softmax(logits / T); row b
        draws from its own generator ``gens[b]``: one uniform number per row and step.

        Inverse-CDF sampling: the first token whose cumulative probability reaches u·total.
        ``torch.multinomial`` draws one exponential number per vocabulary entry instead; at
        batch 32 and 49k entries that was 43 ms per step on 2 cores, half of a bf16 decode step."""
        if sp.temperature <= 0:
            top, ids = logits.max(-1)  # (B,): the first of equal maxima, as argmax
            # log-prob of the max: -log(sum(exp(logits - max))), in one (B, V) buffer
            return ids, -(logits - top[:, None]).exp_().sum(-1).log()
        probs = full = _softmax_(logits / sp.temperature)  # (B, V); log-probs only for the drawn ids
        cand = None  # (B, K) vocabulary ids of the candidates when filtered, most likely first
        if sp.top_k > 0 or sp.top_p < 1.0:
            k = min(sp.top_k or cls.TOP_P_CANDIDATES, probs.shape[-1])
            probs, cand = torch.topk(probs, k, dim=-1)  # (B, K), sorted
            if sp.top_p < 1.0:
                cum = probs.cumsum(-1)
                # the (K+1)-th token would be kept when the top K hold at most top_p: sort it all
                if sp.top_k == 0 and k < full.shape[-1] and bool((cum[:, -1] <= sp.top_p).any()):
                    probs, cand = torch.sort(full, descending=True, dim=-1)
                    cum = probs.cumsum(-1)
                probs = probs.masked_fill(cum - probs > sp.top_p, 0.0)  # keep the first token always
        # u in (0, 1]: a token of probability 0 is never chosen
        u = 1 - torch.stack([torch.rand((), generator=g, device=probs.device) for g in gens])  # (B,)
        pick = _inverse_cdf(probs, u)  # (B,)
        ids = pick if cand is None else cand.gather(-1, pick[:, None]).squeeze(-1)
        return ids, full.gather(-1, ids[:, None]).squeeze(-1).log()

    @classmethod
    def _sample_rows(cls, logits: torch.Tensor, sampling: list[SamplingParams], gens: list[torch.Generator]):
        """``_sample`` with row b drawn under ``sampling[b]`` (one entry: every row's)."""
        if len(sampling) == 1 or all(sp == sampling[0] for sp in sampling):
            return cls._sample(logits, sampling[0], gens)
        groups: dict[tuple, list[int]] = {}
        for b, sp in enumerate(sampling):
            groups.setdefault((sp.temperature, sp.top_p, sp.top_k), []).append(b)
        ids = torch.empty(len(sampling), dtype=torch.long, device=logits.device)  # (B,)
        logps = torch.empty(len(sampling), device=logits.device)  # (B,)
        for rows in groups.values():
            idx = torch.tensor(rows, device=logits.device)
            ids[idx], logps[idx] = cls._sample(logits[idx], sampling[rows[0]], [gens[b] for b in rows])
        return ids, logps

    def _sample_step(self, logits: torch.Tensor, sampling: list[SamplingParams], gens: list[torch.Generator],
                     results: list[GenResult], limits: list[int]) -> tuple[list[int], list[bool]]:
        """Sample one token for every cache row and append it to its row's result (rows
        already done are skipped); return the ids (B,) and which rows are still running."""
        ids, logps = self._sample_rows(logits, sampling, gens)
        ids, logps = ids.tolist(), logps.tolist()  # one device-to-host copy per step
        running = []
        for b, res in enumerate(results):
            if not _done(res, limits[b]):
                res.token_ids.append(ids[b])
                res.logprobs.append(logps[b])
                res.stopped = ids[b] in self.stop_ids
            running.append(not _done(res, limits[b]))
        return ids, running

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            return self._generate(requests, sampling)
        except BaseException:  # an error or an interrupt mid-call: the cache is forgotten, never half-kept
            self._reset()
            raise
        finally:
            if was_training:
                self.model.train()

    def _generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        rows = self._reusable_rows(requests)
        live = list(range(len(requests)))  # request index of each cache row
        if rows is None:  # new conversations: start a fresh cache
            logits = self._prefill_fresh(requests)
        else:  # the rows stay where they are, as far as they can: the cache order is not the requests'
            request_of = {r: i for i, r in enumerate(rows)}
            if len(request_of) == len(rows):
                order = _to_front(rows, len(self._keys))[: len(rows)]
                live = [request_of[r] for r in order]
            else:  # a conversation asked for twice: copied rows, in the requests' order
                order = rows
            self._select(order)
            logits = self._forward([requests[i].token_ids[len(c):] for i, c in zip(live, self._cached)])
        # one sampler per request: a row's draws do not depend on the other rows of the batch
        dev = self.device
        gens = [torch.Generator(device=dev).manual_seed(r.seed if r.seed is not None else mix_seed(sampling.seed, j))
                for j, r in enumerate(requests)]
        results = [GenResult([], [], False) for _ in requests]
        limits = [r.max_new_tokens or sampling.max_new_tokens for r in requests]  # each row stops at its own

        for _ in range(max(limits)):
            ids, running = self._sample_step(logits, [sampling], [gens[i] for i in live],
                                             [results[i] for i in live], [limits[i] for i in live])
            if not any(running):
                break
            finished = [b for b, r in enumerate(running) if not r]
            if finished:
                # Finished rows (their last token never fed) are parked behind the running
                # ones at once, so no more compute goes to them: each swap moves a finished
                # row and a running one. Parked rows rejoin at the end of the call.
                order = _to_front([b for b, r in enumerate(running) if r], len(live))
                self._select(order)
                self._park(len(finished))
                live = [live[b] for b in order[: len(order) - len(finished)]]
                ids, running = [ids[b] for b in order[: len(live)]], [True] * len(live)
            logits = self._forward([[t] for t in ids])
        self._unpark()
        return results

    def _prefill_fresh(self, requests: list[GenRequest]) -> torch.Tensor:
        """Encode each distinct prompt once (a GRPO group repeats one prompt group_size
        times), then give every request its own copy of the cache rows."""
        self.release()
        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r.token_ids), len(distinct)) for r in requests]
        prompts = list(distinct)
        if self._start_from_prefix_cache(prompts):
            return self._prefill_rest(prompts, which, requests)
        # The prefix all distinct prompts share (system prompt, template header) is encoded
        # once and its cache rows copied; each prompt then encodes only its own suffix (at
        # least one token: the last one's logits start sampling).
        shared = _common_prefix_len(prompts) if len(prompts) > 1 else 0
        shared = min(shared, min(len(ids) for ids in prompts) - 1)
        if shared >= self.MIN_SHARED_PREFIX:
            self._keys, self._cached = [0], [[]]
            self._forward([list(prompts[0][:shared])])
            self._select([0] * len(prompts))
        else:
            self._cached = [[] for _ in prompts]
        return self._prefill_rest(prompts, which, requests)

    def _prefill_rest(self, prompts: list[tuple[int, ...]], which: list[int], requests: list[GenRequest]) -> torch.Tensor:
        """Encode each distinct prompt past what its row already caches, then give every
        request its own copy of its prompt's row."""
        self._keys = list(range(len(prompts)))
        logits = self._forward([list(ids[len(c):]) for ids, c in zip(prompts, self._cached)])  # (U, V)
        self._select(which)
        self._keys = [r.key for r in requests]
        return logits[torch.tensor(which, device=logits.device)]  # (B, V)

    # Rows that finish early are parked (set aside in the cache, behind the running rows)
    # and run again at the end of the call, so the next turn finds every conversation in one batch.
    def _park(self, n: int) -> None:
        """The last ``n`` rows stop running."""
        k = len(self._keys) - n
        self._parked.append((self._keys[k:], self._cached[k:], self._mask[k:]))
        self._keys, self._cached, self._mask = self._keys[:k], self._cached[:k], self._mask[:k]
        self._cache.park(n)

    def _unpark(self) -> None:
        parked, self._parked = self._parked[::-1], []  # the last parked sit next to the running rows
        if not parked:
            return
        width = self._mask.shape[1]
        self._cache.unpark([(mask.shape[0], width - mask.shape[1]) for _, _, mask in parked])
        self._mask = torch.cat([self._mask] + [torch.nn.functional.pad(mask, (0, width - mask.shape[1]))
                                               for _, _, mask in parked])
        self._keys += [k for keys, _, _ in parked for k in keys]
        self._cached += [c for _, cached, _ in parked for c in cached]

    def _split(self, rows: list[int]) -> tuple:
        """A copy of ``rows`` of the batch: (keys, cached ids, mask, [(k, v) per layer])."""
        if rows == list(range(len(self._keys))):  # the whole batch: no copy needed
            layers = [(l.keys, l.values) for l in self._cache.layers]
            return list(self._keys), list(self._cached), self._mask, layers
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        layers = [(l.keys[idx], l.values[idx]) for l in self._cache.layers]
        return [self._keys[r] for r in rows], [self._cached[r] for r in rows], self._mask[idx], layers

    def _merge_rows(self, parts: list[tuple]) -> None:
        """Append the rows of ``parts`` (``_split``'s tuples) to the batch: every part is
        left-padded with masked slots to the widest."""
        if not parts:
            return
        if self._cache is not None:
            parts = [self._split(list(range(len(self._keys))))] + list(parts)
        width = max(mask.shape[1] for _, _, mask, _ in parts)
        self._mask = torch.cat([_left_pad(mask, width) for _, _, mask, _ in parts])
        layers = [(torch.cat([_left_pad(p[3][i][0], width, dim=2) for p in parts]),
                   torch.cat([_left_pad(p[3][i][1], width, dim=2) for p in parts])) for i in range(len(parts[0][3]))]
        self._cache = GrowingCache.from_layers(layers)
        self._keys = [k for p in parts for k in p[0]]
        self._cached = [c for p in parts for c in p[1]]

    def _trim(self) -> None:
        """Drop the leading slots no row attends to (rows that left the batch held them)."""
        first = int(self._mask.any(0).long().argmax()) if self._mask.shape[1] else 0
        if first > 0:
            self._mask = self._mask[:, first:]
            self._cache.trim(first)

    # -- prefix cache --------------------------------------------------------------------
    def _stash(self, rows) -> None:
        """Keep the KV of ``rows`` (only their real slots) in the prefix cache."""
        for b in rows:
            real = self._mask[b].bool()
            self.prefix_cache.put(self._cached[b], [(l.keys[b][:, real], l.values[b][:, real]) for l in self._cache.layers])

    def _start_from_prefix_cache(self, prompts: list[tuple[int, ...]]) -> bool:
        """Start one row per prompt from its longest prefix in the prefix cache (at least
        one token is left to encode: its logits start sampling). False, with nothing
        done, when no prompt shares ``MIN_SHARED_PREFIX`` tokens with a stored entry."""
        if self.prefix_cache is None:
            return False
        hits = [self.prefix_cache.match(list(p), limit=len(p) - 1) for p in prompts]
        if not any(n >= self.MIN_SHARED_PREFIX for n, _ in hits):
            return False
        ref = next(layers for n, layers in hits if n >= self.MIN_SHARED_PREFIX)
        parts = []
        for p, (n, layers) in zip(prompts, hits):
            if n < self.MIN_SHARED_PREFIX:
                n, layers = 0, [(k[:, :0], v[:, :0]) for k, v in ref]
            parts.append(([None], [list(p[:n])], torch.ones((1, n), dtype=torch.long, device=ref[0][0].device),
                          [(k[None], v[None]) for k, v in layers]))
        self._merge_rows(parts)
        return True


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(x, -1)`` written into ``x`` (the same numbers). A second (B, V)
    buffer per step costs page faults on a CPU, where glibc hands such blocks back to the
    kernel between steps."""
    return torch._softmax(x, -1, False, out=x)


#: entries per fp32 partial sum of ``_inverse_cdf``'s first level
CDF_BLOCK = 16


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row b, the first index whose running sum of ``probs[b]`` (B, K), non-negative,
    reaches ``u[b]`` times the row's total, u in (0, 1]: (B,). An entry of probability 0 is
    never picked.

    The running sum is float64: an fp32 one over 49k entries rounds at ~1e-7 near 1, the size
    of a token's share of a flat distribution, and flipped draws with the rounding of another
    batch composition. A float64 running sum over the whole row reads and writes 24 bytes per
    entry in order, though. So a long row is searched in two levels: the fp32 sums of blocks
    of ``CDF_BLOCK`` entries, their float64 running sum, the block holding the target, then
    the float64 running sum of that block's entries alone. With the softmax in place, a
    sampling step at T = 0.7 took 2.31 -> 1.25 ms at batch 32 and 9.22 -> 5.68 ms at 128
    on 2 cores (``bench/cpu_costs.py``)."""
    B, K = probs.shape
    if K <= 64 * CDF_BLOCK:  # short rows (top-k / top-p candidates): one running sum
        cdf = probs.double().cumsum(-1)  # (B, K)
        return torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None]).clamp_(max=K - 1).squeeze(-1)
    if K % CDF_BLOCK:
        probs = torch.nn.functional.pad(probs, (0, CDF_BLOCK - K % CDF_BLOCK))  # zeros: never picked
    n = probs.shape[1] // CDF_BLOCK
    blocks = probs.view(B, n, CDF_BLOCK).sum(-1).double().cumsum(-1)  # (B, n)
    target = (u.double() * blocks[:, -1])[:, None]  # (B, 1)
    j = torch.searchsorted(blocks, target).clamp_(max=n - 1)  # (B, 1): the first block reaching the target
    before = torch.where(j > 0, blocks.gather(-1, (j - 1).clamp(min=0)), 0.0)  # (B, 1) mass before block j
    start = j * CDF_BLOCK  # (B, 1)
    cdf = probs.gather(-1, start + torch.arange(CDF_BLOCK, device=probs.device)).double().cumsum(-1)  # (B, BLOCK)
    # the rest of the target inside block j (> 0); rounding may put it past the block's own sum
    rest = torch.minimum(target - before, cdf[:, -1:])
    return (start + torch.searchsorted(cdf, rest).clamp_(max=CDF_BLOCK - 1)).squeeze(-1)


def _to_front(rows: list[int], n: int) -> list[int]:
    """An order of ``range(n)`` that starts with the distinct ``rows`` (in some order) and
    moves as few rows as possible: each of them past the front swaps with a row not in it."""
    order, front = list(range(n)), set(rows)
    holes = (p for p in range(len(rows)) if p not in front)
    for q in (r for r in rows if r >= len(rows)):
        p = next(holes)
        order[p], order[q] = q, p
    return order


def _done(res: GenResult, limit: int) -> bool:
    return res.stopped or len(res.token_ids) >= limit


def _left_pad(x: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """Left-pad ``x`` with zeros along ``dim`` to ``width`` (padded slots are masked)."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _common_prefix_len(seqs: list[tuple[int, ...]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n
