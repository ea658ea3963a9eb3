import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from turnrl.tools import uids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uid slots are taken only when turnrl runs as root")


def test_slots_are_distinct_and_a_slot_is_handed_on_with_its_uid_clear():
    a, b = uids.take_slot(), uids.take_slot()
    uid = uids.UID_BASE + a
    try:
        assert a != b and 0 <= a < uids.UID_SLOTS and 0 <= b < uids.UID_SLOTS
        assert uids.count_processes(uid) == 0
        procs = [subprocess.Popen(["sleep", "30"], user=uid, group=uid, extra_groups=[]) for _ in range(3)]
        for p in procs:  # reap each as soon as it dies, as a run's pid namespace does
            threading.Thread(target=p.wait, daemon=True).start()
        assert uids.count_processes(uid) == 3  # what RLIMIT_NPROC would count for the next run
        assert uids.wait_uid_clear(uid)  # kills them and waits until none is left
        assert uids.count_processes(uid) == 0 and all(p.returncode == -9 for p in procs)
    finally:
        uids.release_slot(a)
        uids.release_slot(b)
    assert a not in uids._held and b not in uids._held


def test_a_slot_held_by_another_process_is_skipped():
    first = os.getpid() % uids.UID_SLOTS  # where this process starts looking
    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\nfrom turnrl.tools import uids\n"
            "import fcntl, os\nfd = os.open(uids._lock_dir() + f'/slot-{int(sys.argv[2])}.lock', os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(30)")
    root = str(Path(__file__).resolve().parents[2])
    other = subprocess.Popen([sys.executable, "-c", code, root, str(first)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        slot = uids.take_slot()
        assert slot != first  # held elsewhere: skipped
        uids.release_slot(slot)
    finally:
        other.kill()
        other.wait()
