"""Joining the Ray cluster of ``scale.ray_address`` (or starting a local one), with one
clear line when Ray is missing or the address does not answer."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from turnrl.config import RunConfig

PROBE_TIMEOUT_S = 5.0
REPO_ROOT = str(Path(__file__).resolve().parents[2])  # the directory that holds turnrl/


class ClusterError(RuntimeError):
    """Ray is missing or the cluster cannot be reached (one line for the console)."""


def _host_port(address: str) -> tuple[str, int] | None:
    """``ray://host:10001`` / ``host:6379`` -> (host, port); None for 'auto' / 'local'."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"scale.ray_address = {address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A TCP connection to the host and port of ``address`` (nothing for 'auto')."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"scale.ray_address = {address!r}: cannot reach {target[0]}:{target[1]} "
                           f"within {timeout:g} s ({e.strerror or e})") from None


def connect(cfg: RunConfig, why: str = "Ray workers"):
    """Ray, initialised: the running connection, the cluster at ``scale.ray_address``
    (probed first, so a wrong address fails in seconds, not after Ray's own retries), or
    a local cluster started for this run. Returns the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{why} need Ray: pip install 'ray>=2.40' (or set scale.learner_workers = 1 and "
                           "scale.rollout_workers = 0)") from None
    if ray.is_initialized():
        return ray
    address = cfg.scale.ray_address
    if address:
        probe(address)
    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=True,
                 configure_logging=False)
    except (ConnectionError, RuntimeError) as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        raise ClusterError(f"cannot start or join {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray


def worker_env() -> dict:
    """``runtime_env`` of turnrl's actors: they import this checkout's ``turnrl`` (first on
    PYTHONPATH), whatever the worker's current directory or installed version."""
    path = [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != REPO_ROOT]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(path)}}
