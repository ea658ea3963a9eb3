"""The sandbox's seccomp filter: syscalls that reach past a run's own processes are denied.

A program cannot take over bubblewrap's init (pid 1 of the run, same uid) or any other
process (``ptrace``, ``process_vm_*``, ``pidfd_getfd``, ``kcmp``), load kernel code or
probes (``bpf``, ``perf_event_open``, modules), or touch mounts, namespaces and keyrings.
``bwrap --seccomp FD`` loads the filter from a pipe just before it execs the program.
"""
from __future__ import annotations

import errno
import platform
import struct

# Syscalls no program needs, and that can reach outside its own process: denied with EPERM.
DENIED_SYSCALLS = {  # name: (x86-64, aarch64)
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "kcmp": (312, 272), "perf_event_open": (298, 241), "bpf": (321, 280),
    "userfaultfd": (323, 282), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "acct": (163, 89), "syslog": (103, 116),
}
_AUDIT_ARCH = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}  # machine: (AUDIT_ARCH_*, column above)


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The run's seccomp filter as a classic BPF program (what ``bwrap --seccomp FD`` loads),
    or None on an architecture it does not know. Another ABI's calls (32-bit compat) get
    ENOSYS; the denied syscalls and, on x86-64, every x32 call get EPERM; everything else is
    allowed."""
    arch = _AUDIT_ARCH.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, column = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    nrs = sorted({v[column] for v in DENIED_SYSCALLS.values()})
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, enosys), (ld, 0, 0, 0)]
    checks = ([(jge, 0, 0, 0x40000000)] if column == 0 else []) + [(jeq, 0, 0, nr) for nr in nrs]
    deny_at = len(prog) + len(checks) + 1  # after the checks and the final allow
    for code, _, _, k in checks:
        prog.append((code, deny_at - len(prog) - 1, 0, k))  # jump to the EPERM return when equal
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)
