"""Mounting an image's root filesystem read-only, in the caller's private mount namespace.

Three ways, best first (the order Apptainer and SingularityCE use):
1. root: the kernel's squashfs over a loop device set up at the partition's offset, with
   LO_FLAGS_AUTOCLEAR so the loop device goes away with the last mount;
2. anyone: squashfuse_ll serving the partition in place (``-o offset=N``: no copy). We open
   /dev/fuse and mount it ourselves (``fd=N``), then hand the fd to squashfuse_ll as
   ``/dev/fd/N``: the mount exists before the server starts, so no polling for readiness, and
   the server dies with the container (PR_SET_PDEATHSIG) so nothing is left running;
3. extraction with unsquashfs into a per-user cache, reused while the image is unchanged.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections import namedtuple

from hpcbind.errors import HpcbindError, note
from hpcbind.host.conventions import file_identity_key, user_cache_dir
from hpcbind.image.source import ImageSource
from hpcbind.runtime import linux

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: dev, inode, rdevice (u64 x3), offset, sizelimit (u64), number,
# encrypt_type, encrypt_key_size, flags (u32 x4), file_name[64], crypt_name[64],
# encrypt_key[32], init[2] (u64)
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")

_PINNED = "/proc/self/fd/"
_FUSE_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV


class RootfsOptions(namedtuple("RootfsOptions", "squashfuse kernel_squashfs extract_fallback "
                                "cache_dir level", defaults=("squashfuse_ll", True, True, "", 1))):
    """kernel_squashfs: as root, use a loop device; cache_dir: for the extraction fallback;
    level: how much to say (``errors.message_level``)."""

    __slots__ = ()


def open_image(image: ImageSource) -> int:
    """An fd on the image, taken before the session tmpfs may hide its path (/tmp/x.sif).

    From then on the image is reached as /proc/self/fd/N. The fd is close-on-exec: the
    user's program never inherits it (only the FUSE server does, explicitly).
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if not image.is_squashfs else 0)
    return os.open(image.path, flags | os.O_CLOEXEC)


def pin_server(options: RootfsOptions, covered: str) -> RootfsOptions:
    """The FUSE server as a descriptor when it is installed under ``covered`` (a user's
    build, the tests' copy under /tmp), which the session's tmpfs hides before the server is
    run. Only then: a program run by descriptor is named by its number in /proc."""
    path = _which(options.squashfuse)
    if path is None or not path.startswith(covered.rstrip("/") + "/"):
        return options
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return options
    return options._replace(squashfuse=f"{_PINNED}{fd}")


def mount_image(image: ImageSource, image_fd: int, target: str, options: RootfsOptions,
                writable: bool = False) -> str:
    """Mount ``image`` (open as ``image_fd``) read-only at ``target``; returns how.
    writable: a sandbox directory bound read-write (``--writable``)."""
    ref = f"/proc/self/fd/{image_fd}"
    if not image.is_squashfs:
        linux.mount(ref, target, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT
                    | (0 if writable else linux.MS_RDONLY)
                    | linux.MS_NOSUID | linux.MS_NODEV | linux.locked_flags(target))
        return "bind"
    failures = []
    if os.getuid() == 0 and options.kernel_squashfs:
        try:
            _mount_loop(image, image_fd, target)
            return "loop"
        except OSError as err:
            failures.append(f"loop: {err.strerror}")
    squashfuse = _which(options.squashfuse)
    if squashfuse:
        try:
            _mount_squashfuse(squashfuse, image, image_fd, target)
            return "squashfuse"
        except OSError as err:
            failures.append(f"squashfuse: {err.strerror}")
    else:
        failures.append(f"{options.squashfuse} not found")
    if options.extract_fallback and _which("unsquashfs"):
        rootfs = extract(image, image_fd, options.cache_dir, options.level)
        linux.mount(rootfs, target, None, linux.MS_BIND | linux.MS_REC)
        return "extracted"
    raise HpcbindError(f"can't mount {image.path} ({'; '.join(failures)})",
                       "install squashfuse and fuse3 (apt-get install squashfuse fuse3)")


def _which(name: str) -> str | None:
    # shutil.which's job; shutil with its imports costs ~2.5 ms on every rank
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _mount_loop(image: ImageSource, image_fd: int, target: str) -> None:
    mount_loop(image_fd, image.offset, image.size, image.path, target, "squashfs", _FUSE_FLAGS)


