"""A KV cache that grows in place, and drops, reorders and parks rows without copying the batch.

``transformers``' ``DynamicLayer`` appends each decode step's keys and values with
``torch.cat``, copying the whole cache every step: at batch 32 and 150 cached tokens that
copy was a quarter of SmolLM2's decode step on a CPU. ``GrowingLayer`` keeps a buffer with
spare room (doubling when full) and writes the new slots into it; ``keys`` / ``values``
are views of the filled part, so attention reads exactly the same numbers.

The engine also reshapes the batch: a row that finishes its turn stops running, a
conversation that ends leaves, the next turn may ask for the rows in another order.
``transformers``' ``batch_select_indices`` copies every row for that, and the copy (which has
no spare room) is copied again by the next step's update. Here (``GrowingCache``):

- ``select(rows)`` moves only the rows whose place changes, inside the buffer;
- ``park(n)`` sets the last ``n`` rows aside behind the running ones (they stay in the
  buffer; the forwards see only the running rows) and ``unpark`` brings every parked row
  back; the slots written while a row was parked are zeroed, and the engine masks them;
- ``trim(n)`` drops the first ``n`` slots of every row by moving a start offset.

Before, the engine split finished rows off and rebuilt the whole cache to merge them back;
in a hand profile of ``bench/rollout_throughput.py``'s fp32 engine run (AVX2 machine) that
merge and the reallocations after each selection took 13% of the run.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class _Selection:
    """Index tensors of a selection of ``rows`` among ``running`` rows: ``grow``, all of
    them, when there are more rows than before (a new buffer); else the moves, destination
    ``dst`` from source ``src`` (None when no row moves)."""

    def __init__(self, rows: list[int], running: int, device):
        self.n = len(rows)
        self.grow = self.dst = self.src = None
        if len(rows) > running:
            self.grow = torch.tensor(rows, dtype=torch.long, device=device)
            return
        moves = [(dst, src) for dst, src in enumerate(rows) if dst != src]
        if moves:
            self.dst, self.src = (torch.tensor(x, dtype=torch.long, device=device) for x in zip(*moves))


class GrowingLayer(DynamicLayer):
    _k: torch.Tensor | None = None  # (rows, KV heads, capacity, head dim)
    _v: torch.Tensor | None = None
    _b = 0  # running rows: the buffer's first _b rows
    _s = 0  # first slot still held
    _n = 0  # slots filled (up to _n)

    def _view(self, t):
        return t if t is None or t.dim() < 4 else t[: self._b, :, self._s: self._n]

    @property
    def keys(self):
        return self._view(self._k)

    @keys.setter
    def keys(self, t):  # transformers (initialisation, its own selections) assigns whole tensors
        self._k = t
        full = t is not None and t.dim() == 4
        self._b, self._s, self._n = (t.shape[0], 0, t.shape[-2]) if full else (0, 0, 0)

    @property
    def values(self):
        return self._view(self._v)

    @values.setter
    def values(self, t):
        self._v = t

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._k.dim() < 4:  # empty: the first buffer holds the batch given
            self._b = key_states.shape[0]
            self._k = self._v = None
        elif key_states.shape[0] != self._b:
            raise ValueError(f"the cache runs {self._b} rows, the forward gave {key_states.shape[0]}")
        s, n, new = self._s, self._n, key_states.shape[-2]
        if self._k is None or n + new > self._k.shape[-2]:
            held = n - s
            rows = self._b if self._k is None else self._k.shape[0]  # parked rows move too
            shape = (rows, key_states.shape[1], max(2 * held, held + new + 64), key_states.shape[-1])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape)
            if held:
                k[:, :, :held] = self._k[:, :, s:n]
                v[:, :, :held] = self._v[:, :, s:n]
            self._k, self._v, self._s, n = k, v, 0, held
        self._k[: self._b, :, n:n + new] = key_states
        self._v[: self._b, :, n:n + new] = value_states
        self._n = n + new
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if indices.dtype == torch.bool:  # a mask, as DynamicLayer takes it
            indices = indices.nonzero().flatten()
        self.select(indices.tolist())

    def select(self, rows: list[int]) -> None:
        """Running rows become ``rows`` (indices among them, repeats allowed), in that order.
        Only rows whose place changes are copied. While rows are parked the running rows
        may be reordered, not dropped or repeated: the parked ones stay behind them."""
        if self._k is not None and self._k.dim() == 4:
            self._apply(_Selection(rows, self._b, self._k.device))

    def _apply(self, sel: "_Selection") -> None:
        parked = self._k.shape[0] - self._b
        if parked and sel.n != self._b:
            raise ValueError(f"a selection of {sel.n} of {self._b} running rows while {parked} are parked")
        if sel.grow is not None:  # more rows than the running ones: a new buffer
            self._k, self._v = self._k.index_select(0, sel.grow), self._v.index_select(0, sel.grow)
        else:
            if sel.dst is not None:
                for t in (self._k, self._v):  # the sources are read in full before any is written
                    t.index_copy_(0, sel.dst, t.index_select(0, sel.src))
            self._k, self._v = self._k[: sel.n + parked], self._v[: sel.n + parked]
        self._b = sel.n

    def park(self, n: int) -> None:
        """The last ``n`` running rows stop running (they keep their place in the buffer)."""
        self._b -= n

    def unpark(self, groups: list[tuple[int, int]]) -> None:
        """Every parked row runs again. ``groups``, in buffer order: (rows parked together,
        slots written since). Those slots hold nothing of the parked rows: zeroed (the engine
        masks them)."""
        parked = 0 if self._k is None else self._k.shape[0] - self._b
        if sum(n for n, _ in groups) != parked:
            raise ValueError(f"{sum(n for n, _ in groups)} rows to unpark, the cache parks {parked}")
        for rows, slots in groups:
            if slots:
                for t in (self._k, self._v):
                    t[self._b: self._b + rows, :, self._n - slots: self._n] = 0
            self._b += rows

    def trim(self, n: int) -> None:
        """Drop the first ``n`` slots of every row."""
        self._s += n


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` of :class:`GrowingLayer` s (one per decoder layer, made on first use)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    @classmethod
    def from_layers(cls, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> "GrowingCache":
        """A cache holding ``(keys, values)`` per decoder layer."""
        cache = cls()
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        return cache

    def select(self, rows: list[int]) -> None:
        """See :meth:`GrowingLayer.select`; the index tensors are made once for all layers."""
        first = next((l for l in self.layers if l._k is not None and l._k.dim() == 4), None)
        if first is None:
            return
        sel = _Selection(rows, first._b, first._k.device)
        for layer in self.layers:
            layer._apply(sel)

    def park(self, n: int) -> None:
        for layer in self.layers:
            layer.park(n)

    def unpark(self, groups: list[tuple[int, int]]) -> None:
        for layer in self.layers:
            layer.unpark(groups)

    def trim(self, n: int) -> None:
        for layer in self.layers:
            layer.trim(n)
