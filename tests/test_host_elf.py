"""ELF facts checked against binutils' readelf on real files (libraries gcc builds here with
known sonames and symbol versions, and the host's own glibc, libstdc++ and libibverbs) and
against pyelftools, field by field, on every ELF file of the host's library and program
directories, on the foreign-architecture files of the SIF corpus and on synthetic libraries of
every class and byte order. pyelftools is the oracle because hpcbind read these facts with it
until its own reader replaced it for speed (hpcbind/host/elf.py says why)."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import stat
import struct
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import SIF_CORPUS
from hosts_gpu import SharedLib, compile_lib
from hpcbind.host.elf import ElfInfo, elf_info, max_version

HOST_LIBS = [
    Path("/lib/x86_64-linux-gnu/libc.so.6"),
    Path("/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
    Path("/usr/lib/x86_64-linux-gnu/libibverbs.so.1"),
]

FIXTURE = SharedLib(
    soname="libfixture.so.3",
    needs=("GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.17", "GLIBC_2.34", "GLIBCXX_3.4.29"),
    defines=("FIXTURE_1.0", "FIXTURE_1.10", "FIXTURE_1.9", "FIXTURE_PRIVATE_3"),
)


def readelf(path: Path) -> dict:
    """soname, needed, version needs and definitions as binutils prints them."""
    dynamic = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True).stdout
    versions = subprocess.run(["readelf", "-VW", str(path)], capture_output=True, text=True).stdout
    header = subprocess.run(["readelf", "-hW", str(path)], capture_output=True, text=True).stdout
    needs: dict[str, set[str]] = {}
    current = ""
    for line in versions.splitlines():
        if m := re.search(r"File: (\S+)", line):
            current = m.group(1)
            needs.setdefault(current, set())
        elif (m := re.search(r"^\s+0x\w+:\s+Name: (\S+)\s+Flags:", line)) and current:
            needs[current].add(m.group(1))
    defs = set(re.findall(r"Flags: none\s+Index: \d+\s+Cnt: \d+\s+Name: (\S+)", versions))
    soname = re.search(r"\(SONAME\)\s+Library soname: \[(.*)\]", dynamic)
    return {
        "class": re.search(r"Class:\s+(\S+)", header).group(1),
        "soname": soname.group(1) if soname else "",
        "needed": re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic),
        "needs": needs,
        "defs": defs,
    }


# ------------------------------------------------------------------- the pyelftools oracle

# What pyelftools raises on files it cannot read (found by fuzzing it)
PYELFTOOLS_ERRORS = (ELFError, OSError, ValueError, AssertionError, IndexError, KeyError,
                     OverflowError, struct.error)


def facts(info: ElfInfo | None) -> dict | None:
    """What an ElfInfo says, versions as sets (their order is tested on its own:
    test_built_library_has_exactly_what_it_was_built_with)."""
    if info is None:
        return None
    return {"class": info.elf_class, "machine": info.machine, "soname": info.soname,
            "needed": info.needed, "defs": set(info.version_defs),
            "needs": {lib: set(versions) for lib, versions in info.version_needs.items()}}


def pyelftools_facts(path: Path) -> dict | None:
    """The same facts as pyelftools reads them: from the sections, as hpcbind once did."""
    soname, needed, needs, defs = "", [], {}, set()
    try:
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_SONAME":
                            soname = tag.soname
                        elif tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
                elif isinstance(section, GNUVerNeedSection):
                    for verneed, auxiliaries in section.iter_versions():
                        needs.setdefault(verneed.name, set()).update(a.name for a in auxiliaries)
                elif isinstance(section, GNUVerDefSection):
                    for verdef, auxiliaries in section.iter_versions():
                        if not verdef["vd_flags"] & VER_FLG_BASE:
                            defs.add(next(auxiliaries).name)
            return {"class": elf["e_ident"]["EI_CLASS"], "machine": str(elf["e_machine"]),
                    "soname": soname, "needed": tuple(needed), "defs": defs, "needs": needs}
    except PYELFTOOLS_ERRORS:
        return None


def disagreements(paths: list[Path]) -> dict[str, tuple[dict | None, dict | None]]:
    """path -> (elf_info's facts, pyelftools' facts), where they differ."""
    found = {}
    for path in paths:
        ours, theirs = facts(elf_info(path)), pyelftools_facts(path)
        if ours != theirs:
            found[str(path)] = (ours, theirs)
    return found


def elf_files(tops: list[Path]) -> list[Path]:
    """The ELF files under ``tops``, in that order and sorted within each, one path per
    file (links and hard links skipped)."""
    seen, found = set(), []
    for top in tops:
        for path in sorted(top.rglob("*")):
            meta = path.lstat()
            identity = (meta.st_dev, meta.st_ino)
            if stat.S_ISREG(meta.st_mode) and identity not in seen and is_elf(path):
                seen.add(identity)
                found.append(path)
    return found


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(4) == b"\x7fELF"
    except OSError:
        return False


# The host's libraries first: they are what hpcbind reads
ORACLE_DIRS = [Path(d) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/gcc", "/usr/libexec",
                                 "/usr/bin")]
ORACLE_LIMIT = 3000


@pytest.fixture(scope="module")
def host_elf_files() -> list[Path]:
    return elf_files(ORACLE_DIRS)[:ORACLE_LIMIT]


@pytest.fixture(scope="module")
def sif_elf_files(tmp_path_factory) -> list[Path]:
    """The distinct ELF files of the corpus' busybox images (amd64, arm64, ppc64le: glibc,
    its libraries and busybox), extracted with the real unsquashfs."""
    from hpcbind.image.sif import SifImage

    found: dict[bytes, Path] = {}
    for sif in sorted((SIF_CORPUS / "singularityce" / "images").glob("busybox_*.sif")):
        root = tmp_path_factory.mktemp(sif.stem) / "root"
        offset = SifImage.open(sif).primary_partition().offset
        subprocess.run(["unsquashfs", "-q", "-n", "-o", str(offset), "-d", str(root), str(sif)],
                       check=True, capture_output=True)
        for path in elf_files([root]):
            found.setdefault(hashlib.sha256(path.read_bytes()).digest(), path)
    return list(found.values())


# ---------------------------------------------------------------- synthetic ELF libraries

# elf.h
VER_FLG_BASE = 0x1
SHT_STRTAB, SHT_DYNAMIC, SHT_GNU_VERDEF, SHT_GNU_VERNEED = 3, 6, 0x6FFFFFFD, 0x6FFFFFFE
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14
DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF

SYNTHETIC = ElfInfo(
    path="", elf_class="", machine="",
    soname="libsynthetic.so.2",
    needed=("libm.so.6", "libc.so.6"),
    version_needs={"libc.so.6": ("GLIBC_2.17", "GLIBC_2.34"), "libm.so.6": ("GLIBC_2.29",)},
    version_defs=("SYNTH_1.0", "SYNTH_1.1"),
)
# the strings in one PT_LOAD, the version and dynamic tables in another, each at its own
# distance from its file offset: a reader that confuses the two, or the segments, misreads
LOAD_BASES = (0x10000, 0x7F0000)


def synthetic_elf(bits: int, order: str, machine: int, layout: str = "plain") -> bytes:
    """A shared library of SYNTHETIC's facts, written by hand in any class and byte order.

    ``layout``: "plain"; "extended" (e_shnum 0 and the count in section 0's sh_size, as for
    65280 sections or more); "stripped" (no section headers: the dynamic segment only).
    """
    word = "I" if bits == 32 else "Q"
    ehsize, phentsize, shentsize, dynsize = (52, 32, 40, 8) if bits == 32 else (64, 56, 64, 16)
    names = [SYNTHETIC.soname, *SYNTHETIC.needed, *SYNTHETIC.version_defs,
             *(n for lib, vs in SYNTHETIC.version_needs.items() for n in (lib, *vs))]
    dynstr, index = b"\0", {}
    for name in dict.fromkeys(names):
        index[name] = len(dynstr)
        dynstr += name.encode() + b"\0"
    defined = [(VER_FLG_BASE, SYNTHETIC.soname), *((0, d) for d in SYNTHETIC.version_defs)]
    verdef = b"".join(
        struct.pack(order + "HHHHIII", 1, flags, ndx, 1, 0, 20, 28 * (ndx < len(defined)))
        + struct.pack(order + "II", index[name], 0)
        for ndx, (flags, name) in enumerate(defined, 1))
    needs = list(SYNTHETIC.version_needs.items())
    verneed = b"".join(
        struct.pack(order + "HHIII", 1, len(vs), index[lib], 16,
                    (16 + 16 * len(vs)) * (i + 1 < len(needs)))
        + b"".join(struct.pack(order + "IHHII", 0, 0, 2 + j, index[v], 16 * (j + 1 < len(vs)))
                   for j, v in enumerate(vs))
        for i, (lib, vs) in enumerate(needs))
    phoff = ehsize
    dynstr_at = phoff + 3 * phentsize
    verdef_at = align(dynstr_at + len(dynstr))  # the second PT_LOAD starts here
    verneed_at = verdef_at + len(verdef)
    dynamic_at = align(verneed_at + len(verneed))

    def vaddr(offset: int) -> int:
        return LOAD_BASES[offset >= verdef_at] + offset

    tags = [*((DT_NEEDED, index[n]) for n in SYNTHETIC.needed),
            (DT_SONAME, index[SYNTHETIC.soname]), (DT_STRTAB, vaddr(dynstr_at)),
            (DT_STRSZ, len(dynstr)), (DT_VERDEF, vaddr(verdef_at)), (DT_VERDEFNUM, len(defined)),
            (DT_VERNEED, vaddr(verneed_at)), (DT_VERNEEDNUM, len(needs)), (DT_NULL, 0)]
    dynamic = b"".join(struct.pack(order + word * 2, tag, value) for tag, value in tags)
    shstrtab = b"\0.dynstr\0.gnu.version_d\0.gnu.version_r\0.dynamic\0.shstrtab\0"
    shstrtab_at = dynamic_at + len(dynamic)
    shoff = align(shstrtab_at + len(shstrtab))

    def segment(p_type: int, offset: int, size: int) -> bytes:
        fields = (p_type, offset, vaddr(offset), vaddr(offset), size, size)
        if bits == 32:
            return struct.pack(order + "8I", *fields, 4, 8)
        return struct.pack(order + "IIQQQQQQ", p_type, 4, *fields[1:], 8)

    shdr = struct.Struct(order + f"II{word * 4}II{word * 2}")

    def section(name: str, sh_type: int, offset: int, data: bytes, link: int = 0, info: int = 0,
                entsize: int = 0) -> bytes:
        sh_name = shstrtab.index(b"\0" + name.encode() + b"\0") + 1 if name else 0
        return shdr.pack(sh_name, sh_type, 0, 0, offset, len(data), link, info, 1, entsize)

    headers = [section("", 0, 0, b""), section(".dynstr", SHT_STRTAB, dynstr_at, dynstr),
               section(".gnu.version_d", SHT_GNU_VERDEF, verdef_at, verdef, 1, len(defined)),
               section(".gnu.version_r", SHT_GNU_VERNEED, verneed_at, verneed, 1, len(needs)),
               section(".dynamic", SHT_DYNAMIC, dynamic_at, dynamic, 1, 0, dynsize),
               section(".shstrtab", SHT_STRTAB, shstrtab_at, shstrtab)]
    shnum, shstrndx = len(headers), len(headers) - 1
    if layout == "extended":
        headers[0] = shdr.pack(0, 0, 0, 0, 0, len(headers), 0, 0, 0, 0)
        shnum = 0
    elif layout == "stripped":
        headers, shoff, shnum, shstrndx = [], 0, 0, 0
    ident = b"\x7fELF" + bytes([bits // 32, 1 if order == "<" else 2, 1]) + bytes(9)
    header = struct.pack(order + f"16sHHI{word * 3}IHHHHHH", ident, 3, machine, 1, 0, phoff, shoff,
                         0, ehsize, phentsize, 3, shentsize, shnum, shstrndx)
    data = bytearray(shoff + len(b"".join(headers)) if headers else shstrtab_at + len(shstrtab))
    for at, chunk in [(0, header), (phoff, segment(PT_LOAD, 0, verdef_at)),
                      (phoff + phentsize, segment(PT_LOAD, verdef_at, shstrtab_at - verdef_at)),
                      (phoff + 2 * phentsize, segment(PT_DYNAMIC, dynamic_at, len(dynamic))),
                      (dynstr_at, dynstr), (verdef_at, verdef), (verneed_at, verneed),
                      (dynamic_at, dynamic), (shstrtab_at, shstrtab), (shoff, b"".join(headers))]:
        data[at:at + len(chunk)] = chunk
    return bytes(data)


def align(offset: int) -> int:
    return -(-offset // 8) * 8


def without_section_headers(data: bytes) -> bytes:
    """``data`` with its section header table forgotten (e_shoff, e_shnum, e_shstrndx 0), as
    sstrip does."""
    order = "<" if data[5] == 1 else ">"
    shoff_at, shnum_at = (32, 48) if data[4] == 1 else (40, 60)
    out = bytearray(data)
    struct.pack_into(order + ("I" if data[4] == 1 else "Q"), out, shoff_at, 0)
    struct.pack_into(order + "HH", out, shnum_at, 0, 0)
    return bytes(out)


@pytest.fixture(scope="module")
def fixture_lib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("elf") / "libfixture.so.3.0"
    path.write_bytes(compile_lib(FIXTURE))
    return path


@pytest.mark.parametrize("path", HOST_LIBS, ids=lambda p: p.name)
def test_host_libraries_match_readelf(path: Path) -> None:
    info = elf_info(path)
    expected = readelf(path)
    assert info is not None
    assert info.path == str(path)
    assert (info.elf_class, info.machine) == ("ELFCLASS64", "EM_X86_64")
    assert info.soname == expected["soname"]
    assert list(info.needed) == expected["needed"]
    assert {lib: set(v) for lib, v in info.version_needs.items()} == expected["needs"]
    assert set(info.version_defs) == expected["defs"]


def test_built_library_has_exactly_what_it_was_built_with(fixture_lib: Path) -> None:
    info = elf_info(fixture_lib)
    assert info == ElfInfo(
        path=str(fixture_lib),
        elf_class="ELFCLASS64",
        machine="EM_X86_64",
        soname="libfixture.so.3",
        needed=("libstdc++.so.6", "libc.so.6"),
        version_needs={
            "libc.so.6": ("GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.17", "GLIBC_2.34"),
            "libstdc++.so.6": ("GLIBCXX_3.4.29",),
        },
        # the base definition (the soname itself) is not a version; numbers sort as numbers
        version_defs=("FIXTURE_1.0", "FIXTURE_1.9", "FIXTURE_1.10", "FIXTURE_PRIVATE_3"),
    )
    assert info.needs == ("GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.17", "GLIBC_2.34", "GLIBCXX_3.4.29")
    assert readelf(fixture_lib)["defs"] == set(info.version_defs)


def test_32bit_library(tmp_path: Path) -> None:
    path = tmp_path / "libcuda.so.550.54.15"
    path.write_bytes(compile_lib(SharedLib("libcuda.so.1", bits=32)))
    info = elf_info(path)
    assert (info.elf_class, info.machine, info.soname) == ("ELFCLASS32", "EM_386", "libcuda.so.1")
    assert info.needed == ("libc.so.6",)
    assert readelf(path)["class"] == "ELF32"


def test_executable_without_soname() -> None:
    info = elf_info(Path("/bin/true"))
    assert info.soname == ""
    assert "libc.so.6" in info.needed
    assert max_version(info.needs, "GLIBC") is not None


@pytest.mark.parametrize("content", [b"", b"\x7fEL", b"#!/bin/sh\necho hi\n", b"\x7fELF" + b"\0" * 12,
                                     b"\x7fELF\x02\x01\x01" + b"\xff" * 200])
def test_garbage_is_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(content)
    assert elf_info(path) is None


def test_missing_and_directory_are_none(tmp_path: Path) -> None:
    assert elf_info(tmp_path / "absent.so") is None
    assert elf_info(tmp_path) is None
    fifo = tmp_path / "fifo.so"
    os.mkfifo(fifo)
    assert elf_info(fifo) is None  # not opened: that would wait for a writer
    assert elf_info(Path("/dev/zero")) is None


def test_every_truncation_of_a_real_library_is_handled(fixture_lib: Path, tmp_path: Path) -> None:
    data = fixture_lib.read_bytes()
    path = tmp_path / "cut.so"
    full = elf_info(fixture_lib)
    for size in range(0, len(data), 97):
        path.write_bytes(data[:size])
        info = elf_info(path)  # must not raise
        assert info is None or info.elf_class == full.elf_class


@pytest.fixture(scope="module")
def seeds(fixture_lib: Path) -> list[tuple[bytes, list[tuple[int, int]]]]:
    """Libraries to corrupt, of both classes and byte orders, each with where what the reader
    reads lies in it."""
    files = [fixture_lib.read_bytes(), HOST_LIBS[2].read_bytes(),
             synthetic_elf(32, ">", ENUM_E_MACHINE["EM_PPC"]),
             synthetic_elf(64, ">", ENUM_E_MACHINE["EM_PPC64"], "extended")]
    return [(data, read_ranges(data)) for data in files]


TABLES = ("SHT_DYNAMIC", "SHT_GNU_verneed", "SHT_GNU_verdef")


def read_ranges(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the ELF, program and section headers and of the dynamic, version and
    dynamic string tables."""
    elf = ELFFile(io.BytesIO(data))
    ranges = [(0, elf["e_ehsize"]), (elf["e_phoff"], elf["e_phnum"] * elf["e_phentsize"]),
              (elf["e_shoff"], elf.num_sections() * elf["e_shentsize"])]
    for section in elf.iter_sections():
        if section["sh_type"] in TABLES or section.name == ".dynstr":
            ranges.append((section["sh_offset"], section["sh_size"]))
    return ranges


