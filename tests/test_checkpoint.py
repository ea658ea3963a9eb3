"""Checkpoint writes that fail (a full disk, a read-only directory) on a real small tmpfs:
one clear error, the previous checkpoint intact, no partial file left behind."""
import os
import subprocess

import pytest
import torch

from turnrl import checkpoint
from turnrl.checkpoint import CheckpointError


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; CI runs as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _state(n_floats: int, value: float) -> dict:
    return {"model": {"w": torch.full((n_floats,), value)}, "data_pos": 7}


def _assert_intact(path, value):
    state = torch.load(path / "state.pt", weights_only=False)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.full((100_000,), value))


def test_full_disk_gives_one_clear_error_and_keeps_the_previous_checkpoint(small_disk):
    ck = small_disk / "checkpoints"
    first = checkpoint.save(ck, 1, _state(100_000, 1.0), keep=2)  # 400 kB of 1 MiB
    with pytest.raises(CheckpointError) as e:
        checkpoint.save(ck, 2, _state(200_000, 2.0), keep=2)  # 800 kB more: the disk fills mid-write
    assert str(e.value) == (f"checkpoint {ck / 'step_000002'}: could not write it: No space left on device; "
                            f"the previous checkpoint {first} is kept")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in ck.iterdir()) == ["step_000001"]  # the partial write is gone, space is free
    _assert_intact(first, 1.0)
    assert checkpoint.latest(ck) == first
    checkpoint.save(ck, 2, _state(50_000, 2.0), keep=2)  # a checkpoint that fits still lands
    assert [p.name for p in checkpoint.complete(ck)] == ["step_000001", "step_000002"]


def test_resaving_the_same_step_on_a_full_disk_keeps_the_old_copy(small_disk):
    ck = small_disk / "checkpoints"
    first = checkpoint.save(ck, 1, _state(100_000, 1.0), keep=2)
    with pytest.raises(CheckpointError, match="No space left on device"):
        checkpoint.save(ck, 1, _state(200_000, 3.0), keep=2)
    _assert_intact(first, 1.0)
    checkpoint.save(ck, 1, _state(100_000, 1.5), keep=2)  # fits next to the old copy: replaced
    assert torch.equal(torch.load(first / "state.pt", weights_only=False)["model"]["w"], torch.full((100_000,), 1.5))
    assert sorted(p.name for p in ck.iterdir()) == ["step_000001"]


def test_read_only_directory_gives_one_clear_error_and_keeps_the_previous_checkpoint(small_disk):
    ck = small_disk / "checkpoints"
    first = checkpoint.save(ck, 1, _state(100_000, 1.0), keep=1)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(CheckpointError) as e:
        checkpoint.save(ck, 2, _state(100_000, 2.0), keep=1)
    assert str(e.value) == (f"checkpoint {ck / 'step_000002'}: could not write it: Read-only file system; "
                            f"the previous checkpoint {first} is kept")
    _assert_intact(first, 1.0)


def test_a_write_error_reaches_the_command_line_as_one_line(small_disk, monkeypatch, capsys):
    from turnrl import cli

    def fail(*a, **k):
        checkpoint.save(small_disk / "checkpoints", 1, _state(400_000, 1.0), keep=1)  # 1.6 MB on 1 MiB

    monkeypatch.setattr(cli, "_dispatch", fail)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checkpoint ") and "No space left on device" in err
