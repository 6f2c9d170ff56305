"""What an IMAGE argument is, and where its root filesystem lives.

An image is a SIF file (its primary system partition), a bare squashfs file, or a sandbox
directory. The kind is read from the file's magic, never guessed from its name.
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import HpcbindError

SIF_MAGIC = b"SIF_MAGIC\0"
SQUASHFS_MAGIC = b"hsqs"


class ImageKind:
    SIF = "sif"
    SQUASHFS = "squashfs"
    DIRECTORY = "directory"


class ImageSource(namedtuple("ImageSource", "path kind offset size arch",
                             defaults=(0, 0, ""))):
    """path: host realpath; offset/size: of the squashfs in the file; arch: Go arch name from
    the SIF partition, "" when the format does not say. (A namedtuple: loaded on every rank.)"""

    __slots__ = ()

    @property
    def is_squashfs(self) -> bool:
        return self.kind != ImageKind.DIRECTORY


# Image references that exec, run and shell pull into the cache first, as Apptainer does.
REFERENCE_PREFIXES = ("docker://", "oci:", "oci-archive:", "docker-archive:")


def locate(image: str, check_arch: bool = True) -> ImageSource:
    """The image at ``image`` (a reference is pulled into the cache first); a SIF built for
    another architecture is refused unless ``check_arch`` is False (the plan reports it as a
    check, a conversion does not care)."""
    if image.startswith(REFERENCE_PREFIXES):
        from hpcbind.image.cache import cached_sif

        image = cached_sif(image)
    path = os.path.realpath(image)
    if os.path.isdir(path):
        if not any(os.path.isdir(os.path.join(path, d)) for d in ("bin", "usr", "etc")):
            raise HpcbindError(f"{image} is a directory but not a root filesystem (no bin, usr "
                               "or etc)", "give the sandbox's top directory")
        return ImageSource(path, ImageKind.DIRECTORY)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise HpcbindError(f"image {image} not found", "check the path") from None
    except OSError as err:
        raise HpcbindError(f"can't read image {image}: {err.strerror}",
                           "check its permissions") from None
    if head[32:42] == SIF_MAGIC:
        return _sif_partition(path, check_arch)
    if head[:4] == SQUASHFS_MAGIC:
        return ImageSource(path, ImageKind.SQUASHFS, 0, size)
    raise HpcbindError(f"{image} is not a SIF file, a squashfs file or a directory",
                       "build an image with 'hpcrun build'")


def _sif_partition(path: str, check_arch: bool) -> ImageSource:
    from hpcbind.image.sif import FsType, SifImage, host_arch

    with SifImage.open(path) as sif:
        part = sif.primary_partition()
    info = part.partition
    if info.fstype is not FsType.SQUASHFS:
        raise HpcbindError(
            f"{path}: the primary partition is {info.fstype.name.lower()}, hpcrun runs squashfs "
            "partitions", "rebuild or convert the image to squashfs (hpcrun build OUT.sif IN.sif)")
    host = host_arch()
    if check_arch and info.arch not in (host, "unknown", ""):
        raise HpcbindError(f"{path} is built for {info.arch}, this host is {host}",
                           f"use the image built for {host}")
    return ImageSource(path, ImageKind.SIF, part.offset, part.size, info.arch)
