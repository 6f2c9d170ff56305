"""Writable overlay images: ext3 filesystems in a file, Apptainer's ``overlay create``.

The filesystem holds ``upper/`` (the files a container writes) and ``work/`` (overlayfs's
work directory), both owned by the caller, so a plain user can write through it; extra
directories (``--create-dir``) are made inside ``upper/``, owned by the caller too. Made by
``mkfs.ext3 -d`` from a staged tree: no mount, no root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from hpcbind.errors import HpcbindError

MKFS = "mkfs.ext3"
MIN_SIZE_MB = 1  # mkfs.ext3 refuses smaller filesystems


def create(path: str, size_mb: int, sparse: bool = False, create_dirs: tuple[str, ...] = ()) -> None:
    """An ext3 overlay image of ``size_mb`` MiB at ``path`` (which must not exist)."""
    if size_mb < MIN_SIZE_MB:
        raise HpcbindError(f"overlay size {size_mb} MiB is too small", "give --size 1 or more")
    for d in create_dirs:
        if not d.startswith("/") or ".." in d.split("/"):
            raise HpcbindError(f"--create-dir {d!r} is not an absolute container path",
                               "give a path such as /var/cache/app")
    mkfs = shutil.which(MKFS) or shutil.which(MKFS, path="/usr/sbin:/sbin")
    if mkfs is None:
        raise HpcbindError(f"{MKFS} not found", "install e2fsprogs (apt-get install e2fsprogs)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise HpcbindError(f"{path} already exists (adding an overlay to a SIF is not "
                           "supported)", "give a new file name, or remove it") from None
    except OSError as err:
        raise HpcbindError(f"can't create {path}: {err.strerror}",
                           "give a path in a directory you can write to") from None
    try:
        _allocate(fd, size_mb * 1024 * 1024, sparse, path)
        with tempfile.TemporaryDirectory(prefix="hpcrun-overlay-") as tree:
            for d in ("upper", "work", *(f"upper{c}" for c in create_dirs)):
                os.makedirs(os.path.join(tree, d), mode=0o755, exist_ok=True)
            # nodiscard: mkfs would otherwise punch the reserved blocks out again
            extended = f"root_owner={os.getuid()}:{os.getgid()}" + ("" if sparse else
                                                                      ",nodiscard")
            result = subprocess.run([mkfs, "-q", "-F", "-E", extended, "-d", tree, path],
                                    capture_output=True, text=True)
        if result.returncode != 0:
            raise HpcbindError(f"{MKFS} failed on {path}: {result.stderr.strip()[-200:]}",
                               "check the free space and the size")
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def _allocate(fd: int, size: int, sparse: bool, path: str) -> None:
    """The file's size: a hole (``--sparse``), or blocks reserved now, so a full disk shows
    at creation, not as a write error inside a container later."""
    try:
        if sparse:
            os.ftruncate(fd, size)
        else:
            os.posix_fallocate(fd, 0, size)
    except OSError as err:
        raise HpcbindError(f"can't allocate {size // (1024 * 1024)} MiB for {path}: "
                           f"{err.strerror}", "free space, or use --sparse") from None
