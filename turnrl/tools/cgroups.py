"""A cgroup per sandbox run: memory and processes limited for the run as a whole, and the
run killed as a whole (``cgroup.kill`` where the kernel has it, else each member).

``find_cgroup_layout()`` finds where this process can make cgroups (the sandbox asks once): cgroup v2 with
the memory and pids controllers, else (hybrid hosts) the v1 memory and pids hierarchies,
plus the controller-less v2 hierarchy for ``cgroup.kill``. None means nowhere (not root,
or ``/sys/fs/cgroup`` read-only): memory is then limited per process only.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from pathlib import Path

# A layout is a list of (kind, base directory): per run a child of each base is made.
#   "v2": cgroup v2 with memory and pids enabled; "v1-memory", "v1-pids": the v1 hierarchies;
#   "v2-kill": a v2 hierarchy without controllers (hybrid systems), used for cgroup.kill.


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _usable(base: Path) -> bool:
    """Can a child cgroup be made here? Removes children left by turnrl processes that died."""
    try:
        for d in base.glob("turnrl-*-*"):
            pid = d.name.split("-")[1]
            if pid.isdigit() and not _alive(int(pid)):
                try:
                    d.rmdir()
                except OSError:
                    pass
        probe = base / f"turnrl-{os.getpid()}-probe"
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


def _v2_base(d: Path) -> bool:
    """Make ``d`` hand memory and pids to its children, if it can."""
    try:
        if not {"memory", "pids"} <= set((d / "cgroup.controllers").read_text().split()):
            return False
        if not {"memory", "pids"} <= set((d / "cgroup.subtree_control").read_text().split()):
            (d / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError:  # e.g. a non-root cgroup with processes in it ("no internal processes")
        return False
    return _usable(d)


def find_cgroup_layout() -> list[tuple[str, Path]] | None:
    """Where this process can make a cgroup per run; None if nowhere (then memory is limited
    per process only)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    except OSError:
        return None
    mounts = []  # (fstype, mount point, root of the mount, super options)
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(r) >= 3 and r[0] in ("cgroup", "cgroup2") and len(f) >= 5:
            mounts.append((r[0], f[4], f[3], set(r[2].split(","))))

    def own_dir(fstype: str, controller: str) -> tuple[Path, Path] | None:
        for typ, point, root, opts in mounts:
            if typ == fstype and (fstype == "cgroup2" or controller in opts) and controller in own:
                path = own[controller]
                if root != "/" and path.startswith(root):
                    path = path[len(root):]
                return Path(point), Path(point) / path.lstrip("/")
        return None

    v2 = own_dir("cgroup2", "")
    if v2 is not None:
        point, d = v2
        for base in (d, d.parent) if d != point else (d,):  # our cgroup, else a sibling of it
            if base.is_relative_to(point) and _v2_base(base):
                return [("v2", base)]
    memory, pids = own_dir("cgroup", "memory"), own_dir("cgroup", "pids")
    if memory is None or not _usable(memory[1]):
        return None
    layout = [("v1-memory", memory[1])]
    if pids is not None and _usable(pids[1]):
        layout.append(("v1-pids", pids[1]))
    if v2 is not None and _usable(v2[1]):  # membership only: cgroup.kill where the kernel has it
        layout.append(("v2-kill", v2[1]))
    return layout


class RunCgroup:
    """One run's cgroup in every hierarchy of the layout: limits, membership, kill, removal."""

    _ids = itertools.count()
    _leftover: list[Path] = []  # cgroups that were still busy when their run ended
    _lock = threading.Lock()

    def __init__(self, layout: list[tuple[str, Path]], memory_bytes: int, pids: int):
        name = f"turnrl-{os.getpid()}-{next(RunCgroup._ids)}"
        settings = {"v2": [("memory.max", memory_bytes), ("memory.swap.max", 0), ("pids.max", pids)],
                    "v1-memory": [("memory.limit_in_bytes", memory_bytes), ("memory.memsw.limit_in_bytes", memory_bytes)],
                    "v1-pids": [("pids.max", pids)], "v2-kill": []}
        self.dirs: list[tuple[str, Path]] = []
        for kind, base in layout:
            d = base / name
            try:
                d.mkdir()
                self.dirs.append((kind, d))
                for file, value in settings[kind]:
                    if (d / file).exists():
                        (d / file).write_text(str(value))
            except OSError as e:
                self.remove()
                raise RuntimeError(f"sandbox cgroup {d}: {e}") from e

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for _, d in self.dirs]

    def _pids(self) -> set[int]:
        found = set()
        for _, d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill(self) -> None:
        for _, d in self.dirs:
            if (d / "cgroup.kill").exists():
                try:
                    (d / "cgroup.kill").write_text("1")
                except OSError:
                    pass
        for _ in range(100):  # v1: no cgroup.kill; pids.max bounds how many can appear
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)

    def memory_exceeded(self) -> bool:
        for kind, d in self.dirs:
            events = {"v2": "memory.events", "v1-memory": "memory.oom_control"}.get(kind)
            if events:
                try:
                    for line in (d / events).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and int(value) > 0:
                            return True
                except (OSError, ValueError):
                    pass
        return False

    def remove(self) -> None:
        """rmdir each, waiting at most 0.2 s for killed processes to leave; a cgroup still busy
        then is removed after a later run of this process instead."""
        with RunCgroup._lock:
            retry, RunCgroup._leftover = RunCgroup._leftover, []
        busy, give_up = [], time.monotonic() + 0.2
        for d in [*reversed([d for _, d in self.dirs]), *retry]:
            while True:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError:
                    if d not in retry and time.monotonic() < give_up:
                        time.sleep(0.005)
                        continue
                    busy.append(d)
                break
        self.dirs = []
        with RunCgroup._lock:
            RunCgroup._leftover += busy
