"""Hugging Face engine: batched sampling with one KV cache kept across turns.

All conversations of a rollout live in one batched ``DynamicCache``. When a request
extends the ids already cached for its key, only the new suffix is encoded: earlier
turns are never re-encoded. Rows have different lengths, so the suffixes are
left-padded; padded slots are masked out (``attention_mask`` 0) and every real token
gets its true position id, so the model sees exactly the context of an unpadded run.
Identical prompts are encoded once. Finished rows leave the batch (once a quarter of it
is done), so little compute goes to them.
"""
from __future__ import annotations

from typing import Hashable

import torch
from transformers import DynamicCache

from turnrl.engine.base import GenRequest, GenResult, SamplingParams, mix_seed
from turnrl.models import cache_kwargs


class HFEngine:
    def __init__(self, model, stop_ids: list[int], pad_id: int):
        self.model = model
        self.stop_ids = torch.tensor(sorted(set(stop_ids)))
        self.pad_id = pad_id
        self.release()

    # -- state ---------------------------------------------------------------------------
    def release(self) -> None:
        self._keys: list[Hashable] = []
        self._cached: list[list[int]] = []  # ids held in the cache, per row
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (B, L) 1 where the cache slot is real
        self._parked: list = []  # rows that finished this call, split off the cache

    def load_weights(self, model) -> None:
        self.model = model
        self.release()

    def _select(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the cache, in that order."""
        idx = torch.tensor(rows, dtype=torch.long)
        self._keys = [self._keys[r] for r in rows]
        self._cached = [self._cached[r] for r in rows]
        if self._cache is not None:
            self._cache.batch_select_indices(idx)
            self._mask = self._mask[idx]

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
    def _forward(self, chunks: list[list[int]], real: list[bool] | None = None) -> torch.Tensor:
        """Append ``chunks`` (one per row, each non-empty) to the cache; return last logits (B, V).
        Rows with ``real[b] = False`` get their chunk as a masked-out slot (a finished row
        waiting for compaction): it takes a cache slot but no row attends to it."""
        width = max(len(c) for c in chunks)
        ids = torch.full((len(chunks), width), self.pad_id, dtype=torch.long)  # (B, W)
        new_mask = torch.zeros((len(chunks), width), dtype=torch.long)  # (B, W)
        pos = torch.zeros((len(chunks), width), dtype=torch.long)  # (B, W)
        for b, c in enumerate(chunks):
            n0 = len(self._cached[b])
            ids[b, width - len(c):] = torch.tensor(c)
            if real is not None and not real[b]:
                pos[b, width - len(c):] = n0
                continue
            new_mask[b, width - len(c):] = 1
            pos[b, width - len(c):] = torch.arange(n0, n0 + len(c))
            self._cached[b] = self._cached[b] + c
        mask = new_mask if self._mask is None else torch.cat([self._mask, new_mask], dim=1)  # (B, L+W)
        if self._cache is None:
            self._cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **cache_kwargs(self.model, self._cache),
                         use_cache=True, logits_to_keep=1)
        self._mask = mask
        return out.logits[:, -1, :].float()  # (B, V)

    # -- sampling ------------------------------------------------------------------------
    @staticmethod
    def _sample(logits: torch.Tensor, sp: SamplingParams, gens: list[torch.Generator]):
        """Return sampled ids (B,) and their log-probs under softmax(logits / T); row b
        draws from its own generator ``gens[b]``."""
        if sp.temperature <= 0:
            ids = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1)
            return ids, logp.gather(-1, ids[:, None]).squeeze(-1)
        scaled = logits / sp.temperature  # (B, V)
        logp = torch.log_softmax(scaled, -1)  # (B, V)
        filt = scaled
        if sp.top_k > 0:
            kth = torch.topk(filt, min(sp.top_k, filt.shape[-1]), dim=-1).values[:, -1:]
            filt = filt.masked_fill(filt < kth, float("-inf"))
        if sp.top_p < 1.0:
            sorted_logits, order = torch.sort(filt, descending=True, dim=-1)
            cum = torch.softmax(sorted_logits, -1).cumsum(-1)
            drop = cum - torch.softmax(sorted_logits, -1) > sp.top_p  # keep the first token always
            filt = filt.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logp.exp() if filt is scaled else torch.softmax(filt, -1)
        ids = torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)])  # (B,)
        return ids, logp.gather(-1, ids[:, None]).squeeze(-1)

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]:
        if not requests:
            return []
        was_training = self.model.training
        self.model.eval()
        rows = self._reusable_rows(requests)
        if rows is None:  # new conversations: start a fresh cache
            logits = self._prefill_fresh(requests)
        else:
            self._select(rows)
            logits = self._forward([r.token_ids[len(c):] for r, c in zip(requests, self._cached)])
        # one sampler per request: a row's draws do not depend on the other rows of the batch
        gens = [torch.Generator().manual_seed(r.seed if r.seed is not None else mix_seed(sampling.seed, j))
                for j, r in enumerate(requests)]
        results = [GenResult([], [], False) for _ in requests]
        limits = [r.max_new_tokens or sampling.max_new_tokens for r in requests]  # each row stops at its own
        live = list(range(len(requests)))  # request index of each cache row

        def done(i: int) -> bool:
            return results[i].stopped or len(results[i].token_ids) >= limits[i]

        for _ in range(max(limits)):
            ids, logps = self._sample(logits, sampling, [gens[i] for i in live])
            stop = torch.isin(ids, self.stop_ids)
            for b, req_i in enumerate(live):
                res = results[req_i]
                if done(req_i):
                    continue  # finished earlier, still in the batch until the next compaction
                res.token_ids.append(int(ids[b]))
                res.logprobs.append(float(logps[b]))
                res.stopped = bool(stop[b])
            running = [not done(i) for i in live]
            if not any(running):
                break
            finished = [b for b, r in enumerate(running) if not r]
            if len(finished) * 4 >= len(live):
                # Finished rows leave the cache (their last token was never fed) so no more
                # compute goes to them; compaction copies the cache, so it waits until a
                # quarter of the batch is done. Parked rows rejoin at the end of the call.
                keep = [b for b, r in enumerate(running) if r]
                self._park(finished)
                self._select(keep)
                live = [live[b] for b in keep]
                ids, running = ids[torch.tensor(keep)], [True] * len(keep)
            logits = self._forward([[int(t)] for t in ids], real=running)
        self._unpark()
        if was_training:
            self.model.train()
        return results

    def _prefill_fresh(self, requests: list[GenRequest]) -> torch.Tensor:
        """Encode each distinct prompt once (a GRPO group repeats one prompt group_size
        times), then give every request its own copy of the cache rows."""
        self.release()
        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r.token_ids), len(distinct)) for r in requests]
        self._keys = list(range(len(distinct)))
        self._cached = [[] for _ in distinct]
        logits = self._forward([list(ids) for ids in distinct])  # (U, V)
        self._select(which)
        self._keys = [r.key for r in requests]
        return logits[torch.tensor(which)]  # (B, V)

    # Rows that finish early are parked (their cache rows split off) and merged back at
    # the end of the call, so the next turn finds every conversation in one batch.
    def _park(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, dtype=torch.long)
        layers = [(l.keys[idx], l.values[idx]) for l in self._cache.layers]
        self._parked.append(([self._keys[r] for r in rows], [self._cached[r] for r in rows], self._mask[idx], layers))

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for keys, cached, mask, layers in parked:
            width = max(self._mask.shape[1], mask.shape[1])
            self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])
            for layer, (k, v) in zip(self._cache.layers, layers):
                layer.keys = torch.cat([_left_pad(layer.keys, width, dim=2), _left_pad(k, width, dim=2)])
                layer.values = torch.cat([_left_pad(layer.values, width, dim=2), _left_pad(v, width, dim=2)])
            self._keys += keys
            self._cached += cached


def _left_pad(x: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """Left-pad ``x`` with zeros along ``dim`` to ``width`` (padded slots are masked)."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
