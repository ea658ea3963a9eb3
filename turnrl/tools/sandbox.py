"""Run model-written programs where they can do no harm.

Every run gets its own process tree with:

- **bubblewrap** (``bwrap``), where it is installed: new user, PID, network, IPC, UTS and
  mount namespaces (no nested user namespaces); the read-only root file system is a few read-only system directories plus a
  throw-away ``/sandbox`` working directory and ``/tmp``, both size-capped tmpfs; no
  network device at all; the process tree dies with its parent;
- rlimits: CPU seconds, address space, file size, open files, processes (counted for the
  unprivileged user the run executes as: when turnrl runs as root, each concurrent run
  switches to a uid of its own first, since root is exempt from the process limit and a
  shared uid would let one run's fork bomb starve the others), no core files;
- a wall-clock timeout that kills the whole process group;
- a scrubbed environment (only ``PATH``, ``HOME``, ``LANG`` and Python's I/O settings);
- output capped while it is read, so a program that prints forever costs nothing.

Without bubblewrap, runs fall back to rlimits, a scrubbed environment and a temporary
working directory, with a loud warning: no network or file-system isolation then.
"""
from __future__ import annotations

import os
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

# Run as root, each concurrent run gets a uid of its own from this range, so one run's
# fork bomb exhausts only its own process limit (RLIMIT_NPROC counts per uid).
UID_BASE, UID_SLOTS = 3_000_000, 256
_SYSTEM_DIRS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall clock, whole run
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU)
    memory_mb: int = 512  # address space (RLIMIT_AS)
    file_mb: int = 16  # largest file written (RLIMIT_FSIZE)
    disk_mb: int = 32  # /sandbox and /tmp tmpfs size each (bubblewrap only)
    processes: int = 16  # processes and threads (RLIMIT_NPROC, on top of what the user already runs)
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

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_exceeded

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
        if self.signal is not None and not (self.timed_out or self.output_exceeded):
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


def _count_processes(uid: int) -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid:
                    n += len(list((d / "task").iterdir()))
            except OSError:
                pass
    return n


