"""Continuous batching on ``HFEngine``: the step-wise loop ``turnrl serve`` runs.

Requests join the running batch between decode steps and leave it as soon as they are
done, so a short request is not held up by a long one and a late one does not wait for
the batch to finish. Each row samples with its own settings (temperature, top-p, top-k),
its own seeded generator and its own token limit, so a seeded reply does not depend on
what it was batched with. With the engine's prefix cache, a finished row's KV is stored
at once and a joining request starts from the longest stored prefix it shares.

The pieces are the engine's own (``_prefill_fresh`` for joining rows, ``_sample_step``,
``_forward``, ``_split`` / ``_merge_rows``): ``generate`` and this loop run the same
code per step. It owns the engine's batch state: do not call ``generate`` on the same
engine while it has rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from turnrl.engine.base import GenRequest, GenResult, SamplingParams
from turnrl.engine.hf import HFEngine, _to_front


@dataclass
class _Row:
    handle: Any  # the caller's (a future)
    sampling: SamplingParams
    gen: torch.Generator
    limit: int
    result: GenResult
    done: bool = False


class ContinuousBatch:
    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.rows: list[_Row] = []  # one per engine cache row, in its order
        self.logits: torch.Tensor | None = None  # (B, V) next-token logits of each row
        self._next_key = 0

    def __len__(self) -> int:
        """Rows still decoding."""
        return sum(not r.done for r in self.rows)

    def reset(self) -> list[Any]:
        """Drop every row (after a failure); return the handles of the unfinished ones."""
        handles = [r.handle for r in self.rows if not r.done]
        self.rows, self.logits = [], None
        self.engine._reset()
        return handles

    @torch.no_grad()
    def add(self, items: list[tuple[list[int], SamplingParams, Any]]) -> None:
        """Start a row per (prompt ids, sampling, handle). The seed and ``max_new_tokens``
        of each item's sampling are its own; the prompts are prefilled together (from the
        prefix cache where it holds them) while the running rows wait, then all decode
        together."""
        if not items:
            return
        eng = self.engine
        eng.model.eval()
        live = [b for b, r in enumerate(self.rows) if not r.done]
        running = eng._split(live) if live else None  # finished rows are dropped here
        old_rows, old_logits = [self.rows[b] for b in live], self.logits[live] if live else None
        eng._reset()
        requests = []
        for ids, sp, _ in items:
            requests.append(GenRequest(self._next_key, list(ids), sp.max_new_tokens, sp.seed))
            self._next_key += 1
        logits = eng._prefill_fresh(requests)  # (N, V)
        if running is not None:
            eng._merge_rows([running])
            eng._trim()
            logits = torch.cat([logits, old_logits])
        new_rows = [_Row(handle, sp, torch.Generator(device=self.engine.device).manual_seed(sp.seed), sp.max_new_tokens, GenResult([], [], False))
                    for _, sp, handle in items]
        self.rows, self.logits = new_rows + old_rows, logits

    @torch.no_grad()
    def step(self) -> list[tuple[Any, GenResult]]:
        """One token for every running row; return (handle, result) of the rows that
        finished with it. Their KV goes to the prefix cache at once."""
        if not self.rows:
            return []
        eng, rows = self.engine, self.rows
        ids, running = eng._sample_step(self.logits, [r.sampling for r in rows], [r.gen for r in rows],
                                        [r.result for r in rows], [r.limit for r in rows])
        finished = [b for b, r in enumerate(rows) if not r.done and not running[b]]
        for b in finished:
            rows[b].done = True
        if finished and eng.prefix_cache is not None:
            eng._stash(finished)  # the last sampled token was never fed: the cache holds the rest
        out = [(rows[b].handle, rows[b].result) for b in finished]
        if not any(running):
            self.rows, self.logits = [], None
            eng._reset()
            return out
        if not all(running):  # finished rows leave at once: the cache moves at most as many rows as leave
            keep = _to_front([b for b, r in enumerate(running) if r], len(rows))[: running.count(True)]
            eng._select(keep)
            eng._trim()
            self.rows = [rows[b] for b in keep]
            ids, running = [ids[b] for b in keep], [True] * len(keep)
        self.logits = eng._forward([[t] for t in ids])
        return out
