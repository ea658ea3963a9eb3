"""A KV cache that grows in place.

``transformers``' ``DynamicLayer`` appends each decode step's keys and values with
``torch.cat``, copying the whole cache every step: at batch 32 and 150 cached tokens that
copy was a quarter of SmolLM2's decode step on a CPU. ``GrowingLayer`` keeps a buffer with
spare room (doubling when full) and writes the new slots into it; ``keys`` / ``values``
are views of the filled part, so attention reads exactly the same numbers.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    _k: torch.Tensor | None = None
    _v: torch.Tensor | None = None
    _n = 0  # filled slots of the buffers

    @property
    def keys(self):
        return self._k if self._k is None or self._k.dim() < 4 else self._k[..., : self._n, :]

    @keys.setter
    def keys(self, t):  # the engine (row selection, re-padding) and transformers assign whole tensors
        self._k = t
        self._n = t.shape[-2] if t is not None and t.dim() == 4 else 0

    @property
    def values(self):
        return self._v if self._v is None or self._v.dim() < 4 else self._v[..., : self._n, :]

    @values.setter
    def values(self, t):
        self._v = t

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self._n, key_states.shape[-2]
        if self._k.dim() < 4 or n + new > self._k.shape[-2] or self._k.shape[0] != key_states.shape[0]:
            shape = (*key_states.shape[:2], max(2 * n, n + new + 64), key_states.shape[-1])
            k, v = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:
                k[..., :n, :] = self._k[..., :n, :]
                v[..., :n, :] = self._v[..., :n, :]
            self._k, self._v = k, v
        self._k[..., n:n + new, :] = key_states
        self._v[..., n:n + new, :] = value_states
        self._n = n + new
        return self.keys, self.values


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
