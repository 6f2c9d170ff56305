"""Host libraries into the container: a library, and the host libraries it needs.

``library_part`` follows DT_NEEDED transitively from the host's ld.so.cache and binds each
file into CONTAINER_LIBDIR with its soname links, leaving out what the image must own (glibc,
the loader, the compiler runtimes). Used by the interconnect providers (verbs, UCX, libfabric,
CXI, PSM2) and by ``--mpi=host``.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpcbind.host.conventions import DEFAULT_PATH
from hpcbind.host.elf import ElfInfo, elf_info
from hpcbind.host.ldcache import native_abi, read_ldcache
from hpcbind.hostroot import HostRoot
from hpcbind.plan import (CONTAINER_BINDIR, CONTAINER_LIBDIR, Check, EnvAction, EnvOp, Link, Mount,
                          PlanPart, Provenance, Rejected, Status)

# What the container must take from its own image, never from the host: the C library and its
# loader (a host libc under the image's ld.so, or the reverse, fails at start-up; the glibc
# floor check compares their versions instead) and the compiler runtimes the image's programs
# were linked against.
_IMAGE_OWNED = frozenset({
    "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2",
    "libutil.so.1", "libanl.so.1", "libmvec.so.1", "libgcc_s.so.1", "libstdc++.so.6",
    "libgfortran.so.5", "libgomp.so.1", "libatomic.so.1",
})
_LOADER = re.compile(r"^ld(-linux[\w.-]*|64)\.so\.\d+$")


@dataclass(frozen=True)
class Loader:
    """The host loader's view: soname -> host path for the host's native ABI (ld.so.cache)."""

    host: HostRoot
    paths: Mapping[str, str]
    abi: tuple[str, str] | None  # (ELF class, machine) of the host's native libraries


def host_loader(host: HostRoot) -> Loader:
    entries = read_ldcache(host)
    abi = native_abi(entries)
    paths: dict[str, str] = {}
    # ld.so.cache lists the preferred entry first; glibc-hwcaps variants are CPU-specific
    # builds of a library whose baseline is also listed, and the baseline is the one to bind
    for entry in entries:
        if entry.hwcap_subdir or (abi and (entry.elf_class, entry.machine) != abi):
            continue
        paths.setdefault(entry.soname, entry.path)
    return Loader(host, paths, abi)


@dataclass(frozen=True, slots=True)
class LibRequest:
    soname: str  # looked up in the host's ld.so.cache unless path is given; linked to the file
    rule: str
    reason: str
    path: str = ""  # host path when the library is not in the cache (verbs providers)
    required: bool = False  # missing: a warn check (a dependency), not silence (an extra)


def library_part(loader: Loader, requests: Iterable[LibRequest], provider: str) -> PlanPart:
    """Mounts and soname links that put host libraries, and the host libraries they need
    (DT_NEEDED, transitively, except what the image must own), into CONTAINER_LIBDIR.
    A file asked for under several names (libmlx5.so.1 is also the provider
    libmlx5-rdmav34.so) is mounted once and linked under each name."""
    part = PlanPart()
    queue = list(requests)
    seen: set[str] = set()  # sonames and paths already handled
    mounted: dict[str, ElfInfo] = {}  # real path -> its ELF facts
    while queue:
        request = queue.pop(0)
        if (request.path or request.soname) in seen:
            continue
        seen.add(request.path or request.soname)
        path = request.path or loader.paths.get(request.soname, "")
        if not path:
            if request.required:
                part.checks.append(Check(
                    "host-library", Status.WARN,
                    f"{request.soname} ({request.reason}) is not in the host's ld.so.cache",
                    provider, fix="run ldconfig on the host, or install the library in the image"))
            continue
        real = loader.host.resolve(path)
        info = mounted.get(real) or library_elf(loader.host, path)
        why_not = _unusable(info, loader.abi)
        if why_not:
            part.rejected.append(Rejected(path, provider, why_not))
            continue
        part.links.extend(_lib_links(real, (info.soname, request.soname), provider))
        if real in mounted:
            continue
        mounted[real] = info
        seen.add(info.soname)
        part.mounts.append(_lib_mount(real, info, request, provider))
        by = info.soname or posixpath.basename(real)
        queue.extend(LibRequest(dep, "dependency", f"needed by {by}", required=True)
                     for dep in info.needed if dep not in seen and not image_owned(dep))
    part.links = list(dict.fromkeys(part.links))
    if part.mounts:
        part.env.append(EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, CONTAINER_LIBDIR, provider,
                              "host libraries bound into the container live there"))
    return part


def plugin_dir_part(host: HostRoot, directory: str, name: str, provider: str, rule: str,
                    reason: str) -> tuple[PlanPart, tuple[LibRequest, ...]]:
    """A host module directory (UCX's ucx/, libfabric's libfabric/) bound at
    CONTAINER_LIBDIR/<name>, and requests for what its plugins need from the host."""
    part = PlanPart()
    if not host.is_dir(directory):
        return part, ()
    destination = f"{CONTAINER_LIBDIR}/{name}"
    part.mounts.append(Mount(host.resolve(directory), destination, "dir", provider, rule, reason))
    needed: dict[str, str] = {}
    for entry in host.listdir(directory):
        info = library_elf(host, f"{directory}/{entry}") if ".so" in entry else None
        for dep in info.needed if info else ():
            needed.setdefault(dep, entry)
    return part, tuple(LibRequest(dep, "dependency", f"needed by {by} in {directory}",
                                  required=True)
                       for dep, by in needed.items() if not image_owned(dep))


def _unusable(info: ElfInfo | None, abi: tuple[str, str] | None) -> str:
    if info is None:
        return "not a readable ELF shared library"
    if abi and (info.elf_class, info.machine) != abi:
        return f"{info.elf_class} {info.machine}, not the host's native {' '.join(abi)}"
    return ""


def _lib_mount(real: str, info: ElfInfo, request: LibRequest, provider: str) -> Mount:
    return Mount(
        source=real,
        destination=f"{CONTAINER_LIBDIR}/{posixpath.basename(real)}",
        kind="lib",
        provider=provider,
        rule=request.rule,
        reason=request.reason,
        provenance=Provenance(realpath=real, soname=info.soname, elf_class=info.elf_class,
                              machine=info.machine, needs=info.needs),
    )


def _lib_links(real: str, names: Iterable[str], provider: str) -> list[Link]:
    basename = posixpath.basename(real)
    return [Link(f"{CONTAINER_LIBDIR}/{name}", basename, provider, f"{name} is {basename}")
            for name in dict.fromkeys(names) if name and name != basename and "/" not in name]


def image_owned(soname: str) -> bool:
    return soname in _IMAGE_OWNED or bool(_LOADER.match(soname))


def library_elf(host: HostRoot, path: str) -> ElfInfo | None:
    return elf_info(host.real(host.resolve(path)))


def library_base(soname: str) -> str:
    """"libcuda" of "libcuda.so.1": the name libnvidia-container's lists match."""
    return soname.split(".so", 1)[0]


