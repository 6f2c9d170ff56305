"""Fixture hosts with GPUs, built under a directory as the kernel and the drivers lay them out.

No capture covers an NVIDIA node with MIG or an AMD node, so these builders write what the
drivers write: ``/proc/driver/nvidia/...`` in the text the NVIDIA kernel module prints
(``nv-procfs.c``, ``nv-caps.c``), sysfs PCI/DRM/KFD trees as the kernel documents them, and
*real* ELF libraries compiled with gcc (sonames, ``GLIBC_*`` needs, 32-bit builds), indexed by
the real ``ldconfig -r ROOT``. The builders only add files under ``root``, so a plan test can
combine them with other builders (RDMA) into one node.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# A symbol of glibc/libstdc++ 2.36/12 whose *default* version is the key: referencing it pinned
# with .symver gives the library a real DT_VERNEED entry for that version.
_VERSIONED_SYMBOLS = {
    "GLIBC_2.2.5": "malloc",
    "GLIBC_2.14": "memcpy",
    "GLIBC_2.17": "clock_gettime",
    "GLIBC_2.34": "dlopen",
    "GLIBCXX_3.4.29": "_ZSt17__istream_extractRSiPcl",
}


@dataclass(frozen=True)
class SharedLib:
    """A tiny real shared library: its soname, the symbol versions it needs and defines."""

    soname: str
    needs: tuple[str, ...] = ("GLIBC_2.2.5",)
    defines: tuple[str, ...] = ()
    bits: int = 64


def compile_lib(lib: SharedLib) -> bytes:
    """The ELF bytes of ``lib``, built by gcc (cached: one build per distinct library)."""
    return _compiled(lib)


@functools.lru_cache(maxsize=None)
def _compiled(lib: SharedLib) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "lib.c"
        source.write_text(_source(lib))
        out = work / "lib.so"
        cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(source), f"-Wl,-soname,{lib.soname}"]
        if lib.defines:
            script = work / "versions.map"
            script.write_text(_version_script(lib.defines))
            cmd.append(f"-Wl,--version-script={script}")
        if lib.bits == 32:
            cmd += _m32_flags(work)
        elif any(v.startswith("GLIBCXX_") for v in lib.needs):
            cmd.append("-lstdc++")
        subprocess.run(cmd, check=True, capture_output=True)
        return out.read_bytes()


def _source(lib: SharedLib) -> str:
    lines = []
    needs = () if lib.bits == 32 else lib.needs
    for i, version in enumerate(needs):
        symbol = _VERSIONED_SYMBOLS[version]
        lines += [f'extern void ref{i}(void) __asm__("{symbol}");',
                  f'__asm__(".symver {symbol}, {symbol}@{version}");']
    refs = ", ".join(f"ref{i}" for i in range(len(needs)))
    lines.append(f"void (*const hpcbind_fixture_refs[])(void) = {{{refs}}};" if needs else "")
    lines += [f"void hpcbind_fixture_def{i}(void) {{}}" for i in range(max(1, len(lib.defines)))]
    return "\n".join(lines) + "\n"


def _version_script(defines: tuple[str, ...]) -> str:
    nodes, parent = [], ""
    for i, name in enumerate(defines):
        scope = "global: hpcbind_fixture_def%d;%s" % (i, " local: *;" if i == 0 else "")
        nodes.append(f"{name} {{ {scope} }} {parent};")
        parent = name
    return "\n".join(nodes) + "\n"


def _m32_flags(work: Path) -> list[str]:
    # Debian has gcc -m32 but no 32-bit libc to link against: link against a 32-bit stub with
    # libc's soname, so the library carries DT_NEEDED libc.so.6 and ldconfig files it as a
    # libc6 library, as it does a real 32-bit driver library.
    stub = work / "stub"
    stub.mkdir()
    (stub / "empty.c").write_text("void hpcbind_fixture_libc(void) {}\n")
    subprocess.run(["gcc", "-m32", "-shared", "-nostdlib", "-fPIC", "-Wl,-soname,libc.so.6",
                    "-o", str(stub / "libc.so.6"), str(stub / "empty.c")],
                   check=True, capture_output=True)
    return ["-m32", "-nostdlib", "-Wl,--no-as-needed", str(stub / "libc.so.6")]


def install_lib(root: Path, path: str, lib: SharedLib) -> Path:
    """Write ``lib`` at host path ``path`` under ``root`` (mode 0755, as installers do)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(compile_lib(lib))
    target.chmod(0o755)
    return target


def run_ldconfig(root: Path, dirs: Iterable[str], cache_format: str = "new",
                 cache: str = "/etc/ld.so.cache") -> None:
    """The real ldconfig: soname links in ``dirs`` and the cache, all under root."""
    conf = root / "etc/ld.so.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("".join(f"{d}\n" for d in dirs))
    subprocess.run(["ldconfig", "-c", cache_format, "-r", str(root),
                    "-C", cache, "-f", "/etc/ld.so.conf"],
                   check=True, capture_output=True)


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def symlink(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def unix_socket(root: Path, path: str) -> None:
    """A real unix socket file, as a daemon leaves it (bound, then the fixture lets go)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as sock:
        # bind() takes at most 107 bytes of path: bind from inside the directory
        cwd = os.getcwd()
        os.chdir(target.parent)
        try:
            sock.bind(target.name)
        finally:
            os.chdir(cwd)
