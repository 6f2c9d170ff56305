"""The host's ``/etc/ld.so.cache``, read directly.

Peers run ``ldconfig -p`` and parse its text; that breaks on Nix/Guix hosts, on Ubuntu's
``ldconfig`` wrapper script and when the ldconfig on PATH is not the host's (pain point 7 of
reference/gpu-passthrough.md), and it cannot read a captured tree. The file format is small and
stable, so it is read here with ``struct`` (no maintained Python library parses it).

Layouts, from glibc's ``sysdeps/generic/dl-cache.h`` and ``elf/cache.c``:

- old, ``ld.so-1.7.0`` (libc5, glibc < 2.2): ``struct cache_file {char magic[11]; uint32
  nlibs; struct file_entry libs[nlibs];}`` (16-byte header), ``file_entry {int32 flags; uint32
  key, value;}``; string offsets count from the end of ``libs``.
- new, ``glibc-ld.so.cache1.1``: a 48-byte header ``{magic[17], version[3], uint32 nlibs,
  uint32 len_strings, uint8 flags (endianness), pad[3], uint32 extension_offset, unused[3]}``
  then ``file_entry_new {int32 flags; uint32 key, value; uint32 osversion; uint64 hwcap;}``;
  string offsets count from the start of this header.
- combined (ldconfig ``-c compat``): the old table, then, 8-byte aligned, the new one hidden
  in the old string table. The new table is read when present, as ld.so and ldconfig -p do.
"""

from __future__ import annotations

import os
import struct
import sys
from collections import Counter
from dataclasses import dataclass, replace

from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot

