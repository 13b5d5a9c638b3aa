"""Seccomp filters for the sandboxes, built with libseccomp (pyseccomp).

`chown_filter()` (bwrap): a user namespace made without privileges maps exactly one uid and one
gid, so dpkg's fchown(fd, 0, 42) for a root:shadow file fails with EINVAL and dpkg aborts.
The filter answers chown, fchown, lchown, fchownat (and the *32 variants of 32-bit ABIs) with
SECCOMP_RET_ERRNO and errno 0: the kernel then returns 0 without running the system call, so
ownership changes succeed and do nothing. The ownership that belongs in the patch layer comes
from the packages' metadata (data.tar, dpkg-statoverride), not from the disk.

`proot_filter()` (proot): proot 5.1 (Debian 12) translates paths only for the system calls it
knows. Newer ones (statx, openat2, faccessat2, fchmodat2, execveat, io_uring, the mount API...)
would reach the host's filesystem untranslated: statx reports host files, openat2 creates
them. The filter makes them fail with ENOSYS, so glibc and programs fall back to the old calls
that proot does translate. proot's -0 fakes a chown only when the kernel says EPERM; inside a
user namespace that maps one id (ocipatch itself in an unprivileged container) the kernel says
EINVAL for an unmapped owner, so there `proot_filter(fake_chown=True)` adds the chown rules.

    python -m ocipatch.sandbox.seccomp chown|proot    # print the filter as pseudo-code
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import pyseccomp

from ocipatch.errors import SandboxError

CHOWN_SYSCALLS = ("chown", "fchown", "lchown", "fchownat", "chown32", "fchown32", "lchown32")

# Path-taking (or path-bypassing) system calls added to Linux after proot 5.1's tables.
PROOT_UNTRANSLATED = (
    "statx",
    "execveat",
    "openat2",
    "faccessat2",
    "fchmodat2",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
)
# Newer still, unknown to the libseccomp of Debian 12: numbers of the unified table (>= 424),
# the same on x86, arm, arm64, ppc, s390 and riscv.
PROOT_UNTRANSLATED_RAW = {
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}
_UNIFIED_ARCHES = {
    pyseccomp.Arch.X86_64,
    pyseccomp.Arch.X86,
    pyseccomp.Arch.AARCH64,
    pyseccomp.Arch.ARM,
    pyseccomp.Arch.PPC64LE,
    pyseccomp.Arch.PPC64,
    pyseccomp.Arch.S390X,
    pyseccomp.Arch.RISCV64,
}
# 32-bit ABIs a 64-bit kernel also runs: an i386 dpkg on an amd64 host must be covered too.
_COMPAT_ARCHES = {
    pyseccomp.Arch.X86_64: (pyseccomp.Arch.X86, pyseccomp.Arch.X32),
    pyseccomp.Arch.AARCH64: (pyseccomp.Arch.ARM,),
}


def _new_filter(*, native: bool = True, compat: bool = True) -> pyseccomp.SyscallFilter:
    f = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    # An ABI the filter does not know is let through rather than killed.
    f.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.ALLOW)
    if compat:
        for arch in _COMPAT_ARCHES.get(pyseccomp.system_arch(), ()):
            # A libseccomp without this ABI: such binaries are then simply not filtered.
            with contextlib.suppress(OSError):
                f.add_arch(arch)
    if not native:
        f.remove_arch(pyseccomp.Arch.NATIVE)
    return f


def _add_named(f: pyseccomp.SyscallFilter, action: int, names: Sequence[str]) -> None:
    for name in names:
        try:
            f.add_rule(action, name)
        except (OSError, ValueError, RuntimeError):
            # Unknown to this libseccomp: the kernel it targets cannot have it either.
            continue


def _export(f: pyseccomp.SyscallFilter) -> bytes:
    with tempfile.TemporaryFile() as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def build_chown_filter() -> pyseccomp.SyscallFilter:
    f = _new_filter()
    _add_named(f, pyseccomp.ERRNO(0), CHOWN_SYSCALLS)
    return f


def build_proot_filter(fake_chown: bool = False) -> pyseccomp.SyscallFilter:
    action = pyseccomp.ERRNO(errno.ENOSYS)
    # Raw numbers are native-ABI numbers that libseccomp cannot translate to the compat ABIs,
    # so the native ABI gets its own filter, merged with the compat one.
    f = _new_filter(compat=False)
    _add_named(f, action, PROOT_UNTRANSLATED)
    if fake_chown:
        _add_named(f, pyseccomp.ERRNO(0), CHOWN_SYSCALLS)
    if pyseccomp.system_arch() in _UNIFIED_ARCHES:
        for name, nr in PROOT_UNTRANSLATED_RAW.items():
            try:
                f.add_rule(action, name)
            except (OSError, ValueError, RuntimeError):
                f.add_rule(action, nr)
    if _COMPAT_ARCHES.get(pyseccomp.system_arch()):
        compat = _new_filter(native=False)
        _add_named(compat, action, PROOT_UNTRANSLATED)
        if fake_chown:
            _add_named(compat, pyseccomp.ERRNO(0), CHOWN_SYSCALLS)
        f.merge(compat)
    return f


@functools.cache
def chown_filter() -> bytes:
    """Classic BPF program (bytes) that turns the chown family into successful no-ops."""
    try:
        return _export(build_chown_filter())
    except (OSError, RuntimeError) as e:
        raise SandboxError(f"cannot build the seccomp filter with libseccomp: {e}") from e


@functools.cache
def proot_filter(fake_chown: bool = False) -> bytes:
    """Classic BPF program (bytes) that makes the system calls proot cannot translate ENOSYS;
    with `fake_chown`, also the chown family successful no-ops (as `chown_filter`)."""
    try:
        return _export(build_proot_filter(fake_chown))
    except (OSError, RuntimeError) as e:
        raise SandboxError(f"cannot build the seccomp filter with libseccomp: {e}") from e


def bpf_fd(program: bytes) -> int:
    """A readable fd positioned at the start of `program` (for bwrap --seccomp FD)."""
    fd = os.memfd_create("ocipatch-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def preexec_loader(program: bytes) -> Callable[[], None]:
    """A subprocess preexec_fn that installs `program` in the child before exec.

    Everything is prepared in the parent; the child only makes two prctl calls, which keeps
    the fork-without-exec window free of allocations and locks.
    """
    if len(program) % 8:
        raise SandboxError("seccomp program has a bad length")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    addr = ctypes.addressof(prog)

    def load() -> None:
        _keep = (buf, prog)  # keep the program alive as long as the closure
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, addr, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
        del _keep

    return load


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    builders = {"chown": build_chown_filter, "proot": build_proot_filter}
    if len(args) != 1 or args[0] not in builders:
        print("usage: python -m ocipatch.sandbox.seccomp chown|proot", file=sys.stderr)
        return 2
    sys.stdout.flush()
    builders[args[0]]().export_pfc(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