def library_entries(realpath: str, libdir: str, info: ElfInfo, soname: str, provider: str,
                    rule: str, reason: str, version: str) -> PlanPart:
    """The mount of one host library into ``libdir`` and its soname link."""
    filename = posixpath.basename(realpath)
    mount = Mount(
        source=realpath, destination=f"{libdir}/{filename}", kind="lib", provider=provider,
        rule=rule, reason=reason,
        provenance=Provenance(realpath=realpath, soname=soname, elf_class=info.elf_class,
                              machine=info.machine, needs=info.needs, version=version),
    )
    links = [Link(f"{libdir}/{soname}", filename, provider, "soname link, as ldconfig makes it")] \
        if soname and soname != filename else []
    return PlanPart(mounts=[mount], links=links)


def find_binary(host: HostRoot, name: str, env: Mapping[str, str]) -> str | None:
    """``name`` in the host's PATH directories, under the root; host path or None."""
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        if not directory.startswith("/"):
            continue  # relative PATH entries mean the caller's cwd, not the host
        path = host.resolve(f"{directory}/{name}")
        real = host.real(path)
        if real.is_file() and os.access(real, os.X_OK):
            return path
    return None


def binary_mount(host: HostRoot, path: str, name: str, provider: str, rule: str, reason: str,
                 native: tuple[str, str] | None) -> Mount | Rejected:
    """Host tool ``path`` bound into the container's private bin dir as ``name`` (its link
    may resolve to another name: Debian's alternatives), or why it is not."""
    info = elf_info(host.real(path))
    if info is None:
        # a script needs its interpreter and its own files from the host (rocm-smi is Python)
        return Rejected(path, provider, "not an ELF executable: a script would run without "
                                        "the host files it needs; use the image's own")
    if native and (info.elf_class, info.machine) != native:
        return Rejected(path, provider, f"{info.elf_class} {info.machine} does not match the "
                                        f"host's {native[0]} {native[1]}")
    return Mount(path, f"{CONTAINER_BINDIR}/{name}", "bin", provider, rule,
                 reason, provenance=Provenance(realpath=path, elf_class=info.elf_class,
                                               machine=info.machine, needs=info.needs))