@pytest.fixture
def pread_sizes(monkeypatch) -> list[int]:
    """The sizes of the reads made from now on: elf.py reads with os.pread alone."""
    sizes: list[int] = []
    pread = os.pread

    def counted(fd: int, length: int, offset: int) -> bytes:
        sizes.append(length)
        return pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", counted)
    return sizes


MUTANTS = itertools.count()  # a new name for each: elf_info remembers facts per file identity
# (which range, where in it, how many bytes, what number)
EDIT = st.tuples(st.integers(0, 2**16), st.integers(0, 2**32), st.sampled_from([1, 2, 4, 8]),
                 st.one_of(st.just(0), st.just(-1), st.integers(0, 64), st.integers(0, 2**64 - 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 3), strip=st.booleans(), edits=st.lists(EDIT, min_size=1, max_size=16))
def test_corrupted_library_never_raises(seeds, tmp_path: Path, pread_sizes: list[int], seed: int,
                                        strip: bool, edits) -> None:
    # fields overwritten, in the file's byte order, where the reader reads: counts, offsets,
    # sizes, links, names and next pointers set to 0, -1, small or any numbers
    data, ranges = seeds[seed]
    mutant = bytearray(without_section_headers(data) if strip else data)
    byteorder = "little" if data[5] == 1 else "big"
    for which, at, width, value in edits:
        start, size = ranges[which % len(ranges)]
        offset = min(start + at % max(size, 1), len(mutant) - width)
        mutant[offset:offset + width] = (value % 256**width).to_bytes(width, byteorder)
    path = tmp_path / f"mutant{next(MUTANTS)}.so"
    path.write_bytes(bytes(mutant))
    pread_sizes.clear()
    started = time.process_time()  # CPU, which other jobs on the machine do not lengthen
    info = elf_info(path)
    event("read" if info else "refused")
    assert info is None or isinstance(info, ElfInfo)
    assert sum(pread_sizes) <= len(mutant) + 4096  # no page twice, none past the end
    assert time.process_time() - started < 1


def test_self_referencing_version_records_end_quickly(fixture_lib: Path, tmp_path: Path) -> None:
    # .gnu.version_r claims 2**31 entries and its first entry's vn_next is 0 (points at itself):
    # a reader trusting the count would walk that one record two billion times
    data = bytearray(fixture_lib.read_bytes())
    with fixture_lib.open("rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".gnu.version_r")
        header_at = elf["e_shoff"] + index * elf["e_shentsize"]
        section_at = elf.get_section(index)["sh_offset"]
    struct.pack_into("<I", data, header_at + 44, 2**31)  # Elf64_Shdr.sh_info
    struct.pack_into("<I", data, section_at + 12, 0)  # Elf64_Verneed.vn_next
    path = tmp_path / "loop.so"
    path.write_bytes(bytes(data))
    started = time.process_time()  # CPU, which other jobs on the machine do not lengthen
    assert elf_info(path) is None
    assert time.process_time() - started < 1


# ------------------------------------------------------------- against pyelftools, every file


@pytest.mark.slow
def test_every_host_elf_file_reads_as_pyelftools_reads_it(host_elf_files: list[Path]) -> None:
    assert len(host_elf_files) > 1000  # the host's libraries, programs and gcc's plugins
    assert disagreements(host_elf_files) == {}


def test_foreign_elf_files_read_as_pyelftools_reads_them(sif_elf_files: list[Path]) -> None:
    machines = {facts(elf_info(p))["machine"] for p in sif_elf_files}
    assert {"EM_X86_64", "EM_AARCH64", "EM_PPC64"} <= machines
    assert disagreements(sif_elf_files) == {}


SYNTHETIC_ABIS = [(32, "<", "EM_386"), (32, "<", "EM_ARM"), (32, ">", "EM_PPC"),
                  (64, "<", "EM_X86_64"), (64, "<", "EM_AARCH64"), (64, ">", "EM_PPC64"),
                  (64, ">", "EM_S390")]


@pytest.mark.parametrize("layout", ["plain", "extended", "stripped"])
@pytest.mark.parametrize(("bits", "order", "machine"), SYNTHETIC_ABIS)
def test_synthetic_library_of_each_class_and_byte_order(tmp_path: Path, bits: int, order: str,
                                                        machine: str, layout: str) -> None:
    path = tmp_path / "libsynthetic.so.2"
    path.write_bytes(synthetic_elf(bits, order, ENUM_E_MACHINE[machine], layout))
    expected = replace(SYNTHETIC, path=str(path), elf_class=f"ELFCLASS{bits}", machine=machine)
    assert elf_info(path) == expected
    if layout == "plain":
        assert readelf(path) == {
            "class": f"ELF{bits}", "soname": expected.soname, "needed": list(expected.needed),
            "defs": set(expected.version_defs),
            "needs": {lib: set(versions) for lib, versions in expected.version_needs.items()},
        }
    if layout == "stripped":
        # pyelftools finds dynamic and version tables through the sections only: with it,
        # hpcbind saw no soname, DT_NEEDED or versions in a file without section headers
        expected = replace(expected, soname="", needed=(), version_needs={}, version_defs=())
    assert pyelftools_facts(path) == facts(expected)


def test_real_libraries_without_section_headers_read_the_same(
        host_elf_files: list[Path], sif_elf_files: list[Path], tmp_path: Path) -> None:
    small = [p for p in host_elf_files + sif_elf_files
             if ".so" in p.name and p.stat().st_size < 1 << 20]
    libraries = [p for p in small if p in sif_elf_files] + small[:200]
    for n, path in enumerate(libraries):
        stripped = tmp_path / f"{n}.so"
        stripped.write_bytes(without_section_headers(path.read_bytes()))
        assert elf_info(stripped) == replace(elf_info(path), path=str(stripped)), path


def machine_names_compared_in_hpcbind() -> list[str]:
    sources = (Path(__file__).parents[1] / "hpcbind").rglob("*.py")
    return sorted({name for source in sources
                   for name in re.findall(r'"(EM_[A-Z0-9_]+)"', source.read_text())})


@pytest.mark.parametrize("name", machine_names_compared_in_hpcbind())
def test_machines_are_named_as_hpcbind_and_pyelftools_name_them(tmp_path: Path, name: str) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(synthetic_elf(64, "<", ENUM_E_MACHINE[name]))
    assert elf_info(path).machine == pyelftools_facts(path)["machine"] == name


def test_unknown_machine_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "lib.so"
    path.write_bytes(synthetic_elf(64, "<", 0x1234))
    # pyelftools says "4660", which reads as no machine at all
    assert elf_info(path).machine == "EM_0x1234"


@pytest.mark.parametrize(("versions", "prefix", "expected"), [
    (("GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.17"), "GLIBC", (2, 34)),
    (("GLIBC_2.9", "GLIBC_2.10"), "GLIBC", (2, 10)),
    (("GLIBC_2.2.5", "GLIBC_2.2"), "GLIBC", (2, 2, 5)),
    (("GLIBC_2.3", "GLIBCXX_3.4.29", "GLIBC_PRIVATE"), "GLIBC", (2, 3)),
    (("GLIBC_2.3", "GLIBCXX_3.4.29", "GLIBCXX_3.4"), "GLIBCXX", (3, 4, 29)),
    (("GLIBC_2.3",), "GLIBC_", (2, 3)),
    (("IBVERBS_1.1", "IBVERBS_PRIVATE_34"), "IBVERBS", (1, 1)),
    (("GLIBC_PRIVATE",), "GLIBC", None),
    ((), "GLIBC", None),
])
def test_max_version(versions, prefix, expected) -> None:
    assert max_version(versions, prefix) == expected


def test_max_version_of_host_glibc_matches_its_highest_definition() -> None:
    libc = elf_info(HOST_LIBS[0])
    ldd = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout
    release = tuple(int(p) for p in re.search(r"(\d+)\.(\d+)\s*$", ldd.splitlines()[0]).groups())
    assert max_version(libc.version_defs, "GLIBC") == release
