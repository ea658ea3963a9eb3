"""Hostile programs against the sandbox: none escapes, each returns within its limits
with an observation that says what happened, and this (the training) process survives."""
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from turnrl.tools.sandbox import Limits, Sandbox, bwrap_path

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap not installed (.ci/run installs it)")

LIMITS = Limits(wall_s=3.0, cpu_s=2, memory_mb=256, file_mb=4, disk_mb=8, processes=16, output_bytes=8192)
REPO = Path(__file__).resolve().parents[2]
SECRET = "turnrl-secret-4f1c"
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Things on the host a program must not reach: a loopback server, files, a secret."""
    d = tmp_path_factory.mktemp("host")
    (d / "secret.txt").write_text(SECRET)
    home_secret = Path.home() / ".turnrl-sandbox-test-secret"
    home_secret.write_text(SECRET)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    hits = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    os.environ["TURNRL_TEST_SECRET"] = SECRET
    yield {"dir": d, "port": srv.getsockname()[1], "hits": hits, "pid": os.getpid(), "home_secret": home_secret}
    stop.set()
    srv.close()
    home_secret.unlink()
    os.environ.pop("TURNRL_TEST_SECRET", None)


def fails_with(*words):
    def check(r, host):
        text = r.observation(4000)
        assert r.exit_code != 0 and any(w in text for w in words), text
    return check


def stopped(r, host):
    assert r.timed_out or r.signal is not None or r.output_exceeded, r
    assert r.observation().strip()


def no_secret(r, host):
    assert SECRET not in r.stdout + r.stderr


def host_file_absent(name):
    def check(r, host):
        assert not (host["dir"] / name).exists() and not (REPO / name).exists()
    return check


# name -> (program, check); {port}, {dir}, {pid}, {repo}, {home_secret} are filled in
CASES = {
    "fork_bomb": ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", stopped),
    "subprocess_bomb": ("import subprocess, sys\nps = []\nwhile True:\n    try: ps.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))\n    except OSError: pass",
                        stopped),
    "multiprocessing_bomb": ("import multiprocessing as m, time\nif __name__ == '__main__':\n    ps = []\n    for i in range(10000):\n        try:\n            p = m.Process(target=time.sleep, args=(60,)); p.start(); ps.append(p)\n        except Exception: pass\n    time.sleep(60)", stopped),
    "thread_bomb": ("import threading, time\nn = 0\nwhile True:\n    try:\n        threading.Thread(target=time.sleep, args=(60,), daemon=True).start(); n += 1\n    except RuntimeError:\n        print('threads', n); break",
                    lambda r, h: None if "threads" in r.stdout and int(r.stdout.split()[1]) <= 16 else pytest.fail(r.stdout)),
    "memory_bomb": ("x = bytearray(10 ** 10)", fails_with("MemoryError")),
    "memory_bomb_gradual": ("x = []\nwhile True:\n    x.append(bytearray(10 ** 6))", fails_with("MemoryError")),
    "infinite_loop": ("while True: pass", stopped),
    "sleep_forever": ("import time\ntime.sleep(10 ** 6)", stopped),
    "ignore_sigterm": ("import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\ntime.sleep(10 ** 6)", stopped),
    "cpu_in_children": ("import os\nfor i in range(8):\n    if os.fork() == 0:\n        while True: pass\nwhile True: pass", stopped),
    "daemonize_and_linger": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '987654'])\n    os._exit(0)\nprint('parent done')",
                             lambda r, h: None),  # checked after the run: no 'sleep 987654' left
    "connect_host_loopback_server": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
                                     lambda r, h: (fails_with("Connection refused", "unreachable")(r, h), h["hits"] == [] or pytest.fail("reached the host"))),
    "connect_external": ("import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)", fails_with("unreachable", "Network")),
    "udp_send": ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))", fails_with("unreachable", "Network")),
    "dns_lookup": ("import socket\nsocket.getaddrinfo('pypi.org', 443)", fails_with("gaierror", "Temporary failure", "Name or service")),
    "http_request": ("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)", fails_with("URLError", "refused")),
    "list_interfaces": ("import socket\nprint(sorted(n for _, n in socket.if_nameindex()))", lambda r, h: None if r.stdout.strip() in ("['lo']", "[]") else pytest.fail(r.stdout)),
    "write_etc": ("open('/etc/turnrl-pwned', 'w').write('x')", fails_with("Read-only", "Permission denied", "No such file")),
    "fill_root": ("i = 0\nwhile True:\n    open(f'/f{{i}}', 'wb').write(b'0' * (3 << 20)); i += 1", fails_with("Read-only", "Permission denied")),
    "write_usr": ("open('/usr/turnrl-pwned', 'w').write('x')", fails_with("Read-only", "Permission denied")),
    "write_host_tmp_dir": ("open('{dir}/pwned.txt', 'w').write('x')", host_file_absent("pwned.txt")),
    "write_repo": ("open('{repo}/pwned.txt', 'w').write('x')", host_file_absent("pwned.txt")),
    "rm_rf_root": ("import os\nos.system('rm -rf / 2>/dev/null')\nprint('done')", lambda r, h: Path("/usr/bin/python3").exists() or pytest.fail("gone")),
    "read_host_file": ("print(open('{dir}/secret.txt').read())", fails_with("No such file", "Permission denied")),
    "read_home_secret": ("print(open('{home_secret}').read())", fails_with("No such file", "Permission denied")),
    "read_ssh_keys": ("import glob\nprint(glob.glob('/root/.ssh/*') + glob.glob('/home/*/.ssh/*'))", lambda r, h: None if r.stdout.strip() == "[]" else pytest.fail(r.stdout)),
    "read_model_cache": ("import os\nprint(os.listdir(os.path.expanduser('~/.cache')))", fails_with("No such file")),
    "read_etc_shadow": ("print(open('/etc/shadow').read())", fails_with("No such file", "Permission denied")),
    "read_env_secrets": ("import os\nprint(dict(os.environ))", no_secret),
    "read_proc_1_environ": ("print(open('/proc/1/environ', 'rb').read())", no_secret),
    "read_parent_environ": ("print(open('/proc/{pid}/environ', 'rb').read())", fails_with("No such file")),
    "kill_parent": ("import os, signal\nos.kill({pid}, signal.SIGKILL)", fails_with("ProcessLookupError", "No such process")),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('still here')", lambda r, h: None),
    "kill_own_group": ("import os, signal\nos.killpg(0, signal.SIGKILL)", stopped),
    "ptrace_parent": ("import ctypes\nlibc = ctypes.CDLL(None)\nprint('ptrace', libc.ptrace(16, {pid}, 0, 0))", lambda r, h: None if "ptrace -1" in r.stdout else pytest.fail(r.stdout)),
    "ptrace_init": ("import ctypes\nlibc = ctypes.CDLL(None)\nprint('ptrace', libc.ptrace(16, 1, 0, 0))", lambda r, h: None if "ptrace -1" in r.stdout else pytest.fail(r.stdout)),
    "process_vm_readv_init": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(8)\n"
                              "iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)\nremote = (ctypes.c_void_p * 2)(0x400000, 8)\n"
                              "print('read', libc.process_vm_readv(1, iov, 1, remote, 1, 0), os.strerror(ctypes.get_errno()))",
                              lambda r, h: None if "read -1 Operation not permitted" in r.stdout else pytest.fail(r.stdout)),
    "setuid_root": ("import os\nos.setuid(0)", fails_with("PermissionError", "Operation not permitted", "Invalid argument")),
    "mount_tmpfs": ("import os\nrc = os.system('mount -t tmpfs none /usr 2>&1')\nprint('rc', rc)\nprint(os.path.exists('/usr/bin/python3'))", lambda r, h: None if "True" in r.stdout else pytest.fail(r.stdout)),
    "chroot": ("import os\nos.chroot('/tmp')", fails_with("PermissionError", "Operation not permitted")),
    "new_user_namespace": ("import os\nprint(os.system('unshare -r true 2>/dev/null'))", lambda r, h: None if r.stdout.strip() != "0" else pytest.fail("nested userns")),
    "huge_stdout": ("while True: print('x' * 1000)", lambda r, h: (r.output_exceeded or pytest.fail(str(r)), len(r.stdout) <= 8192 or pytest.fail("kept too much"))),
    "huge_stderr": ("import sys\nwhile True: sys.stderr.write('e' * 1000)", lambda r, h: r.output_exceeded or pytest.fail(str(r))),
    "huge_single_line": ("import sys\nsys.stdout.write('y' * 10 ** 8)", lambda r, h: len(r.stdout) <= 8192 or pytest.fail("kept too much")),
    "file_size_bomb": ("open('big', 'wb').write(b'0' * (64 << 20))", fails_with("File too large")),
    "disk_fill": ("i = 0\nwhile True:\n    open(f'f{{i}}', 'wb').write(b'0' * (3 << 20)); i += 1", fails_with("No space left", "File too large")),
    "tmp_fill": ("i = 0\nwhile True:\n    open(f'/tmp/f{{i}}', 'wb').write(b'0' * (3 << 20)); i += 1", fails_with("No space left")),
    "fill_dev_shm": ("i = 0\nwhile True:\n    open(f'/dev/shm/f{{i}}', 'wb').write(b'0' * (3 << 20)); i += 1", fails_with("No space left")),
    "write_dev": ("open('/dev/turnrl-pwned', 'w').write('x')", fails_with("Read-only")),
    "many_empty_files": ("i = 0\nwhile True:\n    open(f'f{{i}}', 'w').close(); i += 1",
                         fails_with("No space left") if AS_ROOT else lambda r, h: None),  # nr_inodes needs root
    "open_many_files": ("fs = [open('/dev/null') for _ in range(10000)]", fails_with("Too many open files")),
    "segfault": ("import ctypes\nctypes.string_at(0)", lambda r, h: r.signal == 11 or pytest.fail(str(r))),
    "abort": ("import os\nos.abort()", lambda r, h: r.signal == 6 or pytest.fail(str(r))),
    "deep_recursion": ("import sys\nsys.setrecursionlimit(10 ** 7)\ndef f(n): return f(n + 1)\nf(0)", lambda r, h: r.exit_code != 0 or pytest.fail(str(r))),
    "raw_devices": ("import os\nprint(sorted(os.listdir('/dev')))\nopen('/dev/mem', 'rb')", fails_with("No such file")),
    "shell_escape": ("import os\nos.execv('/bin/sh', ['sh', '-c', 'cat /etc/passwd; cat {dir}/secret.txt; echo $TURNRL_TEST_SECRET'])", no_secret),
    "import_project": ("import turnrl", fails_with("ModuleNotFoundError")),
    "null_bytes_in_code": ("x = 1\x00\nprint('after')", lambda r, h: None),
    "invalid_utf8_output": ("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')", lambda r, h: "ok" in r.stdout or pytest.fail(str(r))),
    "stdin_read": ("print(input())", fails_with("EOFError")),
}


def run_case(sb, name, host):
    code, check = CASES[name]
    code = code.format(port=host["port"], dir=host["dir"], pid=host["pid"], repo=REPO, home_secret=host["home_secret"])
    t0 = time.monotonic()
    r = sb.run_python(code)
    return name, r, time.monotonic() - t0, check


def test_at_least_forty_hostile_programs():
    assert len(CASES) >= 40


def test_hostile_programs_are_contained(host):
    sb = Sandbox(LIMITS, isolation="bwrap")
    with ThreadPoolExecutor(4) as pool:  # several at once, as a rollout runs them
        results = list(pool.map(lambda n: run_case(sb, n, host), CASES))
    failures = []
    for name, r, wall, check in results:
        try:
            assert wall <= LIMITS.wall_s + 2.0, f"took {wall:.1f}s"
            assert r.observation().strip(), "empty observation"
            check(r, host)
        except BaseException as e:  # noqa: BLE001 - collect every case's failure
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)
    # nothing outlives its run, and we are still here
    time.sleep(0.5)
    lingering = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if b"987654" in (p / "cmdline").read_bytes():
                    lingering.append(p.name)
            except OSError:
                pass
    assert lingering == []
    assert os.environ["TURNRL_TEST_SECRET"] == SECRET and host["hits"] == []


def test_normal_programs_work_and_see_only_their_own_files():
    sb = Sandbox(LIMITS, isolation="bwrap")
    r = sb.run_python("import math, os\nopen('out.txt', 'w').write('42')\nprint(math.factorial(10), open('out.txt').read(), os.getcwd())")
    assert r.ok and r.stdout.split() == ["3628800", "42", "/sandbox"]
    again = sb.run_python("import os\nprint(sorted(os.listdir('.')))")  # a fresh directory every run
    assert again.stdout.strip() == "['main.py']"


def test_observation_says_why_a_run_ended():
    sb = Sandbox(Limits(wall_s=1.0, cpu_s=5), isolation="bwrap")
    assert sb.run_python("import time\ntime.sleep(5)").observation() == "[time limit exceeded: the program was stopped]"
    assert sb.run_python("import sys\nprint('partial')\nsys.exit(3)").observation() == "partial\n[exit code 3]"
    long = sb.run_python("print('a' * 3000)").observation(max_chars=100)
    assert long.startswith("a" * 50) and "characters cut" in long


def test_rlimits_fallback_warns_loudly(monkeypatch):
    import turnrl.tools.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)  # a machine without bubblewrap
    monkeypatch.setattr(Sandbox, "_warned", False)
    with pytest.warns(RuntimeWarning, match="WITHOUT network or file-system isolation"):
        sb = Sandbox(Limits(wall_s=2, cpu_s=1, memory_mb=256))
    assert sb.run_python("print(6 * 7)").stdout.strip() == "42"
    assert sb.run_python("while True: pass").signal is not None  # rlimits still stop it
    with pytest.raises(RuntimeError, match="bubblewrap is not installed"):
        Sandbox(isolation="bwrap")


# --- what the audit found: each program below got past an earlier version ----------------------------

# Attaches to pid 1 of the run's PID namespace (bubblewrap's init, same uid), makes it clear
# its parent-death signal, then becomes 'sleep 876543' holding stdout open.
PTRACE_PID_1 = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs".split()]
if libc.ptrace(16, 1, None, None) != 0:  # PTRACE_ATTACH
    print("attach failed", ctypes.get_errno(), flush=True)
else:
    os.waitpid(1, 0x40000000)
    saved, r = Regs(), Regs()
    libc.ptrace(12, 1, None, ctypes.byref(saved))  # GETREGS
    ctypes.memmove(ctypes.byref(r), ctypes.byref(saved), ctypes.sizeof(r))
    r.rip, r.rax, r.rdi, r.rsi, r.orig_rax = saved.rip - 2, 157, 1, 0, (1 << 64) - 1  # prctl(PR_SET_PDEATHSIG, 0)
    libc.ptrace(13, 1, None, ctypes.byref(r))
    libc.ptrace(9, 1, None, None)  # SINGLESTEP over the syscall instruction
    os.waitpid(1, 0x40000000)
    libc.ptrace(13, 1, None, ctypes.byref(saved))
    libc.ptrace(17, 1, None, None)  # DETACH
    print("pid 1 no longer dies with its parent", flush=True)
os.execv("/bin/sleep", ["sleep", "876543"])
'''


def _pids_with(marker: bytes) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def _run_bounded(sb, code, within_s):
    """sb.run_python(code) in a thread; None if it has not returned within ``within_s``."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", sb.run_python(code)), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(within_s)
    return out.get("r"), time.monotonic() - t0


