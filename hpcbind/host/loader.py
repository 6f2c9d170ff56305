"""What a root's dynamic loader would find: its ld.so.conf directories and the libraries it
ships, for the host (``--mpi=host``, the launcher's MPI) and for images (preflight facts)
alike."""

from __future__ import annotations

import fnmatch
import glob
import posixpath
import re
from collections.abc import Callable, Iterable

from hpcbind.host.ldcache import LdEntry, native_abi, read_ldcache
from hpcbind.hostroot import HostRoot

LD_SO_CONF = "/etc/ld.so.conf"
# glibc's trusted directories across its ports (SYSTEM_DIRS), plus the multiarch directories
# Debian and Ubuntu build into their loader (an image without ld.so.cache or ld.so.conf.d
# still finds /usr/lib/x86_64-linux-gnu/libmpich.so.12: tests/test_launcher.py's images).
_DEBIAN_TRIPLETS = ("x86_64-linux-gnu", "aarch64-linux-gnu", "powerpc64le-linux-gnu",
                    "s390x-linux-gnu", "riscv64-linux-gnu", "i386-linux-gnu")
DEFAULT_LIBRARY_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib",
                        *(f"{p}/{t}" for t in _DEBIAN_TRIPLETS for p in ("/lib", "/usr/lib")))
SHARED_OBJECT = re.compile(r"^[^/]+\.so(\.\d+)*$")
_MAX_INCLUDE_DEPTH = 8  # ld.so.conf include loops in a hostile image must end


def shipped_libraries(root: HostRoot) -> dict[str, str]:
    """soname -> path, as the root's loader would find each: its ld.so.cache first, in cache
    order, then the files of its library directories (an image need not have run ldconfig)."""
    libraries: dict[str, str] = {}
    for entry in _native_entries(read_ldcache(root)):
        libraries.setdefault(entry.soname, entry.path)
    for directory in library_dirs(root):
        for name in root.listdir(directory):
            if SHARED_OBJECT.match(name):
                libraries.setdefault(name, posixpath.join(directory, name))
    return dict(sorted(libraries.items()))


def library_dirs(root: HostRoot) -> tuple[str, ...]:
    """The directories of the root's ld.so.conf (includes followed), then glibc's defaults."""
    dirs = [*_conf_dirs(root, LD_SO_CONF, 0), *DEFAULT_LIBRARY_DIRS]
    return tuple(dict.fromkeys(posixpath.normpath(d) for d in dirs))


def _native_entries(entries: tuple[LdEntry, ...]) -> list[LdEntry]:
    """Cache entries of the root's main ABI: a multilib cache also lists i386 copies under the
    same sonames, and glibc-hwcaps variants are the same library built for newer CPUs."""
    native = native_abi(entries)
    return [e for e in entries if not e.hwcap_subdir
            and (native is None or not e.elf_class or (e.elf_class, e.machine) == native)]


def _conf_dirs(root: HostRoot, conf: str, depth: int) -> list[str]:
    """Directories listed by ld.so.conf-format file ``conf``, as ldconfig reads them."""
    text = root.read_text(conf)
    if text is None or depth > _MAX_INCLUDE_DEPTH:
        return []
    dirs: list[str] = []
    for line in text.splitlines():
        body = line.split("#", 1)[0]
        words = body.split()
        if not words or words[0] == "hwcap":
            continue
        if words[0] == "include":
            for pattern in words[1:]:
                absolute = posixpath.join(posixpath.dirname(conf), pattern)  # absolute stays absolute
                for included in glob_in_root(root, absolute):
                    dirs.extend(_conf_dirs(root, included, depth + 1))
            continue
        # directories may also be separated by ':' or ',', and carry an old "=TYPE" suffix
        dirs.extend(d.split("=", 1)[0] for d in re.split(r"[:,\s]+", body) if d.startswith("/"))
    return dirs


def glob_in_root(root: HostRoot, pattern: str, names: Callable[[str], Iterable[str]] | None = None) -> list[str]:
    """Host paths matching ``pattern`` (wildcards in any part), each link followed inside the
    root. ``names`` lists a directory; the root's own listing by default."""
    listing = names or root.listdir
    paths = ["/"]
    for part in pattern.strip("/").split("/"):
        dirs = [root.resolve(p) for p in paths]
        if glob.has_magic(part):
            paths = [posixpath.join(d, n) for d in dirs for n in sorted(listing(d)) if fnmatch.fnmatch(n, part)]
        else:
            paths = [posixpath.join(d, part) for d in dirs]
    return paths
