"""ld.so.cache parsing, checked entry by entry against the real ldconfig: caches it writes in
all three layouts (new, old, compat) over libraries gcc builds here, the host's own cache, and
caches assembled byte by byte from glibc's documented structs (dl-cache.h)."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosts_gpu import SharedLib, install_lib, run_ldconfig
from hpcbind.errors import HpcbindError
from hpcbind.host.ldcache import LdEntry, native_abi, parse_ldcache, read_ldcache
from hpcbind.hostroot import HostRoot

LIB64 = "/usr/lib/x86_64-linux-gnu"
LIB32 = "/usr/lib/i386-linux-gnu"
OPT = "/opt/vendor/lib"

LIBS = {
    f"{LIB64}/libcuda.so.550.54.15": SharedLib("libcuda.so.1"),
    f"{LIB64}/libnvidia-ml.so.550.54.15": SharedLib("libnvidia-ml.so.1"),
    f"{OPT}/libnvidia-ml.so.535.104.05": SharedLib("libnvidia-ml.so.1"),
    f"{LIB64}/libz.so.1.2.13": SharedLib("libz.so.1"),
    f"{LIB64}/glibc-hwcaps/x86-64-v3/libz.so.1.2.13": SharedLib("libz.so.1"),
    f"{LIB32}/libcuda.so.550.54.15": SharedLib("libcuda.so.1", bits=32),
}
DIRS = (LIB64, LIB32, OPT)

# ldconfig -p: "\tlibz.so.1 (libc6,x86-64, hwcap: "x86-64-v3") => /usr/lib/.../libz.so.1"
PRINTED = re.compile(r'^\t(\S+) \(([^,)]+(?:,[^,)]+)*?)(?:, hwcap: (.+?))?\) => (.+)$')


def ldconfig_p(cache: Path) -> list[tuple[str, str, str, str]]:
    out = subprocess.run(["ldconfig", "-p", "-C", str(cache)], capture_output=True, text=True,
                         check=True).stdout
    return [m.groups(default="") for line in out.splitlines() if (m := PRINTED.match(line))]


def as_printed(entry: LdEntry) -> tuple[str, str, str, str]:
    hwcap = f'"{entry.hwcap_subdir}"' if entry.hwcap_subdir else (
        f"{entry.hwcap:#018x}" if entry.hwcap else "")
    return (entry.soname, entry.abi, hwcap, entry.path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ldroot")
    for path, lib in LIBS.items():
        install_lib(root, path, lib)
    for fmt in ("old", "compat", "new"):
        run_ldconfig(root, DIRS, fmt, cache=f"/etc/ld.so.cache.{fmt}")
    run_ldconfig(root, DIRS)
    return root


EXPECTED_NEW = [
    # ldconfig's order: by soname (descending, as ld.so searches), hwcaps entries first
    ("libz.so.1", "libc6,x86-64", '"x86-64-v3"', f"{LIB64}/glibc-hwcaps/x86-64-v3/libz.so.1.2.13"),
    ("libz.so.1", "libc6,x86-64", "", f"{LIB64}/libz.so.1"),
    ("libnvidia-ml.so.1", "libc6,x86-64", "", f"{LIB64}/libnvidia-ml.so.1"),
    ("libnvidia-ml.so.1", "libc6,x86-64", "", f"{OPT}/libnvidia-ml.so.1"),
    ("libcuda.so.1", "libc6,x86-64", "", f"{LIB64}/libcuda.so.1"),
    ("libcuda.so.1", "libc6", "", f"{LIB32}/libcuda.so.1"),
]


def test_new_format_matches_ldconfig(root: Path) -> None:
    entries = read_ldcache(HostRoot(root))
    assert [as_printed(e) for e in entries] == ldconfig_p(root / "etc/ld.so.cache") == EXPECTED_NEW


def test_old_format_matches_ldconfig(root: Path) -> None:
    entries = read_ldcache(HostRoot(root), "/etc/ld.so.cache.old")
    expected = [(s, abi, "", path) for s, abi, _, path in EXPECTED_NEW]  # no hwcap field in 1.7.0
    assert [as_printed(e) for e in entries] == ldconfig_p(root / "etc/ld.so.cache.old") == expected


def test_compat_format_reads_the_new_table_hidden_in_the_old(root: Path) -> None:
    data = (root / "etc/ld.so.cache.compat").read_bytes()
    assert data.startswith(b"ld.so-1.7.0") and b"glibc-ld.so.cache1.1" in data
    entries = read_ldcache(HostRoot(root), "/etc/ld.so.cache.compat")
    # ldconfig -p of glibc 2.36 resolves the hwcaps name of a compat file from the wrong base
    # (it prints garbage); every other field must agree with it, and the name with the new file
    printed = ldconfig_p(root / "etc/ld.so.cache.compat")
    assert [as_printed(e)[:2] + as_printed(e)[3:] for e in entries] == [p[:2] + p[3:] for p in printed]
    assert [as_printed(e) for e in entries] == EXPECTED_NEW


def test_entries_decode_arch_and_elf_class(root: Path) -> None:
    entries = read_ldcache(HostRoot(root))
    assert [(e.kind, e.arch, e.elf_class, e.machine) for e in entries] == (
        [("libc6", "x86-64", "ELFCLASS64", "EM_X86_64")] * 5 + [("libc6", "i386", "ELFCLASS32", "EM_386")])
    assert native_abi(entries) == ("ELFCLASS64", "EM_X86_64")
    assert entries[0].hwcap == 1 << 62  # DL_CACHE_HWCAP_EXTENSION, subdirectory index 0


def test_host_cache_matches_ldconfig() -> None:
    entries = read_ldcache(HostRoot())
    assert entries
    assert [as_printed(e) for e in entries] == ldconfig_p(Path("/etc/ld.so.cache"))


def test_missing_cache_is_empty(tmp_path: Path) -> None:
    assert read_ldcache(HostRoot(tmp_path)) == ()


def test_empty_cache_is_empty(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/ld.so.cache").write_bytes(b"")
    assert read_ldcache(HostRoot(tmp_path)) == ()


# --- caches assembled by hand from the structs of sysdeps/generic/dl-cache.h --------------


def old_cache(entries: list[tuple[int, str, str]], order: str = "<") -> bytes:
    """struct cache_file {char magic[11]; unsigned nlibs; struct file_entry libs[];} and the
    string table right after libs[], which key/value offsets count from."""
    strings = bytearray()
    table = []
    for flags, key, value in entries:
        offsets = []
        for text in (key, value):
            offsets.append(len(strings))
            strings += text.encode() + b"\0"
        table.append(struct.pack(order + "iII", flags, *offsets))
    header = b"ld.so-1.7.0" + b"\0" + struct.pack(order + "I", len(entries))
    return header + b"".join(table) + bytes(strings)


def new_cache(entries: list[tuple[int, str, str, int]], order: str = ">") -> bytes:
    """struct cache_file_new (48 bytes: magic, version, nlibs, len_strings, flags, pad,
    extension_offset, unused[3]) and file_entry_new; offsets count from the header."""
    count = len(entries)
    strings_at = 48 + 24 * count
    strings = bytearray()
    table = []
    for flags, key, value, hwcap in entries:
        offsets = []
        for text in (key, value):
            offsets.append(strings_at + len(strings))
            strings += text.encode() + b"\0"
        table.append(struct.pack(order + "iIIIQ", flags, *offsets, 0, hwcap))
    endian = 3 if order == ">" else 2
    header = b"glibc-ld.so.cache" + b"1.1" + struct.pack(order + "IIB3xI12x", count, len(strings),
                                                        endian, 0)
    return header + b"".join(table) + bytes(strings)


AARCH64_ENTRIES = [
    (0x0A03, "libcuda.so.1", "/usr/lib/aarch64-linux-gnu/libcuda.so.1"),
    (0x0903, "libcuda.so.1", "/usr/lib/arm-linux-gnueabihf/libcuda.so.1"),
    (0x0003, "libc.so.6", "/usr/lib/arm-linux-gnueabi/libc.so.6"),
]


@pytest.mark.parametrize("order", ["<", ">"])
def test_old_format_built_from_the_struct(order: str) -> None:
    entries = parse_ldcache(old_cache(AARCH64_ENTRIES, order), "ld.so.cache")
    assert [(e.flags, e.soname, e.path) for e in entries] == AARCH64_ENTRIES
    assert [(e.abi, e.arch, e.elf_class, e.machine) for e in entries] == [
        ("libc6,AArch64", "aarch64", "ELFCLASS64", "EM_AARCH64"),
        ("libc6,hard-float", "arm-hf", "ELFCLASS32", "EM_ARM"),
        ("libc6", "arm", "ELFCLASS32", "EM_ARM"),
    ]
    assert native_abi(entries) == ("ELFCLASS64", "EM_AARCH64")


def test_big_endian_new_format_of_a_ppc64_capture() -> None:
    data = new_cache([(0x0503, "libcuda.so.1", "/usr/lib64/libcuda.so.1", 0),
                      (0x0003, "libcuda.so.1", "/usr/lib/libcuda.so.1", 0)])
    entries = parse_ldcache(data, "ld.so.cache")
    assert [(e.soname, e.path, e.abi, e.machine) for e in entries] == [
        ("libcuda.so.1", "/usr/lib64/libcuda.so.1", "libc6,64bit", "EM_PPC64"),
        ("libcuda.so.1", "/usr/lib/libcuda.so.1", "libc6", "EM_PPC"),
    ]


def test_ldconfig_reads_the_hand_built_old_cache(tmp_path: Path) -> None:
    # the hand-built layout is the one glibc's own reader accepts
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(old_cache([(0x0303, "libfoo.so.1", "/lib/libfoo.so.1")]))
    assert ldconfig_p(cache) == [("libfoo.so.1", "libc6,x86-64", "", "/lib/libfoo.so.1")]


# --- defensive parsing --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["new", "old", "compat"])
def test_every_truncation_is_an_error_naming_the_file(root: Path, tmp_path: Path, fmt: str) -> None:
    data = (root / f"etc/ld.so.cache.{fmt}").read_bytes()
    for size in range(1, len(data)):
        with pytest.raises(HpcbindError) as err:
            parse_ldcache(data[:size], "/etc/ld.so.cache")
        assert "/etc/ld.so.cache is not a readable ld.so.cache" in str(err.value)
    cut = tmp_path / "etc/ld.so.cache"
    cut.parent.mkdir()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(HpcbindError, match="rebuild it with 'ldconfig' as root") as err:
        read_ldcache(HostRoot(tmp_path))
    assert str(err.value).startswith(f"{cut} is not a readable ld.so.cache")


@pytest.mark.parametrize("data", [b"not a cache at all", b"glibc-ld.so.cache1.0" + b"\0" * 60,
                                  b"ld.so-1.7.0\0" + struct.pack("<I", 10**6)])
def test_garbage_is_an_error(data: bytes) -> None:
    with pytest.raises(HpcbindError, match="/x/ld.so.cache is not a readable ld.so.cache"):
        parse_ldcache(data, "/x/ld.so.cache")


def test_invalid_endianness_flag_is_an_error() -> None:
    data = bytearray(new_cache([(0x0303, "a", "/a", 0)], "<"))
    data[28] = 1  # cache_file_new_flags_endian_invalid
    with pytest.raises(HpcbindError, match="marks it invalid"):
        parse_ldcache(bytes(data), "c")


def test_hwcaps_index_outside_the_extension_is_an_error() -> None:
    data = new_cache([(0x0303, "a", "/a", 1 << 62 | 5)], "<")
    with pytest.raises(HpcbindError, match="glibc-hwcaps index 5"):
        parse_ldcache(data, "c")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=16))
def test_corrupted_cache_is_entries_or_an_error(root: Path, edits) -> None:
    data = bytearray((root / "etc/ld.so.cache.compat").read_bytes())
    for offset, value in edits:
        data[offset % len(data)] = value
    try:
        entries = parse_ldcache(bytes(data), "c")
    except HpcbindError as err:
        assert str(err).startswith("c is not a readable ld.so.cache")
    else:
        assert all(isinstance(e, LdEntry) for e in entries)