LD_SO_CACHE = "/etc/ld.so.cache"

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
OLD_HEADER = struct.Struct("=11sxI")  # char magic[11]; (pad to 4) unsigned int nlibs
_OLD_NLIBS_AT = 12
OLD_ENTRY = struct.Struct("=iII")  # int32 flags; uint32 key, value
NEW_HEADER = struct.Struct("=20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, ext
_NEW_FLAGS_AT = 28  # offset of the endianness byte in that header
NEW_ENTRY = struct.Struct("=iIIIQ")  # flags, key, value, osversion, hwcap
EXTENSION_HEADER = struct.Struct("=II")  # magic, count
EXTENSION_SECTION = struct.Struct("=IIII")  # tag, flags, offset, size
NEW_ALIGN = 8  # __alignof__(struct cache_file_new): it holds a uint64

EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62  # DL_CACHE_HWCAP_EXTENSION: low 32 bits index the hwcaps section
HWCAP_ISA_LEVEL_MASK = (1 << 10) - 1

_ENDIAN_FLAGS = {2: "<", 3: ">"}  # cache_file_new_flags_endian_{little,big}; 0 = unset
_ENDIAN_INVALID = 1

FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
_TYPES = {0: "libc4", 1: "ELF", 2: "libc5", 3: "libc6"}


@dataclass(frozen=True, slots=True)
class Abi:
    """What a cache entry's flags say about the library: ldconfig's label and the ELF facts."""

    label: str  # as ldconfig -p prints it after the type: ",x86-64"
    arch: str  # "x86-64"
    elf_class: str  # "ELFCLASS64"; "" where the flag alone does not say (RISC-V)
    machine: str  # "EM_X86_64", pyelftools' names


# FLAG_* required-ABI bits, from dl-cache.h and print_entry() in elf/cache.c.
_REQUIRED = {
    0x0100: Abi(",64bit", "sparc64", "ELFCLASS64", "EM_SPARCV9"),
    0x0200: Abi(",IA-64", "ia64", "ELFCLASS64", "EM_IA_64"),
    0x0300: Abi(",x86-64", "x86-64", "ELFCLASS64", "EM_X86_64"),
    0x0400: Abi(",64bit", "s390x", "ELFCLASS64", "EM_S390"),
    0x0500: Abi(",64bit", "ppc64", "ELFCLASS64", "EM_PPC64"),
    0x0600: Abi(",N32", "mips64-n32", "ELFCLASS32", "EM_MIPS"),
    0x0700: Abi(",64bit", "mips64", "ELFCLASS64", "EM_MIPS"),
    0x0800: Abi(",x32", "x32", "ELFCLASS32", "EM_X86_64"),
    0x0900: Abi(",hard-float", "arm-hf", "ELFCLASS32", "EM_ARM"),
    0x0A00: Abi(",AArch64", "aarch64", "ELFCLASS64", "EM_AARCH64"),
    0x0B00: Abi(",soft-float", "arm-sf", "ELFCLASS32", "EM_ARM"),
    0x0C00: Abi(",nan2008", "mips-nan2008", "ELFCLASS32", "EM_MIPS"),
    0x0D00: Abi(",N32,nan2008", "mips64-n32-nan2008", "ELFCLASS32", "EM_MIPS"),
    0x0E00: Abi(",64bit,nan2008", "mips64-nan2008", "ELFCLASS64", "EM_MIPS"),
    0x0F00: Abi(",soft-float", "riscv-soft-float", "", "EM_RISCV"),
    0x1000: Abi(",double-float", "riscv-double-float", "", "EM_RISCV"),
}

# Libraries of a platform's base ABI carry no required flag. Which base that is follows from
# the cache's 64-bit family: next to x86-64 entries an unflagged libc6 entry is i386.
_BASE_OF_FAMILY = {
    0x0300: Abi("", "i386", "ELFCLASS32", "EM_386"),
    0x0A00: Abi("", "arm", "ELFCLASS32", "EM_ARM"),
    0x0500: Abi("", "ppc", "ELFCLASS32", "EM_PPC"),
    0x0400: Abi("", "s390", "ELFCLASS32", "EM_S390"),
    0x0100: Abi("", "sparc", "ELFCLASS32", "EM_SPARC"),
    0x0700: Abi("", "mips", "ELFCLASS32", "EM_MIPS"),
}
_UNKNOWN = Abi("", "", "", "")


@dataclass(frozen=True, slots=True)
class LdEntry:
    soname: str
    path: str
    flags: int
    hwcap: int = 0
    hwcap_subdir: str = ""  # the glibc-hwcaps subdirectory ("x86-64-v3") of an extension entry
    arch: str = ""  # "x86-64", "i386", "aarch64"; "" when the cache does not say
    elf_class: str = ""  # "ELFCLASS64"; "" when the cache does not say
    machine: str = ""  # "EM_X86_64"; "" when the cache does not say

    @property
    def kind(self) -> str:
        return _TYPES.get(self.flags & FLAG_TYPE_MASK, "unknown")

    @property
    def abi(self) -> str:
        """As ``ldconfig -p`` prints it: "libc6,x86-64"."""
        required = self.flags & FLAG_REQUIRED_MASK
        label = _REQUIRED[required].label if required in _REQUIRED else f",{required}" if required else ""
        return self.kind + label


def read_ldcache(host: HostRoot, path: str = LD_SO_CACHE) -> tuple[LdEntry, ...]:
    """Entries of the host's loader cache in file order; empty when the host has none."""
    data = host.read_bytes(path)
    if data is None:
        return ()
    return parse_ldcache(data, str(host.real(path)))


def parse_ldcache(data: bytes, name: str) -> tuple[LdEntry, ...]:
    """Entries of a cache file's bytes; ``name`` is the file, for the error message."""
    if not data:
        return ()  # ldconfig -p prints nothing for an empty cache, and ld.so ignores it
    try:
        raw = _parse(data)
    except (struct.error, _Corrupt) as exc:
        raise HpcbindError(
            f"{name} is not a readable ld.so.cache ({exc})",
            "rebuild it with 'ldconfig' as root, or point --sysroot at a complete capture",
        ) from None
    return _with_arch(raw)


class _Corrupt(Exception):
    """A structural inconsistency; turned into an HpcbindError naming the file."""


def _parse(data: bytes) -> list[LdEntry]:
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0)
    if not data.startswith(OLD_MAGIC):
        raise _Corrupt("no ld.so-1.7.0 or glibc-ld.so.cache1.1 magic")
    order, nlibs = _old_order(data)
    strings = OLD_HEADER.size + nlibs * OLD_ENTRY.size
    new_at = -(-strings // NEW_ALIGN) * NEW_ALIGN
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at)
    entry = struct.Struct(order + OLD_ENTRY.format.lstrip("="))
    return [
        LdEntry(soname=_string(data, strings + key), path=_string(data, strings + value), flags=flags)
        for flags, key, value in entry.iter_unpack(data[OLD_HEADER.size:strings])
    ]


def _old_order(data: bytes) -> tuple[str, int]:
    """Byte order and entry count of an old header: the old format records no byte order,
    so take the one whose count fits the file (a captured big-endian host's cache)."""
    for order in ("<" if sys.byteorder == "little" else ">", ">" if sys.byteorder == "little" else "<"):
        (nlibs,) = struct.unpack_from(order + "I", data, _OLD_NLIBS_AT)
        if OLD_HEADER.size + nlibs * OLD_ENTRY.size <= len(data):
            return order, nlibs
    raise _Corrupt("its entry count runs past the end of the file")


