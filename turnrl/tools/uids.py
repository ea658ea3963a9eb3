"""A uid of its own for each concurrent sandbox run when turnrl runs as root.

RLIMIT_NPROC counts processes per uid and exempts root, so runs as root switch to a uid
of their own first: one run's fork bomb then exhausts only its own process limit. A lock
file per slot (``flock``) makes the uid the run's alone across every turnrl process on
the machine; a slot is handed on only once its processes are gone, since the limit counts
dying processes too.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path

UID_BASE, UID_SLOTS = 3_000_000, 256
SLOT_LOCK_DIRS = ("/run/turnrl-sandbox", "/tmp/turnrl-sandbox")

_lock = threading.Lock()
_held: dict[int, int] = {}  # slot -> fd of its flock'ed lock file, for this process


def count_processes(uid: int) -> int:
    """Processes and threads of ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid:
                    n += len(list((d / "task").iterdir()))
            except OSError:
                pass
    return n


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a run's own uid, never ours): kill(-1) sent as that uid."""
    try:
        subprocess.run(["/bin/sh", "-c", "kill -9 -1"], user=uid, group=uid, extra_groups=[], env={},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=2)
    except (OSError, subprocess.SubprocessError):
        pass


def wait_uid_clear(uid: int, timeout_s: float = 2.0) -> bool:
    """Kill and wait until ``uid`` has no process left (exited processes are reaped by init);
    False if some remain after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while count_processes(uid):
        if time.monotonic() > deadline:
            return False
        kill_uid(uid)
        time.sleep(0.01)
    return True


def _lock_dir() -> str:
    for d in SLOT_LOCK_DIRS:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            if os.stat(d).st_uid == os.geteuid() and os.access(d, os.W_OK):
                return d
        except OSError:
            pass
    raise RuntimeError(f"sandbox: none of {', '.join(SLOT_LOCK_DIRS)} is a writable directory of ours for uid slot locks")


def take_slot() -> int:
    """A uid slot (its uid: ``UID_BASE + slot``) no other run on this machine holds; waits
    while all are taken. Give it back with :func:`release_slot`."""
    lock_dir = _lock_dir()
    first = os.getpid() % UID_SLOTS  # processes start in different places of the ring
    passes = 0
    while True:
        with _lock:
            for i in range(UID_SLOTS):
                slot = (first + i) % UID_SLOTS
                if slot in _held:
                    continue
                fd = os.open(f"{lock_dir}/slot-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                if passes == 0 and count_processes(UID_BASE + slot):
                    os.close(fd)  # a process of this uid is still there (a zombie nobody reaps): another slot
                    continue
                _held[slot] = fd
                return slot
        passes += 1
        time.sleep(0.05)


def release_slot(slot: int) -> None:
    """Hand ``slot`` on once its uid's processes are gone (RLIMIT_NPROC counts every process
    of the uid, dying ones included: the next run could not fork otherwise)."""
    wait_uid_clear(UID_BASE + slot)
    with _lock:
        os.close(_held.pop(slot))  # closing the file releases its lock
