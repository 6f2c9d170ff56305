"""Facts about an image, read without mounting it (discovery never mounts).

What the preflight checks compare the host's libraries against: the image's architecture, its
glibc and libstdc++ (the symbol versions their ELF files define), the sonames it ships (its own
``/etc/ld.so.cache`` and library directories: what its loader would find before a bound host
copy), its MPI and PMIx libraries, the symbol versions of its ``libibverbs.so.1`` (a host verbs
provider loads only against its own rdma-core's ``IBVERBS_PRIVATE_<N>``), and the ROCm and CUDA
toolkit versions it was built for.

``image_facts`` reads a directory (a sandbox, or a root mounted by someone else) through a
``HostRoot``. ``image_facts_from_squashfs`` reads a squashfs, or a SIF's squashfs partition at
``offset``, with Debian's ``unsquashfs``: it lists the image once, lays the listing out as a
skeleton in a temporary directory (its symlinks, and empty stand-ins for the shared objects
of its library directories, so the library scan sees every name), extracts only the
handful of files the facts are read from, and runs ``image_facts`` on that. A whole image is
never unpacked.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpcbind.errors import HpcbindError
from hpcbind.host.conventions import natural_key, temp_dir
from hpcbind.host.elf import ElfInfo, elf_info, max_version
from hpcbind.host.loader import (LD_SO_CONF, SHARED_OBJECT, glob_in_root, library_dirs,
                                 shipped_libraries)
from hpcbind.hostroot import HostRoot
from hpcbind.image import facts_cache
from hpcbind.image.source import ImageSource
from hpcbind.mpi.abi import MPI_SONAMES, PMIX_SONAMES, MpiLib, PmixLib, find_mpi, find_pmix

ROCM_VERSION_FILE = "/opt/rocm/.info/version"
# Side-by-side installs without the /opt/rocm link: the newest one counts.
ROCM_VERSION_FILES = "/opt/rocm-*/.info/version"
CUDA_VERSION_JSON = "/usr/local/cuda/version.json"  # CUDA >= 11
CUDA_VERSION_TXT = "/usr/local/cuda/version.txt"  # CUDA <= 10: "CUDA Version 10.2.89"
SHELL = "/bin/sh"  # the architecture of an image without glibc (busybox, static builds)

# Libraries whose ELF files the facts are read from.
PROBED_LIBRARIES = ("libc.so.6", "libstdc++.so.6", "libibverbs.so.1", *MPI_SONAMES, *PMIX_SONAMES)
# Other files they are read from; wildcards as in a shell glob.
PROBED_FILES = ("/etc/ld.so.cache", LD_SO_CONF, "/etc/ld.so.conf.d/*", ROCM_VERSION_FILE, ROCM_VERSION_FILES,
                CUDA_VERSION_JSON, CUDA_VERSION_TXT, SHELL)

_CUDA_TXT = re.compile(r"CUDA Version (\d[\w.]*)")


@dataclass(frozen=True)
class ImageFacts:
    machine: str = ""  # ELF e_machine of its libc (or /bin/sh): "EM_X86_64"; "" if no ELF found
    elf_class: str = ""  # "ELFCLASS64"
    glibc: tuple[int, ...] | None = None  # highest GLIBC_x.y its libc.so.6 defines; None: no glibc
    glibcxx: tuple[int, ...] | None = None  # highest GLIBCXX_x.y.z of its libstdc++.so.6
    libraries: Mapping[str, str] = field(default_factory=dict)  # soname -> path its loader finds
    mpi: tuple[MpiLib, ...] = ()  # every MPI library it ships, by soname
    pmix: PmixLib | None = None
    ibverbs_defs: tuple[str, ...] = ()  # version definitions of its libibverbs.so.1
    rocm_version: str = ""  # "6.0.2-115", from /opt/rocm/.info/version
    cuda_version: str = ""  # "12.2.0", from /usr/local/cuda/version.json


def image_facts(root: HostRoot) -> ImageFacts:
    """The facts of the image whose root directory is ``root``."""
    libraries = shipped_libraries(root)
    libc = _library_elf(root, libraries, "libc.so.6")
    libstdcxx = _library_elf(root, libraries, "libstdc++.so.6")
    ibverbs = _library_elf(root, libraries, "libibverbs.so.1")
    binary = libc or elf_info(root.real(root.resolve(SHELL)))
    return ImageFacts(
        machine=binary.machine if binary else "",
        elf_class=binary.elf_class if binary else "",
        glibc=max_version(libc.version_defs, "GLIBC") if libc else None,
        glibcxx=max_version(libstdcxx.version_defs, "GLIBCXX") if libstdcxx else None,
        libraries=libraries,
        mpi=find_mpi(root, libraries),
        pmix=find_pmix(root, libraries),
        ibverbs_defs=ibverbs.version_defs if ibverbs else (),
        rocm_version=_rocm_version(root),
        cuda_version=_cuda_version(root),
    )


def cached_image_facts(path: Path, offset: int = 0, cache_dir: Path | None = None) -> ImageFacts:
    """``image_facts_from_squashfs``, remembered per image file (``facts_cache``).

    Reading an image's facts runs unsquashfs (a second or more for a large image) and every
    ``hpcrun mpirun`` needs them before the first rank starts. They depend on the file's
    content only.
    """
    cache = str(cache_dir) if cache_dir else None
    data = facts_cache.read(str(path), offset, cache)
    if data is not None:
        try:
            return facts_from_dict(data)
        except (ValueError, KeyError, TypeError):
            pass
    facts = image_facts_from_squashfs(path, offset)
    facts_cache.write(str(path), offset, facts_to_dict(facts), cache)
    return facts


def facts_to_dict(facts: ImageFacts) -> dict:
    from dataclasses import asdict

    return asdict(facts)


def facts_from_dict(data: dict) -> ImageFacts:
    from hpcbind.mpi.abi import Family

    def version(value):
        return tuple(value) if value is not None else None

    return ImageFacts(
        machine=data["machine"], elf_class=data["elf_class"], glibc=version(data["glibc"]),
        glibcxx=version(data["glibcxx"]), libraries=dict(data["libraries"]),
        mpi=tuple(MpiLib(**{**m, "family": Family(m["family"]), "abi": tuple(m["abi"])})
                  for m in data["mpi"]),
        pmix=PmixLib(**{**data["pmix"], "abi": tuple(data["pmix"]["abi"])}) if data["pmix"] else None,
        ibverbs_defs=tuple(data["ibverbs_defs"]), rocm_version=data["rocm_version"],
        cuda_version=data["cuda_version"])


def located_image_facts(image: ImageSource) -> ImageFacts:
    """The facts of an image ``hpcbind.image.source.locate`` found: a sandbox is read in
    place, a squashfs (bare or a SIF's partition) through the cache."""
    if image.is_squashfs:
        return cached_image_facts(Path(image.path), image.offset)
    return image_facts(HostRoot(Path(image.path)))


def image_facts_from_squashfs(path: Path, offset: int = 0) -> ImageFacts:
    """The facts of the squashfs image ``path`` (a SIF's partition when ``offset`` > 0)."""
    import tempfile  # here: a launch whose image facts are cached never needs it

    listing = _list(path, offset)
    with tempfile.TemporaryDirectory(prefix="hpcbind-facts-", dir=temp_dir()) as tmp:
        dest = Path(tmp)
        root = HostRoot(dest)
        _skeleton(dest, listing)
        # the loader configuration first: it says where the libraries are
        _extract(path, offset, dest, _probed_files(root, listing))
        _stand_ins(dest, root, listing)
        _extract(path, offset, dest, _probed_libraries(root, listing))
        return image_facts(root)


# --- directory images --------------------------------------------------------------------


def _library_elf(root: HostRoot, libraries: Mapping[str, str], soname: str) -> ElfInfo | None:
    path = libraries.get(soname)
    return elf_info(root.real(root.resolve(path))) if path else None


def _rocm_version(root: HostRoot) -> str:
    linked = root.read_value(ROCM_VERSION_FILE)
    if linked is not None:
        return linked
    versions = (root.read_value(path) for path in glob_in_root(root, ROCM_VERSION_FILES))
    return max((v for v in versions if v), key=natural_key, default="")


def _cuda_version(root: HostRoot) -> str:
    text = root.read_text(CUDA_VERSION_JSON)
    if text is not None:
        try:
            return str(json.loads(text)["cuda"]["version"])
        except (ValueError, KeyError, TypeError):
            return ""
    match = _CUDA_TXT.search(root.read_text(CUDA_VERSION_TXT) or "")
    return match.group(1) if match else ""


# --- squashfs images ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """An image's tree from ``unsquashfs -lln``: paths are image-absolute."""

    links: Mapping[str, str]  # path -> target
    files: frozenset[str]  # regular files
    children: Mapping[str, tuple[str, ...]]  # directory -> entry names

    def names(self, directory: str) -> tuple[str, ...]:
        return self.children.get(directory, ())


# "drwxr-xr-x 0/0    240 2021-08-02 19:09 squashfs-root/bin": device entries carry
# "major, minor" where the others carry a size.
_LISTING_LINE = re.compile(r"^([-dlcbps])\S{9}\s+\S+\s+(?:\d+,\s*)?\d+\s+\S+\s+\S+\s(squashfs-root.*)$")
_LISTING_ROOT = "squashfs-root"


def _unsquashfs(args: list[str], path: Path, offset: int) -> str:
    import subprocess

    command = ["unsquashfs", "-n", "-o", str(offset), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
    except FileNotFoundError:
        raise HpcbindError("unsquashfs not found", "install squashfs-tools (apt-get install squashfs-tools)") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
        raise HpcbindError(
            f"cannot read a squashfs in {path} at offset {offset}: {lines[-1]}",
            "check that it is a squashfs image or a SIF, and give the partition's offset (hpcrun sif list)",
        )
    return done.stdout


def _list(path: Path, offset: int) -> _Listing:
    links: dict[str, str] = {}
    files: set[str] = set()
    children: dict[str, list[str]] = {}
    for line in _unsquashfs(["-lln", str(path)], path, offset).splitlines():
        match = _LISTING_LINE.match(line)
        if match is None or match.group(2) == _LISTING_ROOT:
            continue
        kind, name = match.group(1), match.group(2)[len(_LISTING_ROOT):]
        if kind == "l":
            name, _, target = name.partition(" -> ")
            links[name] = target
        elif kind == "-":
            files.add(name)
        children.setdefault(posixpath.dirname(name), []).append(posixpath.basename(name))
    return _Listing(links, frozenset(files), {d: tuple(n) for d, n in children.items()})


def _skeleton(dest: Path, listing: _Listing) -> None:
    """The image's symlinks, so that ``HostRoot`` resolves paths as in the image itself.
    Directories are made only where a file goes: a path's lookup needs its links, not its
    empty directories, and a large image has thousands of them."""
    for link, target in listing.links.items():
        path = dest / link.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)


def _stand_ins(dest: Path, root: HostRoot, listing: _Listing) -> None:
    """Empty files for the shared objects of the library directories, so the library scan
    sees every name there (links to them are already in the skeleton)."""
    for directory in dict.fromkeys(root.resolve(d) for d in library_dirs(root)):
        for name in listing.names(directory):
            path = posixpath.join(directory, name)
            if SHARED_OBJECT.match(name) and path in listing.files:
                (dest / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                (dest / path.lstrip("/")).touch()


def _probed_files(root: HostRoot, listing: _Listing) -> list[str]:
    # names from the listing: the skeleton has no stand-ins for most regular files
    paths = (root.resolve(p) for pattern in PROBED_FILES for p in glob_in_root(root, pattern, listing.names))
    return [p for p in paths if p in listing.files]


def _probed_libraries(root: HostRoot, listing: _Listing) -> list[str]:
    libraries = shipped_libraries(root)
    paths = (root.resolve(path) for name, path in libraries.items()
             if any(fnmatch.fnmatch(name, p) for p in PROBED_LIBRARIES))
    return [p for p in paths if p in listing.files]


def _extract(path: Path, offset: int, dest: Path, files: list[str]) -> None:
    if files:
        # -no-xattrs: an unprivileged user cannot set security.* attributes, and none are read
        _unsquashfs(["-q", "-f", "-no-xattrs", "-d", str(dest), str(path), *sorted(set(files))], path, offset)
