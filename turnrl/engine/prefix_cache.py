"""A store of finished rows' KV, keyed by the token ids they hold.

After a request finishes, its row's KV (per layer, only the real slots) is kept under the
ids it holds. A new request starts from the stored entry with the longest common token
prefix, cropped to that length, and encodes only the rest. Cropping is valid because a
slot's key and value depend only on the tokens up to it (causal attention) and every
slot carries its absolute position (RoPE is applied before caching). A multi-turn
client's next request re-renders the previous reply from text, so the match may stop
before the end of the stored ids; it still saves the whole conversation before that.

The store is bounded by a token budget, least recently used entries leave first. A token
costs ``layers × 2 × kv_heads × head_dim × bytes`` of memory: SmolLM2-135M (30 layers,
3 KV heads of 64) holds 45 KiB a token in fp32, so 32768 tokens are 1.4 GiB.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

#: one layer's (keys, values) for one row, each (kv_heads, n, head_dim)
Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Entry:
    ids: torch.Tensor  # (n,) long
    layers: Layers


def common_prefix_len(a: torch.Tensor, b: torch.Tensor) -> int:
    m = min(len(a), len(b))
    diff = (a[:m] != b[:m]).nonzero()
    return int(diff[0]) if len(diff) else m


class PrefixCache:
    def __init__(self, max_tokens: int):
        if max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens} must be >= 0")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next = 0
        self.tokens = 0  # tokens held
        self.lookup_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # of those, tokens served from the store

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the weights changed: the stored KV is stale)."""
        self._entries.clear()
        self.tokens = 0

    def stats(self) -> dict:
        return {"entries": len(self), "tokens": self.tokens, "max_tokens": self.max_tokens,
                "lookup_tokens": self.lookup_tokens, "hit_tokens": self.hit_tokens}

    def match(self, ids: list[int], limit: int | None = None) -> tuple[int, Layers | None]:
        """The longest common prefix of ``ids`` with a stored entry, at most ``limit``
        tokens: (n, that entry's layers cropped to n) or (0, None)."""
        t = torch.tensor(ids, dtype=torch.long)
        best, best_n = None, 0
        for key, e in self._entries.items():
            n = common_prefix_len(e.ids, t)
            if n > best_n:
                best, best_n = key, n
        best_n = min(best_n, len(ids) if limit is None else limit)
        self.lookup_tokens += len(ids)
        if best is None or best_n <= 0:
            return 0, None
        self._entries.move_to_end(best)
        self.hit_tokens += best_n
        return best_n, [(k[:, :best_n], v[:, :best_n]) for k, v in self._entries[best].layers]

    def put(self, ids: list[int], layers: Layers) -> None:
        """Store ``layers`` (each (kv_heads, len(ids), head_dim)) under ``ids``. An entry that
        already holds ``ids`` as a prefix is kept instead; entries that are a prefix of
        ``ids`` are replaced by this one."""
        n = len(ids)
        if n == 0 or n > self.max_tokens:
            return
        t = torch.tensor(ids, dtype=torch.long)
        for key, e in list(self._entries.items()):
            c = common_prefix_len(e.ids, t)
            if c == n:  # already held
                self._entries.move_to_end(key)
                return
            if c == len(e.ids):  # the new entry extends this one
                self._drop(key)
        self._entries[self._next] = _Entry(t, layers)
        self._next += 1
        self.tokens += n
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        self.tokens -= len(self._entries.pop(key).ids)
