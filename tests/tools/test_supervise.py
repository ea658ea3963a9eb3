import os
import signal
import subprocess
import sys
import time

from turnrl.tools.supervise import GRACE_S, supervise


def start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def killer(proc):
    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while a child is in it
        except ProcessLookupError:
            pass
    return kill


def test_feeds_stdin_and_keeps_both_pipes():
    proc = start("import sys\ns = sys.stdin.read()\nprint(len(s))\nprint('err', file=sys.stderr)")
    out = supervise(proc, "x" * 200_000, time.monotonic() + 10, 1000, killer(proc))  # more than a pipe holds
    assert (out.stdout, out.stderr, out.timed_out, out.exceeded) == (b"200000\n", b"err\n", False, False)
    assert proc.returncode == 0


def test_output_is_capped_and_a_flood_is_stopped():
    proc = start("import sys\nsys.stdout.write('a' * 10 + 'b' * 40)\nsys.stdout.flush()\nimport time\ntime.sleep(30)")
    t0 = time.monotonic()
    out = supervise(proc, "", t0 + 20, 10, killer(proc))  # 50 bytes > 4 x 10: stopped long before the deadline
    assert out.stdout == b"a" * 10 and out.exceeded and not out.timed_out
    assert time.monotonic() - t0 < 5 and proc.returncode == -signal.SIGKILL


def test_deadline_kills_and_keeps_what_was_printed():
    proc = start("print('before', flush=True)\nimport time\ntime.sleep(30)")
    t0 = time.monotonic()
    out = supervise(proc, "", t0 + 1.0, 1000, killer(proc))
    assert out.stdout == b"before\n" and out.timed_out and not out.exceeded
    assert 1.0 <= time.monotonic() - t0 < 1.0 + GRACE_S + 1.5


def test_a_child_holding_the_pipes_does_not_hold_the_caller():
    # the program exits at once, its child keeps stdout open: the kill after the end takes the group
    proc = start("import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                 "print(p.pid)")
    t0 = time.monotonic()
    out = supervise(proc, "", t0 + 20, 1000, killer(proc))
    assert not out.timed_out and time.monotonic() - t0 < 5
    time.sleep(0.2)
    try:  # gone, or a zombie its new parent has not reaped yet
        state = open(f"/proc/{int(out.stdout)}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")