def _parse_new(data: bytes, base: int) -> list[LdEntry]:
    if base + NEW_HEADER.size > len(data):
        raise _Corrupt("its header is truncated")
    order = _new_order(data[base + _NEW_FLAGS_AT])
    header = struct.Struct(order + NEW_HEADER.format.lstrip("="))
    _, nlibs, _, _, ext_offset = header.unpack_from(data, base)
    table = base + header.size
    if table + nlibs * NEW_ENTRY.size > len(data):
        raise _Corrupt(f"{nlibs} entries run past the end of the file")
    hwcap_names = _hwcap_names(data, base, ext_offset, order)
    entry = struct.Struct(order + NEW_ENTRY.format.lstrip("="))
    return [
        LdEntry(
            soname=_string(data, base + key),
            path=_string(data, base + value),
            flags=flags,
            hwcap=hwcap,
            hwcap_subdir=_hwcap_subdir(hwcap, hwcap_names),
        )
        for flags, key, value, _, hwcap in entry.iter_unpack(data[table:table + nlibs * NEW_ENTRY.size])
    ]


def _new_order(flags: int) -> str:
    endian = flags & 3
    if endian == _ENDIAN_INVALID:
        raise _Corrupt("its header marks it invalid")
    return _ENDIAN_FLAGS.get(endian, "<" if sys.byteorder == "little" else ">")


def _hwcap_names(data: bytes, base: int, ext_offset: int, order: str) -> tuple[str, ...]:
    """The glibc-hwcaps subdirectory names of the extension directory (glibc >= 2.33)."""
    if ext_offset == 0:
        return ()
    header = struct.Struct(order + EXTENSION_HEADER.format.lstrip("="))
    section = struct.Struct(order + EXTENSION_SECTION.format.lstrip("="))
    if ext_offset % 4 or ext_offset + header.size > len(data):
        raise _Corrupt("malformed extension directory")
    magic, count = header.unpack_from(data, ext_offset)
    if magic != EXTENSION_MAGIC or ext_offset + header.size + count * section.size > len(data):
        raise _Corrupt("malformed extension directory")
    for i in range(count):
        tag, _, offset, size = section.unpack_from(data, ext_offset + header.size + i * section.size)
        if offset + size > len(data):
            raise _Corrupt("an extension section runs past the end of the file")
        if tag == EXTENSION_TAG_GLIBC_HWCAPS and size % 4 == 0:
            indices = struct.unpack_from(f"{order}{size // 4}I", data, offset)
            # indices count from the start of the string table's base, like every other
            # string offset of the new format (write_extensions() adds the same str_offset)
            return tuple(_string(data, base + index) for index in indices)
    return ()


def _hwcap_subdir(hwcap: int, names: tuple[str, ...]) -> str:
    if (hwcap >> 32) & ~HWCAP_ISA_LEVEL_MASK != HWCAP_EXTENSION >> 32:
        return ""
    index = hwcap & 0xFFFFFFFF
    if index >= len(names):
        raise _Corrupt(f"glibc-hwcaps index {index} is not in its extension directory")
    return names[index]


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        raise _Corrupt(f"string offset {offset} is outside the file")
    return os.fsdecode(data[offset:end])


def native_abi(entries: tuple[LdEntry, ...]) -> tuple[str, str] | None:
    """(ELF class, machine) of the host's native libraries: the cache's dominant ABI flag.

    ld.so itself picks cache entries by these flags (``_dl_cache_check_flags``), so they say
    which libraries the host's own loader uses, on a live host and on a capture alike.
    """
    abi = _REQUIRED.get(_family(entries))
    return (abi.elf_class, abi.machine) if abi and abi.elf_class else None


def _family(entries: list[LdEntry] | tuple[LdEntry, ...]) -> int:
    families = Counter(e.flags & FLAG_REQUIRED_MASK for e in entries if e.flags & FLAG_REQUIRED_MASK)
    return families.most_common(1)[0][0] if families else 0


def _with_arch(entries: list[LdEntry]) -> tuple[LdEntry, ...]:
    family = _family(entries)
    return tuple(_decoded(e, family) for e in entries)


def _decoded(entry: LdEntry, family: int) -> LdEntry:
    required = entry.flags & FLAG_REQUIRED_MASK
    if required:
        abi = _REQUIRED.get(required, _UNKNOWN)
    elif entry.kind in ("libc6", "ELF"):
        abi = _BASE_OF_FAMILY.get(family, _UNKNOWN)
    else:
        abi = _UNKNOWN
    return replace(entry, arch=abi.arch, elf_class=abi.elf_class, machine=abi.machine)
