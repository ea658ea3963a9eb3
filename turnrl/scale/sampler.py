"""Samplers: what collects a step's episodes, with which weights.

The trainer sees one interface: ``collect(max_turns, seeds, group_ids, cfg, prefixes)``
returns episodes in request order, and ``publish(model, version)`` hands the sampler the
learner's weights after an update. ``LocalSampler`` samples in this process; the Ray
rollout pool (:mod:`turnrl.scale.ray_rollout`) spreads the same call over actors.

Weights are versioned by the number of updates they have seen; every episode records the
version it was sampled with (``Episode.policy_version``), so the trainer can measure and
bound staleness when rollouts run ahead of the update (``scale.max_staleness``).
"""
from __future__ import annotations

import copy
import threading
from typing import Callable, Protocol

import torch

from turnrl.chat import ChatFormat
from turnrl.config import RunConfig
from turnrl.envs.base import Env
from turnrl.rollout import RolloutConfig, collect
from turnrl.types import Episode


class Sampler(Protocol):
    version: int  # updates the weights in use have seen

    def collect(self, max_turns: int, seeds: list[int], group_ids: list[int], cfg: RolloutConfig,
                prefixes: list[list[str]] | None = None) -> list[Episode]: ...

    def publish(self, model: torch.nn.Module, version: int) -> None:
        """Called on the trainer's thread after an update: the next ``collect`` that starts
        samples with these weights (a snapshot: later updates do not leak into it)."""

    def close(self) -> None: ...


class TrainEnvs:
    """Constructors of training envs by turn cap (WMAct's schedule changes the cap)."""

    def __init__(self, cfg: RunConfig, max_turns: int):
        from turnrl.build import env_factory

        self._cfg, self._default = cfg, max_turns
        self._makers: dict[int, Callable[[], Env]] = {max_turns: env_factory(cfg, "train")}
        self._lock = threading.Lock()

    def __call__(self, max_turns: int) -> Callable[[], Env]:
        from turnrl.build import env_factory

        with self._lock:
            if max_turns not in self._makers:
                self._makers[max_turns] = env_factory(self._cfg, "train", max_turns=max_turns)
            return self._makers[max_turns]


class LocalSampler:
    """Rollouts in this process. With ``own_weights`` the engine samples from a copy of the
    policy, so collection can run on another thread while the learner updates its model
    (asynchronous rollouts); without, it samples from the learner's model itself."""

    def __init__(self, cfg: RunConfig, engine, chat: ChatFormat, envs: TrainEnvs, own_weights: bool = False):
        self.engine, self.chat, self.envs = engine, chat, envs
        self.version = 0
        self._own = own_weights
        self._pending: tuple[dict, int] | None = None
        self._lock = threading.Lock()
        if own_weights:
            self.engine.load_weights(copy.deepcopy(engine.model))

    def publish(self, model, version: int) -> None:
        if not self._own:
            self.engine.load_weights(model)
            self.version = version
            return
        snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with self._lock:
            self._pending = (snap, version)

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            state, version = pending
            self.engine.model.load_state_dict(state)
            self.engine.load_weights(self.engine.model)  # drops caches built with the old weights
            self.version = version

    def collect(self, max_turns, seeds, group_ids, cfg, prefixes=None) -> list[Episode]:
        self._apply_pending()
        make_env = self.envs(max_turns)
        eps = collect([make_env() for _ in seeds], seeds, group_ids, self.engine, self.chat, cfg, prefixes=prefixes)
        for e in eps:
            e.policy_version = self.version
        return eps

    def close(self) -> None:
        pass
