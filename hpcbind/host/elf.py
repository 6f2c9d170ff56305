"""ELF facts about host files: class, machine, soname, DT_NEEDED and symbol versions.

Read with pyelftools, never by hand. These facts decide whether a host library may be bound
into a container (its class and machine must match the host's and the container's) and
whether the container's glibc/libstdc++ can load it (the ``GLIBC_*``/``GLIBCXX_*`` versions it
needs against the ones the container's ``libc.so.6`` defines: pain point 1 of every peer).
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

# VER_FLG_BASE marks the version definition that names the file itself (its soname), not a
# version of the interface it exports (elf.h).
_VER_FLG_BASE = 0x1

# What corrupt or truncated files make pyelftools raise besides ELFError (found by fuzzing it:
# tests/test_host_elf.py): it asserts on some fields, seeks to and indexes with offsets taken
# from the file, and decodes names from it.
_GARBAGE = (ELFError, OSError, ValueError, AssertionError, IndexError, KeyError, OverflowError,
            struct.error)

# The smallest version records (Elf_Verneed/Vernaux 16 bytes, Elf_Verdaux 8): a section of
# N bytes holds at most N // size of them, whatever counts the file claims.
_VERNEED_SIZE, _VERDEF_SIZE = 16, 8

_TOKEN = re.compile(r"\d+|[^\W\d_]+")


@dataclass(frozen=True, slots=True)
class ElfInfo:
    path: str
    elf_class: str  # "ELFCLASS64"
    machine: str  # "EM_X86_64"
    soname: str = ""
    needed: tuple[str, ...] = ()  # DT_NEEDED, in file order
    # library -> versions this object requires from it, e.g. {"libc.so.6": ("GLIBC_2.2.5",)}
    version_needs: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    version_defs: tuple[str, ...] = ()  # versions this object defines ("IBVERBS_1.1", ...)

    @property
    def needs(self) -> tuple[str, ...]:
        """Every symbol version required, from any library, sorted and unique."""
        return _sorted_versions(v for vs in self.version_needs.values() for v in vs)


def elf_info(path: Path) -> ElfInfo | None:
    """The ELF facts of ``path``; None when it is missing, not ELF, or too broken to read.

    Remembered for the life of the process per file identity (device, inode, size,
    modification time): a plan reads the same libraries for several providers and checks,
    and pyelftools is most of discovery's time. A changed file has a new identity.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SEEN:
        _SEEN[key] = _elf_info(path)
    return _SEEN[key]


_SEEN: dict[tuple, ElfInfo | None] = {}


def _elf_info(path: Path) -> ElfInfo | None:
    try:
        with path.open("rb") as stream:
            if stream.read(4) != b"\x7fELF":
                return None
            size = stream.seek(0, 2)
            stream.seek(0)
            return _read(path, ELFFile(stream), size)
    except _GARBAGE:
        return None


def max_version(versions: Iterable[str], prefix: str) -> tuple[int, ...] | None:
    """The highest numeric ``PREFIX_x.y[.z]`` among ``versions``: ("GLIBC_2.34", ...) -> (2, 34).

    ``GLIBC`` does not match ``GLIBCXX_3.4`` nor ``GLIBC_PRIVATE``.
    """
    head = prefix.rstrip("_") + "_"
    found = [_numeric(v[len(head):]) for v in versions if v.startswith(head)]
    numbers = [n for n in found if n is not None]
    return max(numbers) if numbers else None


def _read(path: Path, elf: ELFFile, size: int) -> ElfInfo:
    soname, needed = "", []
    needs: dict[str, list[str]] = {}
    defs = []
    # one pass: pyelftools parses every section header again on each iter_sections()
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_SONAME":
                    soname = tag.soname
                elif tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
        elif isinstance(section, GNUVerNeedSection):
            for verneed, auxiliaries in _versions(section, _VERNEED_SIZE, size):
                needs.setdefault(verneed.name, []).extend(aux.name for aux in auxiliaries)
        elif isinstance(section, GNUVerDefSection):
            for verdef, auxiliaries in _versions(section, _VERDEF_SIZE, size):
                if auxiliaries and not verdef["vd_flags"] & _VER_FLG_BASE:
                    defs.append(auxiliaries[0].name)
    return ElfInfo(
        path=str(path),
        elf_class=elf["e_ident"]["EI_CLASS"],
        machine=str(elf["e_machine"]),
        soname=soname,
        needed=tuple(needed),
        version_needs={lib: _sorted_versions(versions) for lib, versions in needs.items()},
        version_defs=_sorted_versions(defs),
    )


def _versions(section: GNUVerNeedSection | GNUVerDefSection, record: int,
              file_size: int) -> Iterator[tuple[Any, list[Any]]]:
    """The section's version entries and their auxiliaries, at most as many as fit in it.

    pyelftools trusts the counts and next-offsets in the file: a corrupt entry that points
    back at itself would loop for billions of records (found by fuzzing).
    """
    budget = min(section["sh_size"], file_size) // record
    for version, auxiliaries in section.iter_versions():
        items = list(itertools.islice(auxiliaries, budget + 1))
        budget -= 1 + len(items)
        if budget < 0:
            raise ELFError(f"{section.name}: more version records than fit in the section")
        yield version, items


def _numeric(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _natural_key(name: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    # GLIBC_2.9 before GLIBC_2.10 before GLIBC_PRIVATE before GLIBCXX_3.4: words and numbers
    # compare as such, separators not at all (the name itself breaks ties)
    tokens = tuple((0, int(t)) if t.isdigit() else (1, t) for t in _TOKEN.findall(name))
    return tokens, name


def _sorted_versions(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=_natural_key))
