"""The MPI and PMIx libraries of a root (the host, or an image), and whether two MPIs are ABI-compatible.

Read from the files alone, never by loading them (reference/mpi-fabric-pmi.md §5): the
soname and the real file's name give the ABI numbers Sarus compares (``libmpi.so.40.30.4`` is
ABI 40.30.4); the release comes from the string the library itself exports
(``ompi_version_string`` = "4.1.4" in Open MPI, ``MPII_Version_string`` = "4.0.2" in MPICH 4,
``MPIR_Version_string`` in MPICH 3), and the vendor of an MPICH derivative from the banner
``MPI_Get_library_version`` prints, which sits in ``.rodata`` (the prefixes MPI.jl and mpi4py
match on). ELF facts come from ``hpcbind.host.elf``; the symbol and section reads use
pyelftools directly because ``ElfInfo`` carries neither.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from hpcbind.errors import HpcbindError
from hpcbind.host.elf import elf_info
from hpcbind.hostroot import HostRoot
from hpcbind.plan import Check, Status

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

PROVIDER = "mpi.abi"

# The sonames an MPI library is found under. libmpi_cray is Cray MPICH's name for the
# MPICH-ABI library; libmpi_abi is the MPI-5 standard ABI (MPICH --enable-mpi-abi, Open MPI 6).
MPI_SONAMES = ("libmpi.so.*", "libmpich.so.*", "libmpi_cray.so.*", "libmpi_abi.so.*")
PMIX_SONAMES = ("libpmix.so.*",)


class Family(StrEnum):
    """ABI families: libraries of one family can replace each other when the soname numbers allow."""

    OPENMPI = "openmpi"  # libmpi.so.40 (3.x-5.x), .20 (2.x)
    MPICH = "mpich"  # the MPICH ABI Initiative: MPICH, Intel MPI, MVAPICH, Cray MPICH (.so.12)
    MPI_ABI = "mpi-abi"  # the MPI-5 standard ABI, libmpi_abi.so


# Who belongs to a family, for the fix of a family mismatch.
_MEMBERS = {
    Family.OPENMPI: "Open MPI",
    Family.MPICH: "MPICH, Intel MPI, MVAPICH or Cray MPICH",
    Family.MPI_ABI: "an MPI built for the MPI-5 standard ABI (libmpi_abi)",
}


class Rule(StrEnum):
    """Sarus's MPI_COMPATIBILITY_TYPE (src/hooks/mpi/AbiChecker.cpp)."""

    MAJOR = "major"  # same soname major
    FULL = "full"  # same major, host minor >= image minor (else a warning)
    STRICT = "strict"  # same major and minor


@dataclass(frozen=True, slots=True)
class MpiLib:
    path: str  # the real file inside its root, every link followed
    soname: str  # "libmpi.so.40"
    family: Family
    vendor: str  # "Open MPI", "MPICH", "Intel MPI", "MVAPICH", "Cray MPICH"
    version: str  # the release, "4.1.4"; "" when the library does not say
    abi: tuple[int, ...]  # from the real file name: libmpi.so.40.30.4 -> (40, 30, 4)
    machine: str  # "EM_X86_64"
    elf_class: str

    @property
    def name(self) -> str:
        """The real file's name, as Sarus prints it: libmpi.so.40.30.4."""
        return PurePosixPath(self.path).name

    def describe(self) -> str:
        from hpcbind.mpi.launcher import describe_mpi

        return describe_mpi(self.vendor, self.version, self.path)


@dataclass(frozen=True, slots=True)
class PmixLib:
    path: str
    soname: str  # "libpmix.so.2"
    version: str  # "4.2.2rc2"; "" when the library does not say
    abi: tuple[int, ...]

    @property
    def release(self) -> tuple[int, ...] | None:
        """(4, 2, 2) from "4.2.2rc2"; None when unknown."""
        return release_numbers(self.version)


# The string a library exports that holds its release, and the family and vendor it proves.
_RELEASE_SYMBOLS = (
    ("ompi_version_string", Family.OPENMPI, "Open MPI"),
    ("MPII_Version_string", Family.MPICH, "MPICH"),  # MPICH >= 4.0
    ("MPIR_Version_string", Family.MPICH, "MPICH"),  # MPICH 3.x and its derivatives
)