class Sandbox:
    """``Sandbox().run_python(code)``; thread-safe, so many episodes' calls run at once."""

    _warned = False
    _slots_lock = threading.Lock()
    _free_slots = list(range(UID_SLOTS))

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
        # runs cannot read what their uid may not (e.g. a python under /root): default to the system's
        self.python = python or self._default_python()

    def _default_python(self) -> str:
        for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if Path(p).exists():
                return p
        return os.path.realpath(shutil.which("python3") or "python3")

    # -- running ---------------------------------------------------------------------
    def run_python(self, code: str, stdin: str = "") -> RunResult:
        """Run ``code`` (any string: it travels as a file, never as an argument)."""
        return self.run([self.python, "-I", "-B", "main.py"], stdin, files={"main.py": code})

    def run(self, argv: list[str], stdin: str = "", files: dict[str, str] | None = None) -> RunResult:
        """Run ``argv`` in the working directory, where ``files`` (name -> text) are put first."""
        slot = self._take_slot() if self.as_root else None
        try:
            return self._run(argv, stdin, files or {}, UID_BASE + slot if slot is not None else os.getuid())
        finally:
            if slot is not None:
                with Sandbox._slots_lock:
                    Sandbox._free_slots.append(slot)

    @classmethod
    def _take_slot(cls) -> int:
        while True:
            with cls._slots_lock:
                if cls._free_slots:
                    return cls._free_slots.pop(0)
            time.sleep(0.01)

    def _run(self, argv: list[str], stdin: str, files: dict[str, str], uid: int) -> RunResult:
        lim = self.limits
        with tempfile.TemporaryDirectory(prefix="turnrl-sbx-") as work:
            for name, text in files.items():
                if "/" in name or name.startswith("."):
                    raise ValueError(f"sandbox file name {name!r} must be a plain name")
                Path(work, name).write_text(text, encoding="utf-8", errors="surrogateescape")
                Path(work, name).chmod(0o644)
            if self.as_root:
                os.chown(work, uid, uid)
            nproc = lim.processes + (0 if self.as_root else _count_processes(uid))
            env = {"PATH": "/usr/bin:/bin", "HOME": "/sandbox", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
            if self.bwrap:
                cmd = self._bwrap_argv(argv, work, sorted(files))
                cwd = "/"
            else:
                cmd, cwd = argv, work
                env["HOME"] = work

            limits = {"cpu": f"{lim.cpu_s}:{lim.cpu_s + 1}", "as": lim.memory_mb << 20, "fsize": lim.file_mb << 20,
                      "nofile": lim.open_files, "nproc": nproc, "core": 0}
            prlimit = shutil.which("prlimit")
            extra: dict = {"user": uid, "group": uid, "extra_groups": []} if self.as_root else {}
            if prlimit:  # util-linux sets the limits and execs: no Python runs between fork and exec
                cmd = [prlimit, *(f"--{k}={v}" for k, v in limits.items()), "--", *cmd]
            else:
                extra["preexec_fn"] = lambda: _set_limits(limits)
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=env, start_new_session=True, close_fds=True, **extra)
            return self._collect(proc, stdin, t0)

    def _bwrap_argv(self, argv: list[str], work: str, files: list[str]) -> list[str]:
        lim = self.limits
        cmd = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--clearenv"]
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
        cmd += ["--proc", "/proc", "--dev", "/dev",
                "--size", str(lim.disk_mb << 20), "--tmpfs", "/tmp",
                "--size", str(lim.disk_mb << 20), "--tmpfs", "/sandbox", "--chdir", "/sandbox"]
        for name in files:  # read-only copies of the given files inside the throw-away tmpfs
            cmd += ["--ro-bind", str(Path(work, name)), f"/sandbox/{name}"]
        cmd += ["--remount-ro", "/"]  # the root tmpfs has no size cap: nothing may be written there
        for k, v in (("PATH", "/usr/bin:/bin"), ("HOME", "/sandbox"), ("LANG", "C.UTF-8"), ("PYTHONIOENCODING", "utf-8"),
                     ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")):
            cmd += ["--setenv", k, v]
        return cmd + ["--", *argv]

    def _collect(self, proc: subprocess.Popen, stdin: str, t0: float) -> RunResult:
        lim = self.limits
        bufs = {"out": bytearray(), "err": bytearray()}
        total = [0]
        exceeded = threading.Event()

        def pump(stream, key):
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                total[0] += len(chunk)
                room = lim.output_bytes - len(bufs["out"]) - len(bufs["err"])
                if room > 0:
                    bufs[key] += chunk[:room]
                if total[0] > 4 * lim.output_bytes:
                    exceeded.set()
                    break

        readers = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
        for r in readers:
            r.start()
        try:
            if stdin:
                proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except OSError:
            pass
        timed_out = False
        while proc.poll() is None:
            if exceeded.is_set():
                break
            if time.monotonic() - t0 > lim.wall_s:
                timed_out = True
                break
            time.sleep(0.01)
        if proc.poll() is None:
            self._kill(proc)
        proc.wait()
        for r in readers:
            r.join(timeout=2)
        for s in (proc.stdout, proc.stderr):
            s.close()
        code = proc.returncode
        sig = -code if code is not None and code < 0 else None
        if self.bwrap and code is not None and code > 128 and not (timed_out or exceeded.is_set()):
            sig = code - 128  # bwrap reports a child killed by a signal as 128 + signal
        return RunResult(bufs["out"].decode("utf-8", "replace"), bufs["err"].decode("utf-8", "replace"),
                         None if (timed_out or exceeded.is_set() or sig is not None) else code,
                         timed_out=timed_out, output_exceeded=exceeded.is_set(), signal=sig,
                         wall_s=time.monotonic() - t0)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session; bwrap's PID namespace dies with it
        except (ProcessLookupError, PermissionError):
            pass

