"""Run model-written programs where they can do no harm.

Every run gets its own process tree with:

- **bubblewrap** (``bwrap``), where it is installed: new user, PID, network, IPC, UTS and
  mount namespaces (no nested user namespaces); the read-only root file system is a few
  read-only system directories plus a throw-away ``/sandbox`` working directory, ``/tmp``
  and ``/dev/shm``, each a size-capped tmpfs (and, as root, capped in files: ``nr_inodes``);
  ``/dev`` itself is read-only; no network device at all; the process tree dies with its parent;
- a **seccomp** filter (x86-64, aarch64) that denies ``ptrace``, ``process_vm_*``,
  ``pidfd_getfd``, ``perf_event_open``, ``bpf``, ``io_uring``, keyrings, mounts and
  namespaces: a program cannot take over bubblewrap's init (pid 1 of the run, same uid) or
  any other process;
- **a cgroup per run** where one can be made (cgroup v2 with the memory and pids
  controllers, or the v1 memory and pids hierarchies): memory (tmpfs files included) and
  processes are limited for the run as a whole, and the run is killed as a whole;
- rlimits: CPU seconds, address space, file size, open files, processes (counted for the
  unprivileged user the run executes as: when turnrl runs as root, each concurrent run
  switches to a uid of its own first, locked per slot across processes, since root is
  exempt from the process limit and a shared uid would let one run's fork bomb starve the
  others), no core files;
- a wall-clock timeout; when it passes, when the output cap is hit, or when the program
  ends, everything left of the run is killed: its process group, its cgroup and (as root)
  every process of its uid. Output is read as it arrives, so what was printed before a
  kill is kept, and the call returns within ``wall_s`` plus a fraction of a second
  whatever the program does;
- a scrubbed environment (only ``PATH``, ``HOME``, ``LANG`` and Python's I/O settings);
- output capped while it is read, so a program that prints forever costs nothing.

The pieces live beside this file: ``seccomp.py`` (the filter), ``uids.py`` (a uid per run
as root), ``cgroups.py`` (a cgroup per run) and ``supervise.py`` (stdin, output and the
deadline).

Without bubblewrap, runs fall back to rlimits, a scrubbed environment and a temporary
working directory, with a loud warning: no network or file-system isolation then.
Without a writable cgroup (not root, or /sys/fs/cgroup read-only) memory is limited per
process only (``RLIMIT_AS``), also with a warning.
"""
from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from turnrl.tools import uids
from turnrl.tools.cgroups import RunCgroup, find_cgroup_layout
from turnrl.tools.seccomp import seccomp_filter
from turnrl.tools.supervise import supervise

_SYSTEM_DIRS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/sandbox", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}  # all a run's environment holds


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall clock, whole run
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS) and memory of the whole run, tmpfs files included (cgroup)
    file_mb: int = 16  # largest file written (RLIMIT_FSIZE)
    disk_mb: int = 32  # /sandbox, /tmp and /dev/shm tmpfs size each (bubblewrap only)
    max_files: int = 4096  # files and directories in each of those (tmpfs nr_inodes; bubblewrap as root only)
    processes: int = 16  # processes and threads (RLIMIT_NPROC, on top of what the user already runs; and the cgroup's pids.max)
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 65536  # stdout + stderr kept; the run is killed past 4x this


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None  # None when killed by the sandbox
    timed_out: bool = False
    output_exceeded: bool = False
    signal: int | None = None  # the signal that ended the program, if one did
    wall_s: float = 0.0
    memory_exceeded: bool = False  # the run's cgroup killed a process for memory

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.output_exceeded or self.memory_exceeded)

    def observation(self, max_chars: int = 1024) -> str:
        """What a model sees: output (head and tail if long) and why the run ended."""
        out = self.stdout + (("\n" if self.stdout and not self.stdout.endswith("\n") else "") + self.stderr if self.stderr else "")
        if len(out) > max_chars:
            half = max_chars // 2
            out = f"{out[:half]}\n... [{len(out) - max_chars} characters cut] ...\n{out[-half:]}"
        notes = []
        if self.timed_out:
            notes.append("time limit exceeded: the program was stopped")
        if self.output_exceeded:
            notes.append("output limit exceeded: the program was stopped")
        if self.memory_exceeded:
            notes.append("memory limit exceeded: a process of the program was killed")
        if self.signal is not None and not (self.timed_out or self.output_exceeded or self.memory_exceeded):
            name = signal.Signals(self.signal).name if self.signal in signal.Signals._value2member_map_ else str(self.signal)
            notes.append(f"the program was killed by {name}" + (" (CPU time limit)" if self.signal == signal.SIGXCPU else ""))
        elif self.exit_code not in (0, None) and not notes:
            notes.append(f"exit code {self.exit_code}")
        return (out.rstrip() + ("\n" if out.strip() else "") + "\n".join(f"[{n}]" for n in notes)).strip() or "[no output]"


