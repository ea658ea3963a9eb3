"""Rollouts on Ray actors: ``scale.rollout_workers`` processes, each with its own engine
and its own envs, behind the same :class:`~turnrl.scale.sampler.Sampler` interface as
:class:`~turnrl.scale.sampler.LocalSampler`.

- **Sharding.** A step's request list is split into contiguous shards of whole groups
  (all episodes sharing a ``(seed, group_id)``), one per worker; the episodes come back
  in request order. Every request carries its own sampler seed (``mix_seed`` of the turn
  seed, env seed and member index, see :mod:`turnrl.engine.base`), so an episode gets the
  same tokens on a worker as in this process, whatever the sharding.
- **Weights.** The driver's model object is shipped once when the pool starts
  (``ray.put``: it may be a model no config could rebuild); after each update
  ``publish`` puts a snapshot of the trainable parameters into Ray's object store once,
  and every worker loads that same object before its next collect
  (https://docs.ray.io/en/latest/ray-core/objects.html).
- **Faults.** A worker that dies mid-collect (``RayActorError``: its process exited, was
  killed, or its node went away, https://docs.ray.io/en/latest/ray-core/fault_tolerance/actors.html)
  is replaced by a fresh actor, which loads the current weights, and its shard is
  collected again: the step ends with the same episodes and, being seeded, the same
  tokens. ``workers_restarted`` counts the replacements (a training metric).
- **Env errors.** Workers collect with ``on_env_error="fail"``: an env that raises ends
  only its own episode, marked failed (``rollout.fail_episode``); the learner leaves it
  out and the step's metrics count it (``episodes_failed``).

Ray is optional: ``pip install -e .[ray]``.
"""
from __future__ import annotations

import os
import sys
import threading

import torch

from turnrl.config import ConfigError, RunConfig
from turnrl.rollout import RolloutConfig, collect
from turnrl.scale.ray_cluster import connect
from turnrl.types import Episode

#: times one shard is collected again after its worker died, before the step fails
MAX_RETRIES = 3


def build_rollout_engine(model, tok, scale):
    """(engine, chat) of a worker. The built-in engine is ``build_engine(model, tok)``;
    another engine is asked for by keyword, which a ``build_engine`` without an
    ``engine`` argument refuses with one line."""
    from turnrl.build import build_engine

    if scale.engine == "hf":
        return build_engine(model, tok)
    try:
        return build_engine(model, tok, engine=scale.engine, vllm_kwargs=scale.vllm_kwargs)
    except TypeError as e:
        raise ConfigError(f"scale.engine = {scale.engine!r}: this turnrl's build_engine has no such engine ({e})") from e


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What an update can change: the parameters that require grad (a LoRA run ships
    its adapters only)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


class RolloutWorker:
    """One rollout worker, run as a Ray actor (``ray.remote(RolloutWorker)``)."""

    def __init__(self, cfg: RunConfig, model, tok, max_turns: int):
        from turnrl.scale.sampler import TrainEnvs

        if tok is None:
            from turnrl.models import load_tokenizer

            tok = load_tokenizer(cfg.model.name)
        self.model = model
        self.engine, self.chat = build_rollout_engine(model, tok, cfg.scale)
        self.envs = TrainEnvs(cfg, max_turns)
        self.loaded: int | None = None  # version of the published weights loaded (None: the shipped model's)

    def ready(self) -> int:
        return os.getpid()

    def _sync(self, weights: list, version: int) -> None:
        """Load the published weights ``weights = [ObjectRef]`` (nested in a list, so Ray
        hands over the reference and the worker fetches the object only when its version
        is new)."""
        if not weights or weights[0] is None or self.loaded == version:
            return
        import ray

        _, unexpected = self.model.load_state_dict(ray.get(weights[0]), strict=False)
        if unexpected:
            raise RuntimeError(f"published weights do not fit the worker's model: {unexpected[:3]} ...")
        self.engine.load_weights(self.model)  # drops caches built with the old weights
        self.loaded = version

    def collect(self, weights: list, version: int, max_turns: int, seeds: list[int], group_ids: list[int],
                cfg: RolloutConfig, prefixes: list[list[str]] | None = None) -> list[Episode]:
        self._sync(weights, version)
        make_env = self.envs(max_turns)
        eps = collect([make_env() for _ in seeds], seeds, group_ids, self.engine, self.chat, cfg,
                      prefixes=prefixes, on_env_error="fail")
        for e in eps:
            e.policy_version = version
        return eps


