"""The few Linux system calls the runtime needs that Python's os module lacks.

Python 3.11 (Debian 12's) has no ``os.unshare``, ``mount``, ``umount2``, ``pivot_root`` or
``prctl``; these are thin ctypes wrappers over libc that raise ``OSError`` with errno, like os.
Callers turn an OSError into an ``HpcbindError`` where the user can act on it.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
SIGKILL = 9  # signal.SIGKILL, without the signal module (and its enum) on every rank's path
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38

# statvfs f_flag bits -> mount flags. In a user namespace the kernel "locks" the flags a mount
# had when it was inherited from the parent namespace: a remount must repeat them or fails
# with EPERM (mount_namespaces(7)), so a bind's remount ORs in what the source already has.
_ST_TO_MS = {
    os.ST_RDONLY: MS_RDONLY,
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217,
                   "riscv64": 41}[os.uname().machine]


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), "prctl")


def die_with(parent: int, death_signal: int = SIGKILL) -> None:
    """In a child of ``parent``: be sent ``death_signal`` when it dies, as a FUSE server,
    unsquashfs or a node's holder must not outlive a killed hpcrun; exit at once when it
    has died already, before the prctl."""
    prctl(PR_SET_PDEATHSIG, death_signal)
    if os.getppid() != parent:
        os._exit(1)


def mount_fuse(source: str, target: str, fstype: str, flags: int, options: str = "") -> int:
    """A FUSE mount at ``target``, owned by the caller, on a new /dev/fuse descriptor: the
    server answers on it (libfuse 3 takes ``/dev/fd/N`` as its mount point). Returned
    close-on-exec; the caller closes its copy once the server has one."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        mount(source, target, fstype, flags,
              f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()}"
              + (f",{options}" if options else ""))
    except OSError:
        os.close(fd)
        raise
    return fd


def locked_flags(path: str) -> int:
    """The mount flags of the filesystem holding ``path``, as MS_* bits."""
    st_flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS.items() if st_flags & st)