# Banners of MPI_Get_library_version, most specific first: a derivative also carries MPICH's.
# A version is taken from the banner only where the banner is a literal, not a format.
_BANNERS = (
    (re.compile(rb"Intel\(R\) MPI Library(?: (\d[\w.]*))?"), Family.MPICH, "Intel MPI"),
    (re.compile(rb"CRAY MPICH version(?: (\d[\w.]*))?"), Family.MPICH, "Cray MPICH"),
    (re.compile(rb"MVAPICH2? Version"), Family.MPICH, "MVAPICH"),
    (re.compile(rb"MPICH Version:"), Family.MPICH, "MPICH"),
    (re.compile(rb"Open MPI v"), Family.OPENMPI, "Open MPI"),
)

# Last resort when a library has neither symbol nor banner: what its soname promises.
_SONAME_FAMILIES = (
    ("libmpi_abi.so.*", Family.MPI_ABI, "MPI ABI"),
    ("libmpi.so.40", Family.OPENMPI, "Open MPI"),
    ("libmpi.so.20", Family.OPENMPI, "Open MPI"),
    ("libmpich.so.*", Family.MPICH, "MPICH"),
    ("libmpi_cray.so.*", Family.MPICH, "Cray MPICH"),
    ("libmpi.so.12", Family.MPICH, "MPICH"),
)

_PMIX_BANNER = re.compile(rb"OpenPMIx (\d+\.\d+\.\d+\w*)")  # PMIx >= 4; older ones keep it static
_RELEASE = re.compile(r"(\d+(?:\.\d+)*)")


def find_mpi(root: HostRoot, libraries: Mapping[str, str]) -> tuple[MpiLib, ...]:
    """Every MPI library of ``root`` among ``libraries`` (soname -> path), one per real file."""
    found = (mpi_lib(root, path) for path in _matching(root, libraries, MPI_SONAMES))
    return tuple(sorted((lib for lib in found if lib is not None), key=lambda lib: lib.soname))


def find_pmix(root: HostRoot, libraries: Mapping[str, str]) -> PmixLib | None:
    """The PMIx client library of ``root`` (the newest when there are several)."""
    found = [lib for lib in (pmix_lib(root, p) for p in _matching(root, libraries, PMIX_SONAMES)) if lib]
    return max(found, key=lambda lib: (lib.release or (), lib.abi), default=None)


def mpi_lib(root: HostRoot, path: str) -> MpiLib | None:
    """The MPI facts of the library at host path ``path``; None when it is no MPI library."""
    real = root.resolve(path)
    info = elf_info(root.real(real))
    if info is None:
        return None
    soname = info.soname or PurePosixPath(real).name
    family, vendor, version = _identify(root.real(real), soname)
    if family is None:
        return None
    if fnmatch.fnmatch(soname, "libmpi_abi.so.*"):
        family = Family.MPI_ABI  # the standard ABI, whoever built it
    return MpiLib(real, soname, family, vendor, version, _abi(real, soname), info.machine, info.elf_class)


def pmix_lib(root: HostRoot, path: str) -> PmixLib | None:
    real = root.resolve(path)
    info = elf_info(root.real(real))
    if info is None:
        return None
    soname = info.soname or PurePosixPath(real).name
    banner = _PMIX_BANNER.search(_read_elf(root.real(real), symbol=False)[1])
    version = banner.group(1).decode() if banner else ""
    return PmixLib(real, soname, version, _abi(real, soname))


