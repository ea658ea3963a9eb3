"""Joining the Ray cluster of ``scale.ray_address`` (or starting a local one), with one
clear line when Ray is missing or the address does not answer. The rollout pool and the
FSDP learner group both connect here."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

from turnrl.config import ConfigError, RunConfig

PROBE_TIMEOUT_S = 3.0
REPO_ROOT = str(Path(__file__).resolve().parents[2])  # the directory that holds turnrl/


class ClusterError(ConfigError):
    """Ray is missing or the cluster cannot be reached (one line for the console)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``ray://host:10001`` / ``host:6379`` -> (host, port); None for 'auto' / 'local'."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"scale.ray_address = {address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A TCP connection to the host and port of ``address`` (nothing for 'auto'), so a
    wrong address fails in seconds, not after Ray's own retries."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
        raise ClusterError(f"scale.ray_address = {address!r}: no Ray cluster answers at {target[0]}:{target[1]} "
                           f"({why} after {timeout:g} s); start one with `ray start --head` or fix the address") from None


def import_ray(why: str):
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{why} needs Ray, which is not installed: pip install -e .[ray]") from None
    return ray


def connect(cfg: RunConfig, why: str) -> tuple[object, bool]:
    """``(ray, started)``: Ray, initialised: the connection this process already has, the
    cluster at ``scale.ray_address`` (probed first), or a local cluster started here
    (``started`` True: its owner shuts it down). A local cluster's processes inherit
    ``PYTHONPATH`` = this checkout and the working directory, so actors import the
    trainer's code and ``module:Class`` envs even from an uninstalled checkout (cheaper
    than a ``runtime_env`` per actor); on a cluster of your own, install turnrl on the nodes."""
    ray = import_ray(why)
    address = cfg.scale.ray_address
    if address:
        probe(address)
    if ray.is_initialized():
        return ray, False
    try:
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            with _environ(PYTHONPATH=worker_path()):
                ray.init(num_cpus=max(os.cpu_count() or 1, cfg.scale.rollout_workers + cfg.scale.learner_workers),
                         include_dashboard=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        raise ClusterError(f"cannot start or join {where}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return ray, not address


def worker_path() -> str:
    """PYTHONPATH of a local cluster's processes: turnrl's source tree, this process's
    working directory (where ``module:Class`` env names resolve), then what was set."""
    parts = [REPO_ROOT, os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.pathsep.join(dict.fromkeys(parts))


@contextmanager
def _environ(**values: str):
    """Set environment variables for the duration of the block (a local Ray cluster's
    raylet, and every worker it starts, inherit the environment of ``ray.init``)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
