"""The parts of the Ray rollout pool that need no Ray: sharding, the address probe, the
message when Ray is missing (the default suite; tests/scale/test_ray_rollout.py runs Ray)."""
import socket
import sys
import time

import pytest

from turnrl.config import ConfigError, load_config
from turnrl.rollout import member_index
from turnrl.scale.ray_cluster import probe as probe_address
from turnrl.scale.ray_rollout import RayRolloutPool, shard_groups


def test_shards_hold_whole_groups_in_order_and_keep_member_indices():
    seeds = [s for s in range(5) for _ in range(3)] + [0, 9]  # a group whose last member comes late
    gids = list(seeds)
    for n in (1, 2, 3, 4, 8):
        shards = shard_groups(seeds, gids, n)
        assert len(shards) == min(n, 6) and sorted(i for s in shards for i in s) == list(range(len(seeds)))
        owner = {(seeds[i], gids[i]): k for k, s in enumerate(shards) for i in s}
        assert all(owner[(seeds[i], gids[i])] == k for k, s in enumerate(shards) for i in s)  # whole groups
        whole = member_index(seeds, gids)
        for s in shards:  # a shard's own member numbering is the whole list's: same sampler seeds
            assert member_index([seeds[i] for i in s], [gids[i] for i in s]) == [whole[i] for i in s]
    assert [len(s) for s in shard_groups(seeds[:12], gids[:12], 2)] == [6, 6]  # near-equal episode counts
    assert [len(s) for s in shard_groups(seeds, gids, 2)] == [10, 7]  # (groups of 4, 3, 3 | 3, 3, 1)


def test_an_address_nothing_listens_on_is_one_line_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
            probe_address(address, timeout=2)
    assert time.monotonic() - t0 < 5
    with pytest.raises(ConfigError, match="expected 'auto'"):
        probe_address("localhost")
    probe_address("auto")  # left to ray.init


def test_rollout_workers_without_ray_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    cfg = load_config(None, ["--scale.rollout_workers", "2"])
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install -e \.\[ray\]"):
        RayRolloutPool(cfg, None, None)