def shard_groups(seeds: list[int], group_ids: list[int], n: int) -> list[list[int]]:
    """Request indices in at most ``n`` shards of whole groups: groups (same ``(seed,
    group_id)``) in order of first appearance, cut into contiguous runs of near-equal
    episode counts; within a shard the indices keep their order (so member indices, and
    with them the sampler seeds, are the ones of the whole list)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(seeds, group_ids)):
        groups.setdefault(key, []).append(i)
    glist = list(groups.values())
    n = max(1, min(n, len(glist)))
    total, shards, acc = len(seeds), [[] for _ in range(n)], 0
    for g in glist:
        k = min(n - 1, acc * n // max(1, total))  # the shard this group starts in
        shards[k] += g
        acc += len(g)
    return [s for s in shards if s]


class RayRolloutPool:
    """``scale.rollout_workers`` Ray actors behind the :class:`Sampler` interface.

    Joins the Ray of this process when it is already initialised (``ray.init`` called by
    the user or a test), else the cluster at ``scale.ray_address``, else starts a local
    cluster (shut down again by :meth:`close`). On a cluster that this pool did not
    start, workers import turnrl and the env's module as installed on the nodes (or as
    the job's ``runtime_env`` provides)."""

    def __init__(self, cfg: RunConfig, envs, model: torch.nn.Module, tokenizer=None):
        ray, self._owns_ray = connect(cfg, "scale.rollout_workers > 0")
        self._ray = ray
        sc = cfg.scale
        self.cfg, self.n = cfg, sc.rollout_workers
        self.version = self.latest = 0
        self.workers_restarted = 0
        self._lock = threading.Lock()
        self._weights: dict[int, object | None] = {0: None}  # version -> ObjectRef of its published state
        self._actor_cls = ray.remote(num_cpus=1)(RolloutWorker)
        self._init_args = (cfg, ray.put(model), None if tokenizer is None else ray.put(tokenizer),
                           getattr(envs, "_default", None) or cfg.env.max_turns)
        self.workers = [self._start() for _ in range(self.n)]
        self._wait_ready(self.workers)

    # -- workers ---------------------------------------------------------------------------
    def _start(self):
        return self._actor_cls.remote(*self._init_args)

    def _wait_ready(self, workers) -> None:
        try:
            self._ray.get([w.ready.remote() for w in workers])
        except self._ray.exceptions.RayActorError as e:
            self.close()
            raise RuntimeError(f"a Ray rollout worker failed to start: {_last_line(e)}") from None

    def _replace(self, k: int) -> None:
        try:
            self._ray.kill(self.workers[k], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.workers[k] = self._start()
        self.workers_restarted += 1

    # -- the Sampler interface ------------------------------------------------------------------
    def publish(self, model: torch.nn.Module, version: int) -> None:
        """``ray.put`` copies the tensors into the object store at once: later updates of
        ``model`` do not reach this snapshot."""
        ref = self._ray.put(trainable_state(model))
        with self._lock:
            self._weights[version] = ref
            self.latest = version

    def collect(self, max_turns: int, seeds: list[int], group_ids: list[int], cfg: RolloutConfig,
                prefixes: list[list[str]] | None = None, version: int | None = None) -> list[Episode]:
        ray = self._ray
        with self._lock:
            version = self.latest if version is None else version
            ref = self._weights[version]
            for v in [v for v in self._weights if v < version]:  # no collection asks for older ones
                del self._weights[v]
        shards = shard_groups(seeds, group_ids, self.n)

        def submit(k: int):
            idx = shards[k]
            return self.workers[k].collect.remote(
                [ref], version, max_turns, [seeds[i] for i in idx], [group_ids[i] for i in idx], cfg,
                [prefixes[i] for i in idx] if prefixes else None)

        running = {submit(k): k for k in range(len(shards))}
        tries = [0] * len(shards)
        out: list[Episode | None] = [None] * len(seeds)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            k = running.pop(done[0])
            try:
                eps = ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                tries[k] += 1
                if tries[k] > MAX_RETRIES:
                    raise RuntimeError(f"Ray rollout worker {k} died {tries[k]} times on the same shard; "
                                       f"last: {_last_line(e)}") from None
                print(f"turnrl: Ray rollout worker {k} died ({_last_line(e)}); starting a new one and "
                      f"collecting its {len(shards[k])} episodes again", file=sys.stderr)
                self._replace(k)
                running[submit(k)] = k
                continue
            for i, ep in zip(shards[k], eps):
                out[i] = ep
        self.version = version
        return out  # type: ignore[return-value]

    def close(self) -> None:
        ray = self._ray
        for w in getattr(self, "workers", []):
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False


def _last_line(e: Exception) -> str:
    lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
    return lines[-1] if lines else type(e).__name__