def _kill_left_over(marker: bytes):
    """Clean up after a failing run, so one failure does not leave processes behind."""
    left = _pids_with(marker)
    for pid in left:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(ppid, 9)
        except (OSError, ValueError, IndexError):
            pass
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return left


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the attack program is written for x86-64")
def test_a_program_that_ptraces_pid_1_is_stopped_at_its_wall_time():
    sb = Sandbox(Limits(wall_s=2.0, cpu_s=2), isolation="bwrap")
    r, wall = _run_bounded(sb, PTRACE_PID_1, 8.0)
    left = _kill_left_over(b"876543")
    assert r is not None, f"execute blocked for {wall:.1f} s"
    assert wall <= 2.0 + 1.5 and r.timed_out, (wall, r)
    assert left == [], "the program outlived its run"
    assert r.stdout == "attach failed 1\n"  # EPERM: the run may not trace anything


@pytest.mark.skipif(not AS_ROOT, reason="killing a run's escaped daemon needs its own uid (root) or a cgroup")
def test_a_daemon_holding_stdout_does_not_block_the_caller():
    # without bubblewrap a double-forked daemon leaves the process group; it keeps stdout open
    sb = Sandbox(Limits(wall_s=3.0, cpu_s=2), isolation="rlimits")
    code = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        os.execv('/bin/sleep', ['sleep', '876544'])\n    os._exit(0)\nprint('parent done')")
    r, wall = _run_bounded(sb, code, 8.0)
    left = _kill_left_over(b"876544")
    assert r is not None, f"execute blocked for {wall:.1f} s"
    assert wall < 1.5 and r.stdout == "parent done\n" and r.exit_code == 0, (wall, r)
    assert left == []


