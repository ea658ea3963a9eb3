import errno
import struct

from turnrl.tools.seccomp import DENIED_SYSCALLS, seccomp_filter

ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
X86_64, AARCH64 = 0xC000003E, 0xC00000B7


def run_bpf(prog: bytes, nr: int, arch: int) -> int:
    """Classic BPF over seccomp_data (nr at offset 0, arch at 4), the four opcodes the filter uses."""
    insns = [struct.unpack("HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    data, acc, pc = {0: nr, 4: arch}, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # BPF_LD|W|ABS
            acc, pc = data[k], pc + 1
        elif code == 0x15:  # BPF_JMP|JEQ|K
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:  # BPF_JMP|JGE|K
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x06:  # BPF_RET|K
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


def test_x86_64_denies_ptrace_allows_read_and_refuses_other_abis():
    prog = seccomp_filter("x86_64")
    # 4 header + the x32 check + one compare per denied syscall + allow + EPERM, 8 bytes each
    assert len(prog) == 8 * (4 + 1 + len(DENIED_SYSCALLS) + 2)
    assert run_bpf(prog, 101, X86_64) == EPERM  # ptrace
    assert run_bpf(prog, 165, X86_64) == EPERM  # mount
    assert run_bpf(prog, 0, X86_64) == ALLOW  # read
    assert run_bpf(prog, 57, X86_64) == ALLOW  # fork
    assert run_bpf(prog, 0x40000000 + 0, X86_64) == EPERM  # x32 ABI (nr | 0x40000000): every call, read too
    assert run_bpf(prog, 0, 0x40000003) == ENOSYS  # i386 compat


def test_aarch64_uses_its_own_numbers():
    prog = seccomp_filter("aarch64")
    assert len(prog) == 8 * (4 + len(DENIED_SYSCALLS) + 2)  # no x32 check there
    assert run_bpf(prog, 117, AARCH64) == EPERM  # ptrace on aarch64
    assert run_bpf(prog, 101, AARCH64) == ALLOW  # nanosleep on aarch64 (ptrace on x86-64)
    assert run_bpf(prog, 117, X86_64) == ENOSYS


def test_unknown_architecture_gets_no_filter():
    assert seccomp_filter("riscv64") is None
