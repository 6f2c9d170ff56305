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
from dataclasses import dataclass
from pathlib import Path

_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a loop in a capture must not hang discovery


@dataclass(frozen=True, slots=True)
class HostRoot:
    root: Path = Path("/")

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
        parts = [p for p in path.split("/") if p]
        resolved = "/"
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
            return self.real(self.resolve(path)).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.real(self.resolve(path)).read_bytes()
        except OSError:
            return None

    def read_value(self, path: str) -> str | None:
        """A one-value sysfs/procfs attribute, stripped."""
        text = self.read_text(path)
        return None if text is None else text.strip()

    def listdir(self, path: str) -> list[str]:
        """Sorted entry names; empty when the directory is missing."""
        try:
            return sorted(os.listdir(self.real(self.resolve(path))))
        except OSError:
            return []

    def glob(self, pattern: str) -> list[str]:
        """Host-absolute paths matching ``pattern`` (sorted), found under the root."""
        return sorted("/" + p.relative_to(self.root).as_posix()
                      for p in self.root.glob(pattern.lstrip("/")))
