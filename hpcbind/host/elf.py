"""ELF facts about host files: class, machine, soname, DT_NEEDED and symbol versions.

These facts decide whether a host library may be bound into a container (its class and
machine must match the host's and the container's) and whether the container's
glibc/libstdc++ can load it (the ``GLIBC_*``/``GLIBCXX_*`` versions it needs against the ones
the container's ``libc.so.6`` defines: pain point 1 of every peer).

Read by hand with ``struct``, not with pyelftools, against the project's habit of preferring
a library, for speed alone: pyelftools builds every structure it touches through construct
and took 2.0 ms a library (median over 300 libraries of /usr/lib/x86_64-linux-gnu on the
2-core development VM), two thirds of a first plan (benchmarks/plan, in-process: 70 ms with
it, 23 ms without). This reader takes 0.1 ms. What it reads is small and fixed by elf.h: the
ELF header; the section headers, or the program headers when a file has none; the dynamic
table; the version need and definition tables; and their strings. tests/test_host_elf.py
checks every field against pyelftools on every ELF file of this host's library and program
directories, on the foreign-architecture files of the conformance corpus' images and on
synthetic libraries of both classes and byte orders.

A file is hostile input (an image's libraries are its author's). Every offset, size and count
taken from it is checked against the file, or the table it lies in, before use: no page of a
file is read twice, the names taken from it add up to no more than its size, and one that
points outside itself is refused (None), not half read. The file is read with ``pread``, not
mapped: a mapped file truncated under the reader would kill the process with SIGBUS.
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from hpcbind.host.conventions import natural_key

# e_ident[EI_CLASS] and e_ident[EI_DATA] (elf.h)
_CLASSES = {1: "ELFCLASS32", 2: "ELFCLASS64"}
_WORDS = {1: "I", 2: "Q"}  # Elf32_Addr/Off, Elf64_Addr/Off
_BYTE_ORDERS = {1: "<", 2: ">"}  # ELFDATA2LSB, ELFDATA2MSB

# e_machine numbers (elf.h) of the architectures HPC hosts and their images run, named as
# pyelftools names them: the rest of hpcbind compares these strings with the ABIs of
# ld.so.cache (host/ldcache.py), maps them to Go architectures (image/build.py) and pairs
# 64-bit machines with their 32-bit companions (checks.py).
_MACHINES = {
    2: "EM_SPARC", 3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390",
    40: "EM_ARM", 43: "EM_SPARCV9", 50: "EM_IA_64", 62: "EM_X86_64", 183: "EM_AARCH64",
    243: "EM_RISCV", 258: "EM_LOONGARCH",
}

SHT_STRTAB, SHT_DYNAMIC = 3, 6
SHT_GNU_VERDEF, SHT_GNU_VERNEED = 0x6FFFFFFD, 0x6FFFFFFE
PT_LOAD, PT_DYNAMIC = 1, 2
PN_XNUM = 0xFFFF  # e_phnum when the count is in section 0, which a file without sections lacks
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14
DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF

# VER_FLG_BASE marks the version definition that names the file itself (its soname), not a
# version of the interface it exports (elf.h).
_VER_FLG_BASE = 0x1

# The smallest version records (Elf_Verneed/Vernaux 16 bytes, Elf_Verdaux 8): a table of
# N bytes holds at most N // size of them, whatever counts the file claims.
_VERNEED_SIZE, _VERDEF_SIZE = 16, 8

# Reads are whole cached pages: a library's header, section headers, dynamic table, version
# tables and the strings they name sit in a handful of them.
_PAGE = 4096



@dataclass(frozen=True, slots=True)
class ElfInfo:
    path: str
    elf_class: str  # "ELFCLASS64"
    machine: str  # "EM_X86_64"; "EM_0x..." (e_machine in hex) for a machine not in _MACHINES
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
    modification time): a plan reads the same libraries for several providers and checks.
    A changed file has a new identity.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SEEN:
        # only regular files: opening a FIFO would block, a device is no library
        _SEEN[key] = _elf_info(path) if stat.S_ISREG(st.st_mode) else None
    return _SEEN[key]


_SEEN: dict[tuple, ElfInfo | None] = {}


def max_version(versions: Iterable[str], prefix: str) -> tuple[int, ...] | None:
    """The highest numeric ``PREFIX_x.y[.z]`` among ``versions``: ("GLIBC_2.34", ...) -> (2, 34).

    ``GLIBC`` does not match ``GLIBCXX_3.4`` nor ``GLIBC_PRIVATE``.
    """
    head = prefix.rstrip("_") + "_"
    found = [_numeric(v[len(head):]) for v in versions if v.startswith(head)]
    numbers = [n for n in found if n is not None]
    return max(numbers) if numbers else None


# ------------------------------------------------------------------------------- the reader


class _Broken(Exception):
    """Not ELF, or an offset, size or count in the file points outside what should hold it."""


class _File:
    """An open file read in cached pages, never outside its size."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self._fd = fd
        self._pages: dict[int, bytes] = {}
        # Real files name each library and version once or twice; a hostile one could point
        # thousands of DT_NEEDED at one long string and have it copied once each.
        self._string_bytes_left = self.size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise _Broken(f"{length} bytes at {offset} in a file of {self.size}")
        first, start = divmod(offset, _PAGE)
        if start + length <= _PAGE:  # most reads: a record or a header
            data = self._page(first)[start:start + length]
        else:
            last = (offset + length - 1) // _PAGE
            data = b"".join(self._page(n) for n in range(first, last + 1))[start:start + length]
        if len(data) != length:
            raise _Broken("the file shrank while read")
        return data

    def cstring(self, offset: int, end: int) -> bytes:
        """The NUL-terminated bytes at ``offset``, the NUL before ``end``."""
        parts = []
        while offset < end:
            page, start = self._page(offset // _PAGE), offset % _PAGE
            stop = min(len(page), start + end - offset)
            nul = page.find(b"\0", start, stop)
            if nul >= 0:
                parts.append(page[start:nul])
                return self._spend(b"".join(parts))
            if stop <= start:
                break  # the file shrank while read
            parts.append(page[start:stop])
            offset += stop - start
        raise _Broken(f"a string runs past its table's end at {end}")

    def _spend(self, string: bytes) -> bytes:
        self._string_bytes_left -= len(string) + 1
        if self._string_bytes_left < 0:
            raise _Broken("its strings add up to more than the file")
        return string

    def _page(self, number: int) -> bytes:
        page = self._pages.get(number)
        if page is None:
            page = self._pages[number] = os.pread(self._fd, _PAGE, number * _PAGE)
        return page


@dataclass(frozen=True, slots=True)
class _Format:
    """The structures of one ELF class and byte order, cut to the fields read (``x``: skipped)."""

    # Elf_Ehdr after e_ident: e_machine e_phoff e_shoff e_phentsize e_phnum e_shentsize e_shnum
    header: struct.Struct
    section: struct.Struct  # Elf_Shdr: sh_type sh_offset sh_size sh_link sh_info
    segment: struct.Struct  # Elf_Phdr: p_type p_offset p_vaddr p_filesz
    dynamic: struct.Struct  # Elf_Dyn: d_tag d_val
    verneed: struct.Struct  # Elf_Verneed: vn_cnt vn_file vn_aux vn_next
    vernaux: struct.Struct  # Elf_Vernaux: vna_name vna_next
    verdef: struct.Struct  # Elf_Verdef: vd_flags vd_cnt vd_aux vd_next
    verdaux: struct.Struct  # Elf_Verdaux: vda_name vda_next


def _format(order: str, word: str) -> _Format:
    skip = f"{struct.calcsize(word)}x"
    # Elf64_Phdr moves p_flags up beside p_type, to keep its 64-bit fields aligned
    segment = "III4xI12x" if word == "I" else "I4xQQ8xQ16x"
    layouts = (f"2xH4x{skip}{word}{word}4x2xHHHH2x", f"4xI{skip}{skip}{word}{word}II{skip}{skip}",
               segment, word * 2, "2xHIII", "8xII", "2xH2xH4xII", "II")
    return _Format(*(struct.Struct(order + layout) for layout in layouts))


_FORMATS = {(elf_class, data): _format(order, word)
            for elf_class, word in _WORDS.items() for data, order in _BYTE_ORDERS.items()}


class _Header(NamedTuple):
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a table lies in the file."""

    offset: int
    size: int


_NOWHERE = _Span(0, 0)


@dataclass(frozen=True, slots=True)
class _Table:
    """A dynamic or version table, where the strings it names lie, and how many version
    entries it claims (sh_info, DT_VERNEEDNUM, DT_VERDEFNUM; not used for a dynamic table)."""

    records: _Span
    strings: _Span
    count: int = 0


@dataclass(frozen=True, slots=True)
class _Tables:
    dynamic: tuple[_Table, ...]
    verneed: tuple[_Table, ...]
    verdef: tuple[_Table, ...]


def _elf_info(path: Path) -> ElfInfo | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read(_File(fd), str(path))
    except (_Broken, OSError):
        return None
    finally:
        os.close(fd)


def _read(file: _File, path: str) -> ElfInfo:
    ident = file.read(0, 6)
    if ident[:4] != b"\x7fELF" or (fmt := _FORMATS.get((ident[4], ident[5]))) is None:
        raise _Broken("not ELF, or of an unknown class or byte order")
    header = _Header(*fmt.header.unpack(file.read(16, fmt.header.size)))
    tables = _section_tables(file, fmt, header)
    if tables is None:
        # section headers stripped (sstrip, some vendor blobs): read what ld.so reads, the
        # dynamic segment; pyelftools, reading sections, found no soname, needed or versions
        tables = _segment_tables(file, fmt, header)
    soname, needed = "", []
    for table in tables.dynamic:
        for tag, value in _dynamic_entries(file, fmt, table.records):
            if tag == DT_NEEDED:
                needed.append(_string(file, table.strings, value))
            elif tag == DT_SONAME:
                soname = _string(file, table.strings, value)
    needs: dict[str, list[str]] = {}
    for table in tables.verneed:
        for library, versions in _version_needs(file, fmt, table):
            needs.setdefault(library, []).extend(versions)
    defs = [name for table in tables.verdef for name in _version_defs(file, fmt, table)]
    return ElfInfo(
        path=path,
        elf_class=_CLASSES[ident[4]],
        machine=_machine_name(header.machine),
        soname=soname,
        needed=tuple(needed),
        version_needs={lib: _sorted_versions(versions) for lib, versions in needs.items()},
        version_defs=_sorted_versions(defs),
    )


def _machine_name(number: int) -> str:
    # an unknown machine is still told apart from every other, known or not
    return _MACHINES.get(number) or f"EM_{number:#x}"


def _section_tables(file: _File, fmt: _Format, header: _Header) -> _Tables | None:
    """The dynamic and version sections, with their linked string tables; None when the file
    has no section headers."""
    count = _section_count(file, fmt, header)
    if not count:
        return None
    if header.shentsize < fmt.section.size:
        raise _Broken(f"section headers of {header.shentsize} bytes")
    table = file.read(header.shoff, count * header.shentsize)
    sections = [fmt.section.unpack_from(table, i * header.shentsize) for i in range(count)]
    found: dict[int, list[_Table]] = {SHT_DYNAMIC: [], SHT_GNU_VERNEED: [], SHT_GNU_VERDEF: []}
    for sh_type, offset, size, link, info in sections:
        if sh_type in found:
            strings = _linked_strings(file, sections, link)
            found[sh_type].append(_Table(_span(file, offset, size), strings, info))
    return _Tables(*(tuple(found[t]) for t in (SHT_DYNAMIC, SHT_GNU_VERNEED, SHT_GNU_VERDEF)))


def _section_count(file: _File, fmt: _Format, header: _Header) -> int:
    if header.shoff == 0:
        return 0
    if header.shnum:
        return header.shnum
    # SHN_LORESERVE (0xff00) sections or more: e_shnum is 0 and section 0's sh_size holds
    # the count (gABI)
    return fmt.section.unpack(file.read(header.shoff, fmt.section.size))[2]


def _linked_strings(file: _File, sections: list[tuple[int, ...]], link: int) -> _Span:
    if link >= len(sections) or sections[link][0] != SHT_STRTAB:
        raise _Broken(f"sh_link {link} is not a string table")
    return _span(file, *sections[link][1:3])


def _segment_tables(file: _File, fmt: _Format, header: _Header) -> _Tables:
    """The dynamic segment's table and the version tables and strings its tags point at,
    their virtual addresses mapped to file offsets through the PT_LOAD segments."""
    if header.phnum == PN_XNUM or (header.phnum and header.phentsize < fmt.segment.size):
        raise _Broken(f"{header.phnum} program headers of {header.phentsize} bytes")
    table = file.read(header.phoff, header.phnum * header.phentsize)
    segments = [fmt.segment.unpack_from(table, i * header.phentsize) for i in range(header.phnum)]
    dynamic = next((s for s in segments if s[0] == PT_DYNAMIC), None)
    if dynamic is None:  # static
        return _Tables((), (), ())
    records = _span(file, dynamic[1], dynamic[3])
    tags = dict(_dynamic_entries(file, fmt, records))
    loads = [s for s in segments if s[0] == PT_LOAD]
    strings = _mapped(file, loads, tags.get(DT_STRTAB), tags.get(DT_STRSZ))
    return _Tables(
        (_Table(records, strings),),
        _version_table(file, loads, tags, DT_VERNEED, DT_VERNEEDNUM, strings),
        _version_table(file, loads, tags, DT_VERDEF, DT_VERDEFNUM, strings),
    )


def _version_table(file: _File, loads: list[tuple[int, ...]], tags: dict[int, int], address: int,
                   count: int, strings: _Span) -> tuple[_Table, ...]:
    if address not in tags:
        return ()
    return (_Table(_mapped(file, loads, tags[address]), strings, tags.get(count, 0)),)


def _mapped(file: _File, loads: list[tuple[int, ...]], address: int | None,
            size: int | None = None) -> _Span:
    """Where the PT_LOAD segment holding ``address`` puts it in the file: a span to that
    segment's end, or of ``size`` bytes when that is less."""
    if address is None:
        return _NOWHERE
    for _, offset, vaddr, filesz in loads:
        if vaddr <= address < vaddr + filesz:
            left = vaddr + filesz - address
            return _span(file, offset + address - vaddr, left if size is None else min(size, left))
    raise _Broken(f"address {address:#x} is in no loaded segment")


def _span(file: _File, offset: int, size: int) -> _Span:
    if offset + size > file.size:
        raise _Broken(f"{size} bytes at {offset} in a file of {file.size}")
    return _Span(offset, size)


def _dynamic_entries(file: _File, fmt: _Format, records: _Span) -> Iterator[tuple[int, int]]:
    """(d_tag, d_val) of each entry before DT_NULL."""
    data = file.read(records.offset, records.size - records.size % fmt.dynamic.size)
    return itertools.takewhile(lambda entry: entry[0] != DT_NULL, fmt.dynamic.iter_unpack(data))


def _version_needs(file: _File, fmt: _Format, table: _Table) -> Iterator[tuple[str, list[str]]]:
    """Each library a version is needed from, with the versions needed from it."""
    budget = _Budget(table, _VERNEED_SIZE)
    for at, (count, library, aux, _) in _chain(file, table.records, 0, table.count, fmt.verneed):
        budget.take_auxiliaries(count)
        auxiliaries = _chain(file, table.records, at + aux, count, fmt.vernaux)
        yield (_string(file, table.strings, library),
               [_string(file, table.strings, name) for _, (name, _) in auxiliaries])


def _version_defs(file: _File, fmt: _Format, table: _Table) -> Iterator[str]:
    """The name of each version defined, but the base one (the file's own name)."""
    budget = _Budget(table, _VERDEF_SIZE)
    for at, (flags, count, aux, _) in _chain(file, table.records, 0, table.count, fmt.verdef):
        budget.take_auxiliaries(count)
        if not flags & _VER_FLG_BASE:  # its first auxiliary names it, the others its parents
            name, _ = _record(file, table.records, at + aux, fmt.verdaux)
            yield _string(file, table.strings, name)


class _Budget:
    """The version records a table has room for, whatever counts it claims: a corrupt entry
    whose next offset is 0 points at itself, and its count can claim billions (found by
    fuzzing)."""

    def __init__(self, table: _Table, smallest: int) -> None:
        self._left = table.records.size // smallest
        self._take(table.count)

    def take_auxiliaries(self, count: int) -> None:
        if count == 0:
            raise _Broken("a version entry without auxiliaries")
        self._take(count)

    def _take(self, records: int) -> None:
        self._left -= records
        if self._left < 0:
            raise _Broken("more version records than fit in their table")


def _chain(file: _File, records: _Span, at: int, count: int,
           layout: struct.Struct) -> Iterator[tuple[int, tuple[int, ...]]]:
    """``count`` linked records from ``at`` in the table, with their offsets; each one's last
    field (vn_next, vna_next, vd_next, vda_next) is the distance to the next."""
    for _ in range(count):
        record = _record(file, records, at, layout)
        yield at, record
        at += record[-1]


def _record(file: _File, records: _Span, at: int, layout: struct.Struct) -> tuple[int, ...]:
    if at + layout.size > records.size:
        raise _Broken(f"a version record at {at} past its table's {records.size} bytes")
    return layout.unpack(file.read(records.offset + at, layout.size))


def _string(file: _File, strings: _Span, index: int) -> str:
    if index >= strings.size:
        raise _Broken(f"string {index} of a table of {strings.size} bytes")
    end = strings.offset + strings.size
    return file.cstring(strings.offset + index, end).decode("utf-8", "replace")


# ---------------------------------------------------------------------------- version names


def _numeric(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def _sorted_versions(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=natural_key))
