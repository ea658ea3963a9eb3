"""The sampler interface. The trainer and the rollout loop only see this."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Hashable, Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64
    seed: int = 0


@dataclass(frozen=True)
class GenRequest:
    """A full context as token ids. ``key`` names the conversation: an engine may keep
    state (a KV cache) per key and reuse it when the next request extends the same ids."""

    key: Hashable
    token_ids: list[int]
    max_new_tokens: int | None = None  # this request's own token limit (None: the sampling's)
    seed: int | None = None  # seed of this request's own sampler (None: the sampling's seed and the row)


@dataclass
class GenResult:
    token_ids: list[int]  # sampled ids, including the stop token when one was sampled
    logprobs: list[float]  # log p of each sampled id under the sampling distribution (logits / T)
    stopped: bool  # True if a stop token ended the turn; False if max_new_tokens cut it


class Engine(Protocol):
    def generate(self, requests: list[GenRequest], sampling: SamplingParams) -> list[GenResult]: ...

    def release(self) -> None:
        """Forget all per-conversation state (called at the end of a rollout)."""

    def load_weights(self, model) -> None:
        """Make the sampler use the learner's current weights."""


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and machines): one sampler seed per
    episode and turn, so an episode's tokens do not depend on the batch it was sampled in."""
    return int.from_bytes(hashlib.sha256(",".join(map(str, parts)).encode()).digest()[:8], "big") >> 1