def _set_limits(limits: dict) -> None:
    """Fallback without prlimit: rlimits in the child before exec."""
    names = {"cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE,
             "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}
    for k, v in limits.items():
        soft, _, hard = str(v).partition(":")
        resource.setrlimit(names[k], (int(soft), int(hard or soft)))


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


# Run as root before the program: join the run's cgroups, mount its tmpfs directories
# (inside a private mount namespace, so they vanish with the run), then exec the rest.
_LAUNCH = """n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done
n=$1; shift
while [ "$n" -gt 0 ]; do mount -t tmpfs -o "$1" tmpfs "$2" || exit 125; shift 2; n=$((n - 1)); done
exec "$@"
"""


class Sandbox:
    """``Sandbox().run_python(code)``; thread-safe, so many episodes' calls run at once."""

    _warned = False
    _cgroup_warned = False
    _seccomp_warned = False
    _layout_lock = threading.Lock()
    _layout: list | None = None
    _layout_known = False

    def __init__(self, limits: Limits = Limits(), python: str | None = None, isolation: str = "auto"):
        if isolation not in ("auto", "bwrap", "rlimits"):
            raise ValueError(f"isolation={isolation!r} is not one of 'auto', 'bwrap', 'rlimits'")
        self.limits = limits
        self.bwrap = bwrap_path() if isolation != "rlimits" else None
        if isolation == "bwrap" and self.bwrap is None:
            raise RuntimeError("isolation='bwrap' but bubblewrap is not installed (Debian: apt-get install bubblewrap)")
        if self.bwrap is None and isolation == "auto" and not Sandbox._warned:
            Sandbox._warned = True
            warnings.warn("turnrl sandbox: bubblewrap (bwrap) not found; model-written code runs with rlimits only, "
                          "WITHOUT network or file-system isolation. Install bubblewrap.", RuntimeWarning, stacklevel=2)
        self.as_root = os.geteuid() == 0
        if self.as_root:  # util-linux: switch uid, and mount the run's tmpfs directories in a mount namespace
            missing = [t for t in ("setpriv", *(("unshare", "mount") if self.bwrap else ())) if shutil.which(t) is None]
            if missing:
                raise RuntimeError(f"turnrl sandbox run as root needs {', '.join(missing)} (Debian: util-linux, mount)")
        self.seccomp = seccomp_filter() if self.bwrap else None
        if self.bwrap and self.seccomp is None and not Sandbox._seccomp_warned:
            Sandbox._seccomp_warned = True
            warnings.warn(f"turnrl sandbox: no seccomp filter for {platform.machine()}: programs may ptrace "
                          "bubblewrap's init", RuntimeWarning, stacklevel=2)
        self.cgroup = self._cgroup_layout()
        if self.cgroup is None and not Sandbox._cgroup_warned:
            Sandbox._cgroup_warned = True
            warnings.warn("turnrl sandbox: no writable cgroup (v2 with memory and pids, or v1 memory): memory is limited "
                          "per process (RLIMIT_AS), not per run" + ("" if self.as_root else ", and without bubblewrap a "
                          "process that leaves the run's process group is not killed"), RuntimeWarning, stacklevel=2)
        # runs cannot read what their uid may not (e.g. a python under /root): default to the system's
        self.python = python or self._default_python()

    @classmethod
    def _cgroup_layout(cls) -> list | None:
        with cls._layout_lock:
            if not cls._layout_known:
                cls._layout, cls._layout_known = find_cgroup_layout(), True
            return cls._layout

    def _default_python(self) -> str:
        for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if Path(p).exists():
                return p
        return os.path.realpath(shutil.which("python3") or "python3")

    # -- running ---------------------------------------------------------------------
    def run_python(self, code: str, stdin: str = "") -> RunResult:
        """Run ``code`` (any string: it travels as a file, never as an argument); unbuffered,
        so what it prints before being stopped is kept."""
        return self.run([self.python, "-I", "-u", "-B", "main.py"], stdin, files={"main.py": code})

    def run(self, argv: list[str], stdin: str = "", files: dict[str, str] | None = None) -> RunResult:
        """Run ``argv`` in the working directory, where ``files`` (name -> text) are put first."""
        slot = uids.take_slot() if self.as_root else None
        try:
            return self._run(argv, stdin, files or {}, uids.UID_BASE + slot if slot is not None else os.getuid())
        finally:
            if slot is not None:
                uids.release_slot(slot)

    def _run(self, argv: list[str], stdin: str, files: dict[str, str], uid: int) -> RunResult:
        lim = self.limits
        with tempfile.TemporaryDirectory(prefix="turnrl-sbx-") as work:
            mounts = self._workdir(work, files, uid)
            pass_fds: tuple[int, ...] = ()
            if self.bwrap and self.seccomp is not None:  # bwrap reads the filter from a pipe and loads it just before exec
                r, w = os.pipe()
                os.write(w, self.seccomp)
                os.close(w)
                pass_fds = (r,)
            cgroup = None
            try:
                env = dict(_ENV)
                if self.bwrap:
                    cmd, cwd = self._bwrap_argv(argv, work, sorted(files), pass_fds[0] if pass_fds else None, bool(mounts)), "/"
                else:
                    cmd, cwd, env["HOME"] = argv, work, work
                cmd, extra = self._with_rlimits(cmd, lim.processes + (0 if self.as_root else uids.count_processes(uid)))
                if self.cgroup is not None:
                    cgroup = RunCgroup(self.cgroup, lim.memory_mb << 20, lim.processes + 4)  # + bubblewrap's two
                cmd = self._launch_chain(cmd, uid, cgroup.procs_files if cgroup else [], mounts, pass_fds)
                t0 = time.monotonic()
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=cwd, env=env, start_new_session=True, close_fds=True, pass_fds=pass_fds,
                                        **extra)
                for fd in pass_fds:
                    os.close(fd)
                pass_fds = ()
                return self._supervise(proc, stdin, t0, cgroup, uid if self.as_root else None)
            finally:
                for fd in pass_fds:
                    os.close(fd)
                if cgroup is not None:
                    cgroup.remove()

    def _workdir(self, work: str, files: dict[str, str], uid: int) -> list[str]:
        """Put ``files`` into ``work``; as root with bubblewrap, make the run's tmpfs mount
        points there and return their (options, directory) pairs, flat, for ``_LAUNCH``."""
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"sandbox file name {name!r} must be a plain name")
            Path(work, name).write_text(text, encoding="utf-8", errors="surrogateescape")
            Path(work, name).chmod(0o644)
        mounts: list[str] = []  # mounted as root, in the run's own mount namespace
        if self.as_root:
            os.chown(work, uid, uid)
            if self.bwrap:
                lim = self.limits
                for name, mode in (("sandbox", "0755"), ("tmp", "1777"), ("shm", "1777")):
                    Path(work, f".{name}").mkdir()
                    mounts += [f"size={lim.disk_mb << 20},nr_inodes={lim.max_files},mode={mode},uid={uid},gid={uid},"
                               "nosuid,nodev", str(Path(work, f".{name}"))]
        return mounts

    def _with_rlimits(self, cmd: list[str], nproc: int) -> tuple[list[str], dict]:
        """``cmd`` under the run's rlimits, and the extra ``Popen`` arguments that need."""
        lim = self.limits
        limits = {"cpu": f"{lim.cpu_s}:{lim.cpu_s + 1}", "as": lim.memory_mb << 20, "fsize": lim.file_mb << 20,
                  "nofile": lim.open_files, "nproc": nproc, "core": 0}
        prlimit = shutil.which("prlimit")
        if prlimit:  # util-linux sets the limits and execs: no Python runs between fork and exec
            return [prlimit, *(f"--{k}={v}" for k, v in limits.items()), "--", *cmd], {}
        return cmd, {"preexec_fn": lambda: _set_limits(limits)}

    def _launch_chain(self, cmd: list[str], uid: int, procs: list[str], mounts: list[str],
                      pass_fds: tuple[int, ...]) -> list[str]:
        """What runs before ``cmd``: as root, ``setpriv`` to the run's uid; the launcher that
        joins the run's cgroups and mounts its tmpfs directories; as root, a pid namespace
        of the run's own."""
        if self.as_root:
            cmd = [shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *cmd]
        if procs or mounts:
            cmd = ["/bin/sh", "-c", _LAUNCH, "sh", str(len(procs)), *procs, str(len(mounts) // 2), *mounts, *cmd]
        if not self.as_root:
            return cmd
        # A pid namespace of the run's own, whose init is the chain below (bubblewrap in the
        # end): when it exits the kernel kills and reaps everything left in it. Without it,
        # bubblewrap's own pid 1 can outlive its parent as a zombie on a host whose init
        # reaps nothing, and the uid's process limit fills up run after run.
        ns = ["--mount", "--propagation", "private"] if mounts else []
        # The namespace's init is a root shell waiting for the chain (the program itself must
        # not be init: init ignores the kernel's SIGXCPU); its stderr and unshare's are
        # /dev/null (they report the chain's death), the chain gets the run's stderr back.
        fd = next(n for n in range(3, 10) if n not in pass_fds)  # a free one-digit fd for sh
        # setpriv --pdeathsig: unshare dies with the thread that started it, and takes the
        # namespace (bubblewrap included) with it (--kill-child): no run outlives its caller.
        return ["/bin/sh", "-c", f'exec {fd}>&2 2>/dev/null; exec "$@"', "sh",
                shutil.which("setpriv"), "--pdeathsig", "KILL", "--",
                shutil.which("unshare"), "--pid", "--fork", "--kill-child", *ns, "--",
                "/bin/sh", "-c", f'( exec "$@" 2>&{fd} {fd}>&- ); exit $?', "sh", *cmd]

    def _bwrap_argv(self, argv: list[str], work: str, files: list[str], seccomp_fd: int | None,
                    own_mounts: bool) -> list[str]:
        lim = self.limits
        cmd = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--clearenv"]
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        for d in _SYSTEM_DIRS:
            if Path(d).exists():
                cmd += ["--ro-bind", d, d]
        for name in ("bin", "lib", "lib64", "sbin"):  # merged-/usr systems: /bin -> usr/bin
            p = Path("/") / name
            if p.is_symlink():
                cmd += ["--symlink", os.readlink(p), f"/{name}"]
            elif p.is_dir():
                cmd += ["--ro-bind", str(p), f"/{name}"]
        exe = Path(argv[0])
        if not str(exe.resolve()).startswith("/usr/"):  # an interpreter outside /usr: bind its prefix
            prefix = exe.resolve().parent.parent
            cmd += ["--ro-bind", str(prefix), str(prefix)]
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        for dest, name in (("/dev/shm", "shm"), ("/tmp", "tmp"), ("/sandbox", "sandbox")):
            if own_mounts:  # tmpfs capped in size and files, mounted by the launcher
                cmd += ["--bind", str(Path(work, f".{name}")), dest]
            else:
                cmd += ["--size", str(lim.disk_mb << 20), "--tmpfs", dest]
        cmd += ["--chdir", "/sandbox"]
        for name in files:  # read-only copies of the given files inside the throw-away tmpfs
            cmd += ["--ro-bind", str(Path(work, name)), f"/sandbox/{name}"]
        # /dev (its device nodes stay usable) and the root tmpfs have no size cap: nothing may be written there
        cmd += ["--remount-ro", "/dev", "--remount-ro", "/"]
        for k, v in _ENV.items():
            cmd += ["--setenv", k, v]
        return cmd + ["--", *argv]

    def _supervise(self, proc: subprocess.Popen, stdin: str, t0: float, cgroup: RunCgroup | None,
                   uid: int | None) -> RunResult:
        """Run ``proc`` to its end under the wall clock and output cap (``supervise``), then
        say how it ended."""
        out = supervise(proc, stdin, t0 + self.limits.wall_s, self.limits.output_bytes,
                        kill=lambda: self._kill(proc, cgroup, uid))
        memory_exceeded = cgroup is not None and cgroup.memory_exceeded()
        code = proc.returncode
        stopped = out.timed_out or out.exceeded
        sig = -code if code is not None and code < 0 else None
        if (self.bwrap or self.as_root) and code is not None and code > 128 and not stopped:
            sig = code - 128  # bwrap, and unshare as root, report a child killed by a signal as 128 + signal
        return RunResult(out.stdout.decode("utf-8", "replace"), out.stderr.decode("utf-8", "replace"),
                         None if (stopped or sig is not None or code is None) else code,
                         timed_out=out.timed_out, output_exceeded=out.exceeded, signal=sig,
                         wall_s=time.monotonic() - t0, memory_exceeded=memory_exceeded)

    @staticmethod
    def _kill(proc: subprocess.Popen, cgroup: RunCgroup | None, uid: int | None) -> None:
        """Kill everything of the run: its cgroup, every process of its uid, its process group.
        As root the group leader is ``unshare``, the parent of the run's pid namespace: it is
        killed last, after it has had a moment to reap the namespace's init, so nothing is left
        as a zombie for a host init that may never reap it."""
        if cgroup is not None:
            cgroup.kill()
        if uid is not None:
            uids.kill_uid(uid)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
