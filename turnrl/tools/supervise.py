"""Feed a sandboxed program its stdin and read its output until the run ends, in the calling
thread (a selector over non-blocking pipes, no reader threads), so a program that hangs,
holds its pipes open or prints forever costs at most its wall clock plus ``GRACE_S``.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

GRACE_S = 0.5  # after a kill: how long to drain the pipes before closing them regardless


@dataclass
class Output:
    stdout: bytes
    stderr: bytes
    timed_out: bool  # still running at the deadline
    exceeded: bool  # printed more than four times the cap


def supervise(proc: subprocess.Popen, stdin: str, deadline: float, output_bytes: int,
              kill: Callable[[], None]) -> Output:
    """Write ``stdin`` and read both pipes as data arrives, keeping the first ``output_bytes``
    of the two together. When the program ends, ``deadline`` (``time.monotonic``) passes or
    its output passes four times the cap, call ``kill`` (after a normal end too: nothing
    outlives its run), drain the pipes for at most ``GRACE_S``, reap and close."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin.encode())
    win = proc.stdin.fileno()
    if pending:
        os.set_blocking(win, False)
        sel.register(win, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    total, timed_out, exceeded = 0, False, False
    stop_at = None  # set once the run is over or stopped: drain the pipes until then
    while True:
        if stop_at is None:
            timed_out = time.monotonic() >= deadline and proc.poll() is None
            if timed_out or exceeded or proc.poll() is not None:
                kill()
                stop_at = time.monotonic() + GRACE_S
        if stop_at is not None and (not sel.get_map() or time.monotonic() >= stop_at):
            break
        wait = max(0.0, min((stop_at or deadline) - time.monotonic(), 0.05 if sel.get_map() else 0.005))
        for key, _ in sel.select(wait) if sel.get_map() else (time.sleep(wait) or ()):
            if key.fd == win:
                pending = _write(proc, sel, win, pending)
                continue
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(key.fd)
                continue
            total += len(chunk)
            room = output_bytes - sum(len(b) for b in bufs.values())
            if room > 0:
                bufs[key.fd] += chunk[:room]
            exceeded = exceeded or total > 4 * output_bytes
    sel.close()
    _reap(proc)
    return Output(bytes(bufs[out_fd]), bytes(bufs[err_fd]), timed_out, exceeded)


def _write(proc: subprocess.Popen, sel: selectors.BaseSelector, fd: int, pending: memoryview) -> memoryview:
    """Write what the stdin pipe takes now; close it when all is written or the reader is gone."""
    try:
        pending = pending[os.write(fd, pending[:65536]):]
    except BlockingIOError:
        return pending
    except OSError:
        pending = pending[:0]
    if not pending:
        sel.unregister(fd)
        proc.stdin.close()
    return pending


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:  # cannot happen short of an unkillable process; do not wait on it
        pass
    for s in (proc.stdin, proc.stdout, proc.stderr):
        try:
            s.close()
        except OSError:
            pass
