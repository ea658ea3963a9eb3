import os
import subprocess
import sys
from pathlib import Path

import pytest

from turnrl.tools import uids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uid slots are taken only when turnrl runs as root")


def test_slots_are_distinct_and_counted_processes_die_with_release():
    a, b = uids.take_slot(), uids.take_slot()
    try:
        assert a != b and 0 <= a < uids.UID_SLOTS and 0 <= b < uids.UID_SLOTS
        uid = uids.UID_BASE + a
        assert uids.count_processes(uid) == 0
        # three processes of the slot's uid: the shell and its two sleeps
        p = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"], user=uid, group=uid, extra_groups=[])
        for _ in range(100):
            if uids.count_processes(uid) == 3:
                break
            subprocess.run(["sleep", "0.05"])
        assert uids.count_processes(uid) == 3
    finally:
        uids.release_slot(a)  # kills what the uid still runs, then hands the slot on
        uids.release_slot(b)
    p.wait(timeout=5)
    assert uids.count_processes(uid) == 0 and a not in uids._held and b not in uids._held


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
        assert slot == (first + 1) % uids.UID_SLOTS  # the next in the ring
        uids.release_slot(slot)
    finally:
        other.kill()
        other.wait()