def release_numbers(version: str) -> tuple[int, ...] | None:
    """The numeric part of a release string: "4.2.2rc2" -> (4, 2, 2), "2021.10" -> (2021, 10)."""
    match = _RELEASE.match(version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def mpi_abi_check(host: MpiLib, image: MpiLib, rule: str = "major") -> Check:
    """Can the host's MPI replace the image's? Sarus's rules on the soname numbers, after a
    family check Sarus leaves out (it compares linker names only)."""
    try:
        chosen = Rule(rule)
    except ValueError:
        raise HpcbindError(
            f"unknown MPI compatibility rule {rule!r}",
            f"use one of {', '.join(r.value for r in Rule)} (Sarus's MPI_COMPATIBILITY_TYPE)",
        ) from None
    pair = f"host {host.describe()}, image {image.describe()}"
    if host.family is not image.family:
        return _check(Status.FAIL, f"{pair}: different MPI ABI families ({host.family} vs {image.family})",
                      f"use an image built against {_MEMBERS[host.family]}, or run the image's own "
                      "MPI without binding the host's")
    if host.abi[:1] != image.abi[:1]:
        return _check(Status.FAIL, f"{pair}: ABI major {_major(host)} vs {_major(image)}",
                      f"use an image whose MPI is {_soname_of(host)}")
    alias = (f"; the image links {image.soname}, so bind the host's library under that name"
             if host.soname != image.soname else "")
    host_minor, image_minor = _minor(host), _minor(image)
    if chosen is Rule.STRICT and host_minor != image_minor:
        return _check(Status.FAIL, f"{pair}: ABI minor differs under the strict rule",
                      f"use an image built against {host.name}, or the 'full' rule")
    if chosen is Rule.FULL and (host_minor or 0) < (image_minor or 0):
        return _check(Status.WARN,
                      f"{pair}: the host library is older than the image's; programs that use "
                      f"symbols only the image's has will fail{alias}",
                      "update the host MPI or rebuild the image against the host's MPI version")
    return _check(Status.OK, f"{pair}: compatible under the {chosen} rule{alias}")


def _check(status: Status, message: str, fix: str = "") -> Check:
    return Check("mpi-abi", status, message, PROVIDER, fix)


def _major(lib: MpiLib) -> str:
    return str(lib.abi[0]) if lib.abi else "unknown"


def _minor(lib: MpiLib) -> int | None:
    return lib.abi[1] if len(lib.abi) > 1 else None


def _soname_of(lib: MpiLib) -> str:
    return f"{lib.soname} ({lib.vendor})"


def _matching(root: HostRoot, libraries: Mapping[str, str], patterns: tuple[str, ...]) -> list[str]:
    """Paths of the libraries whose names match ``patterns``, one per real file, in name order."""
    seen: dict[str, str] = {}
    for name in sorted(libraries):
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            seen.setdefault(root.resolve(libraries[name]), libraries[name])
    return list(seen.values())


def _identify(path: Path, soname: str) -> tuple[Family | None, str, str]:
    """(family, vendor, release) of an MPI library file, from its symbols, banners, soname."""
    symbol, rodata = _read_elf(path, symbol=True)
    banner = next(((m, family, vendor) for pattern, family, vendor in _BANNERS
                   if (m := pattern.search(rodata))), None)
    if banner is not None:
        match, family, vendor = banner
        literal = match.group(1).decode() if match.groups() and match.group(1) else ""
        # a derivative's own release (Intel's 2021.10) over the MPICH base its symbol names
        return family, vendor, literal or (symbol[2] if symbol else "")
    if symbol is not None:
        return symbol
    by_name = next(((f, v) for pattern, f, v in _SONAME_FAMILIES if fnmatch.fnmatch(soname, pattern)), None)
    return (by_name[0], by_name[1], "") if by_name else (None, "", "")


def _read_elf(path: Path, symbol: bool) -> tuple[tuple[Family, str, str] | None, bytes]:
    """(the release symbol if asked, .rodata) of a library; (None, b"") where elf_info
    accepted the file but its .dynsym or .rodata is truncated or lies (an image is untrusted
    input): the library is then identified by its soname alone. pyelftools is imported
    here, not with the module: ``hpcrun mpirun`` reads a cached image's facts without it
    (~17 ms of every launch)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            return (_release_symbol(elf, stream) if symbol else None), _rodata(elf)
    except (ELFError, OSError, ValueError, IndexError):
        return None, b""


def _release_symbol(elf: ELFFile, stream: BinaryIO) -> tuple[Family, str, str] | None:
    """The release string exported under one of ``_RELEASE_SYMBOLS``."""
    from elftools.elf.sections import SymbolTableSection

    dynsym = elf.get_section_by_name(".dynsym")
    if not isinstance(dynsym, SymbolTableSection):
        return None
    for name, family, vendor in _RELEASE_SYMBOLS:
        symbols = dynsym.get_symbol_by_name(name)
        if symbols and isinstance(symbols[0]["st_shndx"], int):
            section = elf.get_section(symbols[0]["st_shndx"])
            stream.seek(symbols[0]["st_value"] - section["sh_addr"] + section["sh_offset"])
            text = stream.read(max(symbols[0]["st_size"], 1)).split(b"\0")[0]
            return family, vendor, text.decode(errors="replace")
    return None


def _rodata(elf: ELFFile) -> bytes:
    section = elf.get_section_by_name(".rodata")
    return section.data() if section is not None else b""


def _abi(real: str, soname: str) -> tuple[int, ...]:
    """ABI numbers from the real file's name, else the soname's: libmpi.so.40.30.4 -> (40, 30, 4)."""
    for name in (PurePosixPath(real).name, soname):
        _, sep, numbers = name.partition(".so.")
        parts = numbers.split(".")
        if sep and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
    return ()

