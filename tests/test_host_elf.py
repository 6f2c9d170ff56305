"""ELF facts checked against binutils' readelf on real files: libraries gcc builds here with
known sonames and symbol versions, and the host's own glibc, libstdc++ and libibverbs."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from elftools.elf.elffile import ELFFile
from hypothesis import strategies as st

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


def test_every_truncation_of_a_real_library_is_handled(fixture_lib: Path, tmp_path: Path) -> None:
    data = fixture_lib.read_bytes()
    path = tmp_path / "cut.so"
    full = elf_info(fixture_lib)
    for size in range(0, len(data), 97):
        path.write_bytes(data[:size])
        info = elf_info(path)  # must not raise
        assert info is None or info.elf_class == full.elf_class


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=24))
def test_corrupted_library_never_raises(fixture_lib: Path, tmp_path: Path, edits) -> None:
    data = bytearray(fixture_lib.read_bytes())
    for offset, value in edits:  # headers, section and dynamic tables live in the first 4 KiB
        data[offset % len(data)] = value
    path = tmp_path / "mutant.so"
    path.write_bytes(bytes(data))
    info = elf_info(path)
    assert info is None or isinstance(info, ElfInfo)


def test_self_referencing_version_records_end_quickly(fixture_lib: Path, tmp_path: Path) -> None:
    # .gnu.version_r claims 2**31 entries and its first entry's vn_next is 0 (points at itself):
    # pyelftools would walk that one record two billion times
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
    started = time.monotonic()
    assert elf_info(path) is None
    assert time.monotonic() - started < 1


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
