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


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only directory, ...); the
    previous checkpoint is left as it was."""


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _Writer:
    """The file as torch.save sees it, keeping the OSError that torch would hide."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def save(ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp_step_{step:06d}"
    previous = latest(ckpt_dir)
    state = {**state, "step": step, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a run killed mid-write
        tmp.mkdir()
        with open(tmp / "state.pt", "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:  # torch reports ENOSPC as "unexpected pos ...": name the real cause
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except (OSError, RuntimeError) as e:  # torch reports some write failures as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)  # a partial write must not hold the disk
        kept = f"the previous checkpoint {previous} is kept" if previous else "there is no earlier checkpoint"
        raise CheckpointError(f"checkpoint {final}: could not write it: {_why(e)}; {kept}") from None
    for old in complete(ckpt_dir)[:-keep]:
        try:
            shutil.rmtree(old)
        except OSError as e:
            raise CheckpointError(f"checkpoint {final} written, but the old {old} could not be removed: {_why(e)}") from None
    return final


def _replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``. A checkpoint of the same step already there is moved
    aside first and removed only once the new one is in place, never before."""
    if not final.exists():
        os.rename(tmp, final)
        return
    aside = final.with_name(f".old_{final.name}")
    if aside.exists():
        shutil.rmtree(aside)
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)


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
