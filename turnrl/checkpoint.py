"""Atomic, resumable checkpoints.

A checkpoint is a directory ``step_NNNNNN/state.pt`` written under a temporary name
and renamed into place, so a crash mid-write never leaves a half checkpoint that
looks complete. Old checkpoints are pruned only after the new one is in place.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {**state, "step": step, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_dir)
    for old in sorted(complete(ckpt_dir))[:-keep]:
        shutil.rmtree(old)
    return final


def complete(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step_*") if (p / "state.pt").is_file())


def latest(ckpt_dir: Path) -> Path | None:
    found = complete(ckpt_dir)
    return found[-1] if found else None


def load(path: Path) -> dict:
    state = torch.load(path / "state.pt", weights_only=False)
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state
