"""``hpcrun plan --capture``: the host files a plan was made from, as a tar.gz that replays it.

Discovery is run once more on a ``RecordingHostRoot``, which notes every host path that is
mapped to a file (every read, existence test, listing, glob and symlink hop goes through
``HostRoot.real``). The archive holds exactly those paths, each with the symlinks and
directories on its way, so that ``hpcrun plan --sysroot host.tar.gz`` gives the same plan,
digest included. Symlinks stay symlinks: discovery must follow them inside the capture the
way it did on the host.

What goes in, and how big (the capture of an 8-GPU node must fit in a bug report):
- Files up to ``KEEP_WHOLE`` bytes go in whole: every sysfs and procfs attribute,
  ``/etc/ld.so.cache``, ``/etc/libibverbs.d``, CDI specs, small libraries.
- Larger ELF files (``libcuda.so`` is 30-100 MB) are *hollowed*: same size, zeros everywhere
  except the ELF, program and section headers and every section that is not code or data
  (``.dynamic``, ``.dynstr``, ``.dynsym``, ``.gnu.version*``, notes). That is all discovery
  reads of a library (soname, machine, class, symbol version needs), and runs of zeros cost
  nothing in gzip. Larger files of other kinds (GSP firmware) are all zeros: only their
  existence and size can matter to a plan.
- Device nodes become empty regular files: an archive must extract without privilege, and
  discovery takes device numbers from sysfs and procfs, not from ``/dev``. FIFOs stay FIFOs.
- Sockets, which tar cannot carry but discovery tells from files (a daemon's socket is bound
  only if it is one), are listed in a manifest, ``.hpcbind-capture.json``;
  ``extract_capture`` (what ``--sysroot host.tar.gz`` uses) makes them again. A plain
  ``tar xzf`` gives everything else.
Owners become root and times zero, so two captures of one host are byte-identical. The
environment is not captured (it can hold secrets): replay with the same variables that
matter to the plan (``CUDA_VISIBLE_DEVICES``, the launcher's).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import posixpath
import socket
import stat
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hpcbind.discover import Request, make_plan
from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.plan import BindPlan

KEEP_WHOLE = 1 << 20
MANIFEST = ".hpcbind-capture.json"
MANIFEST_FORMAT = 1
CAPTURE_FIX = "give a directory, or an archive written by 'hpcrun plan --capture'"
ELF_MAGIC = b"\x7fELF"
_BULK_SECTIONS = ("SHT_PROGBITS", "SHT_NOBITS")  # code, data, bss: what hollowing drops


def _normal(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


@dataclass(frozen=True)
class RecordingHostRoot(HostRoot):
    """A HostRoot that notes each host path it maps to a file under the root."""

    touched: set[str] = field(default_factory=set, compare=False, repr=False)

    def _backing(self, path: str) -> str:
        self.touched.add(_normal(path))
        return super()._backing(path)

    def listdir(self, path: str) -> list[str]:
        # the names a listing returned must all exist again in the replay, read or not
        names = super().listdir(path)
        directory = self.resolve(path)
        self.touched.update(posixpath.join(directory, name) for name in names)
        return names

    def glob(self, pattern: str) -> list[str]:
        # HostRoot.glob walks the root itself; resolving each match notes it and its links
        matches = super().glob(pattern)
        for match in matches:
            self.resolve(match)
        return matches


def archive_paths(host: HostRoot, touched: Iterable[str]) -> list[str]:
    """Every path the replay needs: each touched path and each link and directory on its way.

    Resolving a path through a recorder notes each component with its parent already
    resolved, so every noted path can be looked at with ``lstat`` as it is.
    """
    walker = RecordingHostRoot(host.root)
    for path in touched:
        walker.resolve(path)
    return sorted(p for p in walker.touched if p != "/")


def _elf_ranges(f: io.BufferedReader) -> list[tuple[int, int]]:
    """(offset, size) of what discovery reads of an ELF file: headers and link metadata."""
    from elftools.elf.elffile import ELFFile  # only for files over KEEP_WHOLE: rare, and not cheap to import

    elf = ELFFile(f)
    h = elf.header
    return [(0, h["e_ehsize"]), (h["e_phoff"], h["e_phnum"] * h["e_phentsize"]),
            (h["e_shoff"], h["e_shnum"] * h["e_shentsize"]),
            *((s["sh_offset"], s["sh_size"]) for s in elf.iter_sections() if s["sh_type"] not in _BULK_SECTIONS)]


def _hollowed(path: Path, size: int) -> bytes:
    from elftools.common.exceptions import ELFError

    data = bytearray(size)
    with path.open("rb") as f:
        try:
            ranges = _elf_ranges(f) if f.read(len(ELF_MAGIC)) == ELF_MAGIC else []
        except ELFError:
            ranges = []  # not an ELF file after all: keep nothing but its size
        for offset, length in ranges:
            f.seek(offset)
            chunk = f.read(length)
            data[offset:offset + len(chunk)] = chunk
    return bytes(data)


def _content(path: Path) -> bytes:
    # read, never trust stat for the size: procfs files say 0 bytes and sysfs files 4096
    with path.open("rb") as f:
        head = f.read(KEEP_WHOLE + 1)
        if len(head) <= KEEP_WHOLE:
            return head
        size = os.fstat(f.fileno()).st_size
        if size < len(head):  # a big pseudo-file: text discovery read, kept whole
            return head + f.read()
    return _hollowed(path, size)


def _member(host: HostRoot, path: str, st: os.stat_result) -> tuple[tarfile.TarInfo, bytes | None]:
    """The tar entry for host path ``path`` (not a socket), whose ``lstat`` is ``st``."""
    real = host.real(path)
    info = tarfile.TarInfo(path.lstrip("/"))
    info.mode = 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o644
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(real)
        return info, None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.DIRTYPE if stat.S_ISDIR(st.st_mode) else tarfile.FIFOTYPE
        return info, None
    data = _content(real) if stat.S_ISREG(st.st_mode) else b""
    info.size = len(data)
    return info, data


def _manifest(sockets: list[str]) -> tuple[tarfile.TarInfo, bytes]:
    data = json.dumps({"format": MANIFEST_FORMAT, "sockets": sockets}, indent=1).encode()
    info = tarfile.TarInfo(MANIFEST)
    info.mode, info.size = 0o644, len(data)
    return info, data


def write_archive(host: HostRoot, touched: Iterable[str], out: Path) -> None:
    """Write the capture of ``touched`` host paths to ``out`` (tar.gz)."""
    members, sockets = [], []
    for path in archive_paths(host, touched):
        try:
            st = os.lstat(host.real(path))
            if stat.S_ISSOCK(st.st_mode):
                sockets.append(path)
            else:
                members.append(_member(host, path, st))
        except OSError:  # gone since discovery, or unreadable: the replay sees it missing, as discovery did
            continue
    members.append(_manifest(sockets))
    try:
        with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    except OSError as err:
        out.unlink(missing_ok=True)  # no half archive left behind
        raise HpcbindError(f"can't write capture {out}: {err.strerror}", "choose a writable path") from None


def _make_socket(path: Path) -> None:
    # bind through the directory's descriptor: sun_path holds 107 bytes, a capture's paths more
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def _unsafe(members: list[tarfile.TarInfo]) -> str:
    """Why extracting ``members`` could write outside the destination, or ""; a capture never does.

    Hand-written because Debian 12's Python (3.11.2) has no extraction filters (3.11.4 does).
    Symlinks may point anywhere (discovery resolves them inside the root), but nothing may be
    written through one: no member below a symlink, no member named twice.
    """
    names = [posixpath.normpath(m.name) for m in members]
    links = {name for name, m in zip(names, members) if m.issym()}
    for name, member in zip(names, members):
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            return f"{member.name} lies outside the archive's root"
        if not (member.isreg() or member.isdir() or member.issym() or member.isfifo()):
            return f"{member.name} is a device or a hard link"
        if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            return f"{member.name} lies below a symlink"
    duplicate = next((name for name, count in Counter(names).items() if count > 1), None)
    return f"{duplicate} is in it twice" if duplicate else ""


def extract_capture(archive: Path, dest: Path) -> None:
    """Unpack a capture into ``dest``, sockets included; refuses anything a capture never holds."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            problem = _unsafe(members)
            if problem:
                raise HpcbindError(f"{archive} is not an hpcrun capture: {problem}", CAPTURE_FIX)
            manifest = tar.extractfile(MANIFEST) if MANIFEST in tar.getnames() else None
            sockets = json.load(manifest)["sockets"] if manifest else []
            tar.extractall(dest, [m for m in members if m.name != MANIFEST])
        for path in sockets:
            _make_socket(dest / path.lstrip("/"))
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as err:
        raise HpcbindError(f"can't extract capture {archive}: {err}", CAPTURE_FIX) from None


@contextmanager
def sysroot(path: Path | None) -> Iterator[HostRoot]:
    """The host root for ``--sysroot``: ``/``, a directory, or a capture archive unpacked for the
    time of the block into a temporary directory that is removed after."""
    if path is None:
        yield HostRoot()
    elif path.is_dir():
        yield HostRoot(path.resolve())
    elif path.is_file():
        with tempfile.TemporaryDirectory(prefix="hpcbind-sysroot-") as tmp:
            extract_capture(path, Path(tmp))
            yield HostRoot(Path(tmp))
    else:
        raise HpcbindError(f"--sysroot {path} does not exist", CAPTURE_FIX)


def capture(request: Request, host: HostRoot = HostRoot(), env: Mapping[str, str] = os.environ,
            image: Path | None = None, *, out: Path) -> BindPlan:
    """Make the plan for ``request`` and write the host files it was made from to ``out``."""
    recorder = RecordingHostRoot(host.root)
    plan = make_plan(request, recorder, env, image)
    write_archive(host, recorder.touched, out)
    return plan
