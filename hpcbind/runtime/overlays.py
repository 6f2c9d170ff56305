"""``--overlay``: directories and ext3 images stacked over the image, Apptainer's layout.

A layer is a directory or an ext3 image file (``hpcrun overlay create``); its files are in
``upper/``, and a writable layer's overlayfs work directory is ``work/`` beside it (a plain
directory without ``upper/`` is used whole when read-only). Read-only layers are lower
layers above the image; the one writable layer is the upper layer, so the root's writes
persist in it.

How each is mounted, in the caller's private mount namespace:
- a directory: bound in from a descriptor opened before the session tmpfs hides /tmp;
- an ext3 image as root: the kernel's ext4 driver over a loop device;
- an ext3 image as a plain user: ``fuse2fs`` (libfuse 2, which mounts only with
  CAP_SYS_ADMIN: it gets it, as an ambient capability of the user namespace, and nothing
  outside it). Read-only layers are then lower layers of the kernel's overlayfs as any
  other; a writable one cannot be its upper layer (fuse2fs's directory entries carry no
  file type: "upper fs needs to support d_type"), so the root is then ``fuse-overlayfs``
  (Apptainer's way for the same case), mounted by ``mount_fuse_root``.

Locks: a writable layer is locked exclusively and a read-only one shared (``flock`` on the
directory or file) for the container's life, so a second container writing the same
overlay is refused, never allowed to corrupt it. A small keeper process holds the locks
and exits when the container's process does; the program inherits no descriptor. An image
keeps the locked descriptor as what it is mounted from (the loop device, fuse2fs), so the
lock also lasts until its filesystem is written back.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import stat
import struct
from collections import namedtuple

from hpcbind.errors import HpcbindError
from hpcbind.runtime import linux

DIRECTORY, IMAGE = "directory", "ext3 image"
_EXT_MAGIC_OFFSET = 1024 + 56  # the superblock's s_magic
_EXT_MAGIC = 0xEF53
_CAP_SYS_ADMIN = 21
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2
_CAPABILITY_VERSION_3 = 0x20080522
LOCK_WAIT_S = 2.0


class Layer(namedtuple("Layer", "overlay fd kind")):
    """An opened (and locked) ``--overlay``: its Overlay, a descriptor on it, its kind."""

    __slots__ = ()

    def describe(self) -> str:
        mode = "read-only" if self.overlay.read_only else "writable"
        return f"{mode} overlay {self.overlay.path} ({self.kind})"


def lock_layers(overlays) -> list[Layer]:
    """Open and lock every overlay, on the host, before any namespace exists."""
    layers = [_open(o) for o in overlays]
    for layer in layers:
        _lock(layer)
    if layers:
        _keep_locks([layer.fd for layer in layers])
    return layers


def reopen(layers: list[Layer]) -> list[Layer]:
    """The directory layers opened again by path once in the container's mount namespace
    (the kernel binds only from a mount of the caller's namespace), before the session tmpfs
    hides /tmp; each must still be the directory that was locked. Images are mounted from
    the locked descriptor itself."""
    reopened = []
    for layer in layers:
        if layer.kind == IMAGE:
            reopened.append(layer)
            continue
        fd = os.open(layer.overlay.path, os.O_RDONLY | os.O_CLOEXEC)
        locked, now = os.fstat(layer.fd), os.fstat(fd)
        if (locked.st_dev, locked.st_ino) != (now.st_dev, now.st_ino):
            raise HpcbindError(f"--overlay {layer.overlay.path} was replaced while hpcrun "
                               "started", "run it again")
        reopened.append(layer._replace(fd=fd))
    return reopened


def _open(overlay) -> Layer:
    writable = not overlay.read_only
    try:
        fd = os.open(overlay.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and writable:
            os.close(fd)  # the kernel's loop device needs it open for writing
            fd = os.open(overlay.path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise HpcbindError(f"can't open --overlay {overlay.path}: {err.strerror}",
                           "give a directory, or an ext3 image made by 'hpcrun overlay "
                           "create', that you can " + ("write" if writable else "read")) from None
    if stat.S_ISDIR(st.st_mode):
        return Layer(overlay, fd, DIRECTORY)
    if stat.S_ISREG(st.st_mode) and _is_ext(fd):
        return Layer(overlay, fd, IMAGE)
    os.close(fd)
    raise HpcbindError(f"--overlay {overlay.path} is neither a directory nor an ext3 image",
                       "create one with 'hpcrun overlay create --size MB FILE', or give a "
                       "directory")


def _is_ext(fd: int) -> bool:
    magic = os.pread(fd, 2, _EXT_MAGIC_OFFSET)
    return len(magic) == 2 and struct.unpack("<H", magic)[0] == _EXT_MAGIC


def _lock(layer: Layer) -> None:
    """Taken at once, or within LOCK_WAIT_S: the server of a container that has just exited
    may still be writing an image back, and holds its lock until it has."""
    import time

    how = fcntl.LOCK_SH if layer.overlay.read_only else fcntl.LOCK_EX
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(layer.fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            user = "another container writing it" if layer.overlay.read_only else \
                "another container"
            raise HpcbindError(f"--overlay {layer.overlay.path} is in use by {user}",
                               "wait until that container exits, give each container its "
                               "own writable overlay, or share it read-only (PATH:ro)") from None


def _keep_locks(fds: list[int]) -> None:
    """A grandchild that holds ``fds`` (their locks) until this process, or the program it
    becomes, exits. Not a child: the program must not find an unknown child to wait for."""
    watched = os.pidfd_open(os.getpid())
    middle = os.fork()
    if middle:
        os.close(watched)
        os.waitpid(middle, 0)
        return
    try:
        if os.fork() == 0:
            keep = set(fds) | {watched}
            for entry in os.listdir("/proc/self/fd"):
                if int(entry) not in keep and int(entry) > 2:
                    try:
                        os.close(int(entry))
                    except OSError:
                        pass
            devnull = os.open(os.devnull, os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(devnull, std)
            import select

            select.select([watched], [], [])  # readable once the watched process has exited
    finally:
        os._exit(0)


def mount_layers(layers: list[Layer], session: str) -> tuple[list[str], tuple[str, str] | None]:
    """Mount each layer under ``session``, but a ``fuse_upper`` one: (the read-only layers'
    directories, lowest first; the writable layer's (upper, work) or None)."""
    lowers: list[str] = []
    persistent = None
    served_apart = fuse_upper(layers)
    for i, layer in enumerate(layers):
        if layer is served_apart:
            continue
        where = layer_directory(session, i)
        os.mkdir(where, 0o755)
        if layer.kind == DIRECTORY:
            linux.mount(f"/proc/self/fd/{layer.fd}", where, None, linux.MS_BIND | linux.MS_REC)
        else:
            _mount_image(layer, where)
        if layer.overlay.read_only:
            files = f"{where}/upper"
            lowers.append(files if os.path.isdir(files) else where)
        else:
            persistent = _upper_and_work(layer, where)
    return lowers, persistent


def layer_directory(session: str, index: int) -> str:
    """Where the ``index``-th layer is mounted."""
    return f"{session}/overlay{index}"


def _upper_and_work(layer: Layer, where: str) -> tuple[str, str]:
    persistent = (f"{where}/upper", f"{where}/work")
    for d in persistent:
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
        except OSError as err:
            raise HpcbindError(f"can't create {d.replace(where, layer.overlay.path)}: "
                               f"{err.strerror}", "give a writable overlay you own, or "
                               "use it read-only (PATH:ro)") from None
    return persistent


def _mount_image(layer: Layer, where: str) -> None:
    read_only = layer.overlay.read_only
    flags = linux.MS_NOSUID | linux.MS_NODEV | (linux.MS_RDONLY if read_only else 0)
    if os.getuid() == 0:
        from hpcbind.runtime.rootfs import mount_loop

        try:
            mount_loop(layer.fd, 0, 0, layer.overlay.path, where, "ext4", flags)
        except OSError as err:
            raise HpcbindError(f"can't mount --overlay {layer.overlay.path}: {err.strerror}",
                               "check the image with e2fsck -f") from None
        return
    fuse2fs = _needed("fuse2fs", layer.overlay.path)
    # Asked to stop, fuse2fs writes its bitmaps and superblock back (killed, it would leave
    # the image to e2fsck); it holds the layer's lock until then.
    _serve(where, [fuse2fs, f"/proc/self/fd/{layer.fd}", where, "-f", "-o",
                   f"{'ro' if read_only else 'rw'},nosuid,nodev"], layer.fd,
           signal.SIGKILL if read_only else signal.SIGTERM)


def fuse_upper(layers: list[Layer]) -> Layer | None:
    """The writable layer if the kernel's overlayfs cannot write through it: an ext3 image
    a plain user mounts with fuse2fs."""
    if os.getuid() == 0:
        return None
    return next((layer for layer in layers
                 if layer.kind == IMAGE and not layer.overlay.read_only), None)


def mount_fuse_root(root: str, lowerdir: str, layer: Layer, where: str) -> None:
    """``fuse-overlayfs`` at ``root``: ``lowerdir`` under the ext3 image ``layer``, which
    fuse2fs mounts at ``where``.

    The root is mounted here on a /dev/fuse descriptor, and both servers run in a copy of
    this mount namespace. In this one, the pivot_roots that follow would move their root
    and working directory to the session tmpfs, then to the merged root itself: fuse-overlayfs
    reads its layers through /proc/self/fd paths, and fuse2fs, asked to stop, aborted
    before writing back for want of libgcc_s in a root whose server had gone. Files are shown
    as the caller's (squash_to_uid/gid): an image file owned by an id the user namespace
    cannot map has no owner fuse-overlayfs can report, and every execve through it failed
    with "Operation not supported".
    """
    fuse_overlayfs = _needed("fuse-overlayfs", layer.overlay.path)
    os.mkdir(where, 0o755)
    uid, gid = os.getuid(), os.getgid()
    fuse_fd = linux.mount_fuse("hpcbind", root, "fuse.fuse-overlayfs",
                               linux.MS_NOSUID | linux.MS_NODEV, "default_permissions")
    failure_r, failure_w = os.pipe2(os.O_CLOEXEC)
    try:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                linux.die_with(parent)
                linux.unshare(linux.CLONE_NEWNS)
                _mount_image(layer, where)  # fuse2fs, a child of fuse-overlayfs to be
                upper, work = _upper_and_work(layer, where)
                os.set_inheritable(fuse_fd, True)
                _quiet()
                os.execv(fuse_overlayfs, [
                    fuse_overlayfs, "-f", "-o", f"lowerdir={lowerdir},upperdir={upper},"
                    f"workdir={work},squash_to_uid={uid},squash_to_gid={gid}",
                    f"/dev/fd/{fuse_fd}"])
            except HpcbindError as err:
                os.write(failure_w, f"{err.what}\n{err.fix}".encode())
            finally:
                os._exit(127)
    finally:
        os.close(fuse_fd)
        os.close(failure_w)
    with os.fdopen(failure_r, "rb") as pipe:  # closed by the exec of fuse-overlayfs
        failure = pipe.read().decode()
    if failure:
        os.waitpid(pid, 0)
        raise HpcbindError(*failure.split("\n", 1))
    try:
        os.stat(root)  # answered once fuse-overlayfs runs
    except OSError as err:
        os.waitpid(pid, os.WNOHANG)
        raise HpcbindError(f"fuse-overlayfs could not serve the writable --overlay "
                           f"{layer.overlay.path}: {err.strerror}",
                           "check the image with e2fsck -f") from None


def _needed(program: str, overlay: str) -> str:
    path = _which(program)
    if path is None:
        raise HpcbindError(f"can't mount the ext3 --overlay {overlay} as a plain user: "
                           f"{program} not found", f"install it (apt-get install {program}), "
                           "or use a directory as the overlay")
    return path


def _serve(mountpoint: str, argv: list[str], keep_fd: int, death_signal: int) -> None:
    """Start a libfuse server that mounts ``mountpoint`` itself and wait for the mount; the
    server is sent ``death_signal`` when this process dies, as the squashfs server is."""
    import time

    before = os.stat(mountpoint).st_dev
    pid = _start(keep_fd, death_signal, argv)
    deadline = time.monotonic() + 10
    while os.stat(mountpoint).st_dev == before:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            raise HpcbindError(f"{os.path.basename(argv[0])} could not mount the overlay "
                               f"(exit status {os.waitstatus_to_exitcode(status) if done else '?'})",
                               "check the image with e2fsck -f, and that /dev/fuse is "
                               "usable (apt-get install fuse3)")
        time.sleep(0.01)


def _start(keep_fd: int, death_signal: int, argv: list[str]) -> int:
    """Fork and exec a FUSE server that keeps ``keep_fd`` and mounts for itself (with an
    ambient CAP_SYS_ADMIN); it is sent ``death_signal`` when this process dies."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        linux.die_with(parent, death_signal)
        os.set_inheritable(keep_fd, True)
        _raise_ambient_sys_admin()
        _quiet()  # fuse2fs warns of the journal on every mount
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(devnull, std)


def _raise_ambient_sys_admin() -> None:
    """Keep CAP_SYS_ADMIN of this user namespace across execve (an ambient capability), so a
    libfuse 2 server can mount in the container's mount namespace; it confers nothing on
    the host, whose namespace this one is a child of."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[2] |= 1 << _CAP_SYS_ADMIN  # inheritable, first 32 capabilities
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    linux.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_SYS_ADMIN)


def _which(name: str) -> str | None:
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep) + ["/usr/sbin",
                                                                             "/sbin"]:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None
