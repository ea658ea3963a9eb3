"""The update on M processes: torch FSDP (``fully_shard``), started and placed by Ray.

``FSDPLearnerGroup`` has the surface the trainer uses from :class:`turnrl.learner.Learner`
(``update``, ``state_dict``, ``load_state_dict``, ``algo``, ``critic``). Behind it, M Ray
actors each join one ``torch.distributed`` process group (gloo on CPU, NCCL on GPU), shard
their copy of the policy with FSDP2's ``fully_shard`` (each decoder layer, then the root;
https://docs.pytorch.org/docs/stable/distributed.fsdp.fully_shard.html) and run a ``Learner``
on it, whose AdamW steps the sharded (DTensor) parameters.

Every rank receives all episodes, so masks, advantages and loss normalisers are the same
everywhere; each rank back-propagates its share of the micro-batches (every ``world``-th,
from its rank) and FSDP's reduce-scatter *sums* the gradients (divide factor 1): each
shard ends up with the single-process gradient, up to the order of fp32 additions.

Why the weights are gathered for a whole pass: the learner's log-prob code calls the
decoder, the embedding and the LM head directly (prefix sharing, chunked head), not the
model's ``forward``, and how many calls a micro-batch makes depends on its episodes. FSDP's
per-module all-gathers would then differ in number between ranks. So ``FSDPPeers.gather``
all-gathers every unit once (same collectives on every rank), forward/backward passes run
without communication (``set_requires_gradient_sync(False)``, gradients accumulate
unsharded), and ``sync_grads`` runs one zero-loss pass of the root with sync on, whose
backward reduce-scatters the accumulated gradients of every unit, then reshards. Parameters
and optimizer state stay sharded between passes; activations are a single process's.
"""
from __future__ import annotations

import math
import socket

import torch

from turnrl.chat import ChatFormat
from turnrl.config import RunConfig
from turnrl.learner import Learner
from turnrl.types import Episode


def _decoder_layers(model) -> list[torch.nn.Module]:
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(body, "layers", None)
    if layers is None:
        raise RuntimeError(f"scale.learner_workers > 1: cannot find the decoder layers of {type(model).__name__} "
                           "(expected model.get_decoder().layers)")
    return list(layers)


class FSDPPeers:
    """The hooks :class:`~turnrl.learner.Learner` calls (see ``learner.Solo``), for rank
    ``rank`` of a ``world``-process group that is already initialised."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device
        self.model = None
        self.units: list = []
        self._gathered = False

    def wrap(self, model):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        model.to(self.device)
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh, reshard_after_forward=False)
        fully_shard(model, mesh=mesh, reshard_after_forward=False)
        self.units = [m for m in model.modules() if hasattr(m, "set_gradient_divide_factor")]
        for m in self.units:
            m.set_gradient_divide_factor(1.0)  # sum the ranks' gradients (FSDP averages by default) ...
            m.set_force_sum_reduction_for_comms(True)  # ... with a plain SUM (gloo has no PREMUL_SUM)
            m.set_reshard_after_backward(False, recurse=False)
            m.set_requires_gradient_sync(False, recurse=False)
        self.model = model
        with torch.no_grad():  # the first forward goes through the root: it becomes FSDP's root
            self._probe()
        self.release()
        return model

    def _probe(self) -> torch.Tensor:
        return self.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device)).logits

    def gather(self) -> None:
        if not self._gathered:
            for m in self.units:
                m.unshard()
            self._gathered = True

    def sync_grads(self) -> None:
        """One zero-loss pass of the root with gradient sync on: its backward reduce-scatters
        (sums) every unit's accumulated gradient into the shards; then reshard."""
        self.gather()
        for m in self.units:
            m.set_requires_gradient_sync(True, recurse=False)
        try:
            (self._probe().float().sum() * 0.0).backward()
        finally:
            for m in self.units:
                m.set_requires_gradient_sync(False, recurse=False)
        self.release()

    def release(self) -> None:
        for m in self.units:
            m.reshard()
        self._gathered = False

    def reduce(self, sums: dict[str, float]) -> dict[str, float]:
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, dict(sums))
        out: dict[str, float] = {}
        for part in parts:
            for k, v in part.items():
                out[k] = max(out.get(k, -math.inf), v) if k.endswith("_max") else out.get(k, 0.0) + v
        return out


# -- optimizer state: the same checkpoint format as one process --------------------------
def _to_indexed(osd: dict, names: list[str], aliases: dict[str, str]) -> dict:
    """``get_optimizer_state_dict``'s full state (keyed by parameter name) -> the format of
    ``torch.optim.Optimizer.state_dict`` (keyed by position), so one-process and FSDP
    checkpoints load into each other."""
    index = {n: i for i, n in enumerate(names)}
    pos = lambda fqn: index[aliases.get(fqn, fqn)]
    groups = [{**g, "params": sorted(pos(f) for f in g["params"])} for g in osd["param_groups"]]
    return {"state": {pos(f): s for f, s in osd["state"].items()}, "param_groups": groups}