def test_output_printed_before_a_timeout_is_kept():
    sb = Sandbox(Limits(wall_s=1.0, cpu_s=5), isolation="bwrap")
    r = sb.run_python("import sys\nprint('partial')\nsys.stderr.write('warn\\n')\nwhile True: pass")
    assert r.timed_out and r.stdout == "partial\n" and r.stderr == "warn\n"
    assert r.observation() == "partial\nwarn\n[time limit exceeded: the program was stopped]"


def test_dev_is_read_only_and_dev_shm_is_capped():
    sb = Sandbox(Limits(wall_s=5.0, disk_mb=8), isolation="bwrap")
    r = sb.run_python("import os\nopen('/dev/null', 'w').write('fine')\n"
                      "for path, n in (('/dev/x', 1), ('/dev/shm/x', 12 << 20)):\n"
                      "    try: open(path, 'wb').write(b'0' * n); print(path, 'written')\n"
                      "    except OSError as e: print(path, e.errno)")
    assert r.stdout.split("\n")[:2] == ["/dev/x 30", "/dev/shm/x 28"], r  # EROFS, ENOSPC (8 MiB cap)


@pytest.mark.skipif(not AS_ROOT, reason="tmpfs nr_inodes needs a mount made as root")
def test_file_count_is_capped_in_every_writable_directory():
    sb = Sandbox(Limits(wall_s=10.0, max_files=500), isolation="bwrap")
    r = sb.run_python("for d in ('/sandbox', '/tmp', '/dev/shm'):\n    n = 0\n    try:\n"
                      "        while n < 20000: open(f'{d}/f{n}', 'w').close(); n += 1\n"
                      "    except OSError as e: print(d, e.errno, n)")
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [(d, e) for d, e, _ in rows] == [("/sandbox", "28"), ("/tmp", "28"), ("/dev/shm", "28")], r
    # 500 inodes per tmpfs: the root directory takes one, /sandbox/main.py (a mount point) another
    assert all(480 <= int(n) <= 499 for _, _, n in rows), rows