def mount_loop(fd: int, offset: int, size: int, name: str, target: str, fstype: str,
               flags: int) -> None:
    """Mount what ``fd`` holds from ``offset`` (``size`` bytes, 0: to the end) through a loop
    device; read-only unless ``flags`` lacks MS_RDONLY. The device is freed by the kernel
    when its mount goes away (LO_FLAGS_AUTOCLEAR)."""
    read_only = bool(flags & linux.MS_RDONLY)
    with open("/dev/loop-control", "rb") as ctl:
        number = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
    loop_path = f"/dev/loop{number}"
    loop_fd = os.open(loop_path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    try:
        fcntl.ioctl(loop_fd, _LOOP_SET_FD, fd)
        info = _LOOP_INFO64.pack(0, 0, 0, offset, size, number, 0, 0,
                                 _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0),
                                 os.fsencode(name)[:63], b"", b"", 0, 0)
        try:
            fcntl.ioctl(loop_fd, _LOOP_SET_STATUS64, info)
            linux.mount(loop_path, target, fstype, flags)
        except OSError:
            fcntl.ioctl(loop_fd, _LOOP_CLR_FD, 0)
            raise
    finally:
        # AUTOCLEAR frees the device when the mount (the last user) goes away
        os.close(loop_fd)


def _mount_squashfuse(squashfuse: str, image: ImageSource, image_fd: int, target: str) -> None:
    fuse_fd = linux.mount_fuse("squashfuse", target, "fuse.squashfuse", _FUSE_FLAGS)
    try:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _exec_fuse_server(parent, squashfuse, image, image_fd, fuse_fd)
    finally:
        os.close(fuse_fd)
    # The first request blocks until the server answers: then it has loaded its libraries
    # and opened the image, so the caller may pivot_root away from the host root.
    try:
        os.stat(target)
    except OSError as err:
        os.waitpid(pid, os.WNOHANG)
        linux.umount2(target, linux.MNT_DETACH)
        raise OSError(err.errno, f"squashfuse_ll could not serve {image.path}") from None


def _exec_fuse_server(parent: int, squashfuse: str, image: ImageSource, image_fd: int,
                      fuse_fd: int) -> None:
    try:
        linux.die_with(parent)
        os.set_inheritable(image_fd, True)
        os.set_inheritable(fuse_fd, True)
        name = squashfuse
        if squashfuse.startswith(_PINNED):  # a script's interpreter reopens it by that name
            os.set_inheritable(int(squashfuse[len(_PINNED):]), True)
            name = os.readlink(squashfuse)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.execv(squashfuse, [name, "-f", "-o", f"offset={image.offset}",
                              f"/proc/self/fd/{image_fd}", f"/dev/fd/{fuse_fd}"])
    finally:
        os._exit(127)


def extract(image: ImageSource, image_fd: int, cache_dir: str, level: int = 1) -> str:
    """The image unpacked under the cache, keyed by file identity; reused when present."""
    st = os.fstat(image_fd)
    base = cache_dir or os.path.join(user_cache_dir(), "rootfs")
    rootfs = os.path.join(base, file_identity_key(st, image.offset))
    if os.path.isdir(rootfs):
        return rootfs
    os.makedirs(base, exist_ok=True)
    import shutil
    import subprocess

    # One extraction of an image at a time: concurrent launches wait for it and reuse it
    # (unlocked, each unpacked its own copy and all but the first failed to rename it). The
    # lock dies with its holder, so a partial tree found under it is a killed extraction's.
    with open(f"{rootfs}.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(rootfs):
            return rootfs
        partial = f"{rootfs}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        offset = ["-o", str(image.offset)] if image.offset else []
        parent = os.getpid()
        source = f"/proc/self/fd/{image_fd}"
        devices = [] if os.getuid() == 0 else _device_nodes(offset, source, image_fd, parent)
        cmd = ["unsquashfs", "-no-progress", "-quiet", "-no-xattrs", "-d", partial, *offset]
        if devices:  # only root may create them (debootstrap images have /dev/zero, ...)
            cmd += ["-exclude-file", f"{partial}.devices"]
            with open(f"{partial}.devices", "w") as f:
                f.write("".join(f"{d}\n" for d in devices))
        result = subprocess.run(cmd + [source], capture_output=True,
                                text=True, pass_fds=(image_fd,),
                                preexec_fn=lambda: linux.die_with(parent))
        if devices:
            os.unlink(f"{partial}.devices")
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise HpcbindError(f"can't extract {image.path}: {result.stderr.strip()[-200:]}",
                               "install squashfuse and fuse3 to mount the image in place")
        os.rename(partial, rootfs)
    if devices:
        note(level, f"unpacking {image.path}: skipped {len(devices)} device node(s) (/"
             f"{', /'.join(devices[:3])}{', ...' if len(devices) > 3 else ''}): only root "
             "creates them; the container's /dev is the host's")
    return rootfs


def _device_nodes(offset: list[str], source: str, image_fd: int, parent: int) -> list[str]:
    """Paths (relative to the image's root) of its character and block devices."""
    import subprocess

    listing = subprocess.run(["unsquashfs", "-lls", *offset, source], capture_output=True,
                             text=True, pass_fds=(image_fd,),
                             preexec_fn=lambda: linux.die_with(parent)).stdout
    return [line.split(" squashfs-root/", 1)[1] for line in listing.splitlines()
            if line[:1] in ("c", "b") and " squashfs-root/" in line]

