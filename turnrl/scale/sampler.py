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
    latest: int  # the newest version published

    def collect(self, max_turns: int, seeds: list[int], group_ids: list[int], cfg: RolloutConfig,
                prefixes: list[list[str]] | None = None, version: int | None = None) -> list[Episode]:
        """Episodes in request order, sampled with the weights of ``version`` (default the
        newest published): a collection started ahead of the update names the weights of
        the moment it was asked for, whatever was published since."""

    def publish(self, model: torch.nn.Module, version: int) -> None:
        """Called on the trainer's thread after an update: a snapshot of the weights (later
        updates do not leak into it)."""

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
    """Rollouts in this process. With ``own_weights`` the engine's model is a copy of the
    policy, so collection can run on another thread while the learner updates its own
    (asynchronous rollouts); without, the engine samples from the learner's model itself."""

    def __init__(self, cfg: RunConfig, engine, chat: ChatFormat, envs: TrainEnvs, own_weights: bool = False):
        self.engine, self.chat, self.envs = engine, chat, envs
        self.version = self.latest = 0
        self._own = own_weights
        self._snapshots: dict[int, dict] = {}  # version -> state dict, until a collection uses it
        self._lock = threading.Lock()

    def publish(self, model, version: int) -> None:
        if not self._own:  # the trainer's own engine: it has loaded the new weights already
            self.version = self.latest = version
            return
        snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with self._lock:
            self._snapshots[version] = snap
            self.latest = version

    def _use(self, version: int) -> None:
        if version == self.version:
            return
        with self._lock:
            state = self._snapshots[version]
            for v in [v for v in self._snapshots if v < version]:
                del self._snapshots[v]
        self.engine.model.load_state_dict(state)
        self.engine.load_weights(self.engine.model)  # drops caches built with the old weights
        self.version = version

    def collect(self, max_turns, seeds, group_ids, cfg, prefixes=None, version=None) -> list[Episode]:
        if self._own:
            self._use(self.latest if version is None else version)
        make_env = self.envs(max_turns)
        eps = collect([make_env() for _ in seeds], seeds, group_ids, self.engine, self.chat, cfg, prefixes=prefixes)
        for e in eps:
            e.policy_version = self.version
        return eps

    def close(self) -> None:
        pass