def _to_named(osd: dict, names: list[str]) -> dict:
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}


class _Rank:
    """One rank of the group: a Ray actor with a ``Learner`` on its FSDP-sharded model."""

    def __init__(self, rank: int, world: int, threads: int):
        self.rank, self.world = rank, world
        if threads:
            torch.set_num_threads(threads)

    def address(self) -> tuple[str, int]:
        """Rendezvous of the process group (rank 0's host and a free port)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, cfg: RunConfig, model, chat: ChatFormat, addr: str, port: int) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{addr}:{port}", rank=self.rank,
                                world_size=self.world, timeout=timedelta(minutes=30))
        torch.manual_seed(cfg.train.seed)
        self.learner = Learner(cfg, model, chat, peers=FSDPPeers(self.rank, self.world, device))
        self.names = [n for n, p in self.learner.model.named_parameters() if p.requires_grad]
        shared = {id(p): n for n, p in self.learner.model.named_parameters()}
        self.aliases = {n: shared[id(p)] for n, p in self.learner.model.named_parameters(remove_duplicate=False)}

    def update(self, eps: list[Episode]):
        stats = self.learner.update(eps)
        self.learner.peers.release()
        return stats, (None if stats.get("update_skipped") else self._weights())

    def _weights(self) -> dict | None:
        """The full (unsharded) model state on rank 0's CPU; a collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.learner.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.rank == 0 else None

    def state_dict(self) -> dict | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = self._weights()
        osd = get_optimizer_state_dict(self.learner.model, self.learner.opt, options=opts)
        if self.rank:
            return None
        return {"model": model, "optimizer": _to_indexed(osd, self.names, self.aliases),
                "scheduler": self.learner.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                              set_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.learner.model, state["model"], options=opts)
        set_optimizer_state_dict(self.learner.model, self.learner.opt, _to_named(state["optimizer"], self.names),
                                 options=opts)
        self.learner.sched.load_state_dict(state["scheduler"])

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class FSDPLearnerGroup:
    """``scale.learner_workers`` ranks of FSDP, behind the surface of ``Learner``. After
    ``update`` and ``load_state_dict``, ``model`` (the driver's full copy, which the
    trainer's engine, evaluation and ``save_final`` use) holds the group's weights."""

    def __init__(self, cfg: RunConfig, model, chat: ChatFormat):
        from turnrl.algos import get_algorithm
        from turnrl.scale.ray_cluster import ClusterError, connect

        self.cfg, self.model, self.chat = cfg, model, chat
        self.algo = get_algorithm(cfg.algo.name)
        self.critic = None  # critics are refused by the config (RunConfig._check)
        world = cfg.scale.learner_workers
        ray, self._owns_ray = connect(cfg, f"scale.learner_workers = {world}")
        from ray.exceptions import GetTimeoutError
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= world else 0
        bundle = {"CPU": 1, **({"GPU": 1} if gpus else {})}
        self._pg = placement_group([bundle] * world, strategy="PACK")
        try:
            ray.get(self._pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            remove_placement_group(self._pg)
            raise ClusterError(f"scale.learner_workers = {world}: the Ray cluster cannot place {world} x {bundle} "
                               f"within {PLACEMENT_TIMEOUT_S} s (it has {ray.available_resources()})") from None
        actor = ray.remote(_Rank)
        self.ranks = [actor.options(num_cpus=1, num_gpus=gpus,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=r)
                                    ).remote(r, world, cfg.train.threads) for r in range(world)]
        self._ray = ray
        try:
            addr, port = ray.get(self.ranks[0].address.remote())
            shipped = ray.put(model)
            ray.get([a.setup.remote(cfg, shipped, chat, addr, port) for a in self.ranks])
        except BaseException:
            self.close(graceful=False)
            raise

    def _all(self, method: str, *args) -> list:
        return self._ray.get([getattr(a, method).remote(*args) for a in self.ranks])

    def update(self, eps: list[Episode]) -> dict[str, float]:
        stats, weights = self._all("update", self._ray.put(eps))[0]
        if weights is not None:
            self.model.load_state_dict(weights)
        return stats

    def state_dict(self) -> dict:
        return self._all("state_dict")[0]

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._all("load_state_dict", self._ray.put({k: state[k] for k in ("model", "optimizer", "scheduler")}))

    def close(self, graceful: bool = True) -> None:
        """Stop the ranks (the trainer calls it when a run ends)."""
        if not self.ranks:
            return
        from ray.util.placement_group import remove_placement_group

        try:
            if graceful:
                self._all("close")
        finally:
            for a in self.ranks:
                self._ray.kill(a)
            remove_placement_group(self._pg)
            self.ranks = []
            if self._owns_ray:  # a local cluster started for this run
                self._ray.shutdown()
                self._owns_ray = False


PLACEMENT_TIMEOUT_S = 120
