"""The host as discovery sees it: a path prefix, ``/`` live or a captured tree (``--sysroot``).

Discovery reads the host only through a ``HostRoot`` so that every probe runs unchanged on a
laptop against a capture (hwloc's ``hwloc-gather-topology`` trees, ``hpcrun plan --capture``
tarballs, or fixtures built from the kernel's documented sysfs layout). Paths given to and
returned by a ``HostRoot`` are host-absolute ("/sys/class/infiniband"); ``real()`` maps them to
the file that backs them under the root.

Symlinks are followed *inside* the root: an absolute link target in a capture
("/sys/devices/...") means the capture's own file, never the live machine's.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a loop in a capture must not hang discovery


@dataclass(frozen=True, slots=True)
class HostRoot:
    root: Path = Path("/")
    _directories: dict[str, str] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    def real(self, path: str) -> Path:
        """The file backing host path ``path`` under this root (no symlink resolution)."""
        return Path(self._backing(path))

    def _backing(self, path: str) -> str:
        """``real`` as a string: the one place a host path becomes a file path (a recorder
        overrides it to note every file and link discovery looks at)."""
        return str(self.root).rstrip("/") + "/" + path.lstrip("/")

    def resolve(self, path: str) -> str:
        """Host-absolute ``path`` with every symlink followed inside the root."""
        head, _, name = path.rstrip("/").rpartition("/")
        return self._walk(self._directory(head), [name])

    def _directory(self, path: str) -> str:
        """``resolve`` of a directory, remembered: discovery reads dozens of attributes in
        each sysfs directory, and walking every path from the root, one readlink a component,
        was most of a plan's time. A HostRoot is one look at the host, as a plan is."""
        resolved = self._directories.get(path)
        if resolved is None:
            head, _, name = path.rpartition("/")
            parent = self._directory(head) if head else "/"
            resolved = self._directories[path] = self._walk(parent, [name])
        return resolved

    def _walk(self, resolved: str, parts: list[str]) -> str:
        """``resolved`` (a resolved directory) joined with ``parts``, links followed."""
        parts = [p for p in parts if p]
        links = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                resolved = posixpath.dirname(resolved)
                continue
            candidate = posixpath.join(resolved, part)
            try:
                # a string, not a Path: this runs for each component of every path discovery
                # reads (a Path each was a quarter of an 8-GPU node's plan time)
                target = os.readlink(self._backing(candidate))
            except OSError:
                resolved = candidate
                continue
            links += 1
            if links > _MAX_LINKS:
                return candidate
            if target.startswith("/"):
                resolved = "/"
            parts = [p for p in target.split("/") if p] + parts
        return resolved

    def exists(self, path: str) -> bool:
        return self.real(self.resolve(path)).exists()

    def is_dir(self, path: str) -> bool:
        return self.real(self.resolve(path)).is_dir()

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when it is missing or unreadable (a fact, not an error)."""
        try:
            with open(self._backing(self.resolve(path)), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with open(self._backing(self.resolve(path)), "rb") as f:
                return f.read()
        except OSError:
            return None

    def read_value(self, path: str) -> str | None:
        """A one-value sysfs/procfs attribute, stripped."""
        text = self.read_text(path)
        return None if text is None else text.strip()

    def listdir(self, path: str) -> list[str]:
        """Sorted entry names; empty when the directory is missing."""
        try:
            return sorted(os.listdir(self._backing(self.resolve(path))))
        except OSError:
            return []

    def glob(self, pattern: str) -> list[str]:
        """Host-absolute paths matching ``pattern`` (sorted), found under the root."""
        return sorted("/" + p.relative_to(self.root).as_posix()
                      for p in self.root.glob(pattern.lstrip("/")))