def test_memory_is_limited_for_the_run_as_a_whole():
    sb = Sandbox(Limits(wall_s=10.0, cpu_s=5, memory_mb=256, processes=16), isolation="bwrap")
    if sb.cgroup is None:
        pytest.skip("no writable cgroup here: memory is limited per process only")
    # 3 children x 200 MiB, each under the 256 MiB per-process limit, 600 MiB together
    code = ("import os, time\nfor i in range(3):\n    if os.fork() == 0:\n"
            "        x = b'1' * (200 << 20)\n        print('child holds 200 MiB', flush=True)\n"
            "        time.sleep(2)\n        os._exit(0)\nfor i in range(3): os.wait()\nprint('parent done')")
    r = sb.run_python(code)
    held = r.stdout.count("child holds 200 MiB")
    assert held <= 1 and r.memory_exceeded, r  # two children at once would be 400 MiB
    assert "[memory limit exceeded" in r.observation()


@pytest.mark.skipif(not AS_ROOT, reason="runs switch to uids of their own only as root")
def test_two_turnrl_processes_never_share_a_uid():
    start = "from turnrl.tools.sandbox import Limits, Sandbox\nsb = Sandbox(Limits(wall_s={w}, cpu_s=6), isolation='bwrap')\n"
    bomb = start.format(w=6.0) + ("print('ready', flush=True)\n"
                                  "sb.run_python('import os\\nwhile True:\\n    try: os.fork()\\n    except OSError: pass')\n")
    harmless = start.format(w=4.0) + "for _ in range(3): print(repr(sb.run_python('print(42)').observation()))\n"
    other = subprocess.Popen([sys.executable, "-c", bomb], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert other.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the fork bomb is now at its process limit
        # a second process, fresh like the first: it starts from the same slots
        out = subprocess.run([sys.executable, "-c", harmless], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert out.stdout.splitlines() == ["'42'"] * 3, out.stdout + out.stderr
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not AS_ROOT, reason="uid slots exist only as root")
def test_back_to_back_runs_on_one_slot_can_always_fork():
    """RLIMIT_NPROC counts the uid's dying processes too: a slot is handed on only when the
    previous run's processes are gone (before, about 1 run in 10 failed with 'bwrap: Can't
    fork for pid 1: Resource temporarily unavailable')."""
    sb = Sandbox(Limits(wall_s=5.0, processes=4), isolation="bwrap")
    code = "import os\npid = os.fork()\nif pid == 0: os._exit(0)\nos.wait()\nprint('ok')"
    results = [sb.run_python(code) for _ in range(25)]
    assert [r.stdout for r in results] == ["ok\n"] * 25, [r.stderr for r in results if r.stdout != "ok\n"][:1]


@pytest.mark.skipif(not AS_ROOT, reason="the run's own pid namespace is made as root")
def test_a_run_dies_with_the_process_that_started_it():
    """kill -9 of the caller (a training run killed mid-step) leaves nothing of the run behind."""
    marker = "987651"  # becomes 'sleep 987651' inside the run
    caller = subprocess.Popen([sys.executable, "-c", (
        "from turnrl.tools.sandbox import Limits, Sandbox\n"
        f"Sandbox(Limits(wall_s=60, cpu_s=60)).run_python(\"import os\\nos.execv('/bin/sleep', ['sleep', '{marker}'])\")")],
        cwd=REPO)
    deadline = time.time() + 20
    while not _pids_with(marker.encode()) and time.time() < deadline:
        time.sleep(0.1)
    assert _pids_with(marker.encode()), "the run never started"
    caller.kill()
    caller.wait()
    deadline = time.time() + 5
    while _pids_with(marker.encode()) and time.time() < deadline:
        time.sleep(0.1)
    left = _pids_with(marker.encode())
    _kill_left_over(marker.encode())
    assert not left, f"processes of the run outlived their caller: {left}"
