"""Subordinate ids and the user namespace ``--fakeroot`` makes of them.

A site gives each user ranges of ids in ``/etc/subuid`` and ``/etc/subgid`` (``useradd`` does
when the files exist: ``user:100000:65536``). Only the setuid helpers newuidmap and newgidmap
(Debian's ``uidmap``) may write a map holding them; the map ``--fakeroot`` asks for is root
inside = the user outside, and ids 1..N inside = the user's subordinate ids (Apptainer's
fakeroot, podman's rootless mode). A file a build ``chown``s to 4242 is then owned by a
subordinate id on the host and by 4242 in the image.

Without subordinate ids a user can still map root to themselves, alone (a "root-mapped"
namespace); ``fakeroot(1)`` then fakes the owners a one-line map cannot hold, as Apptainer
falls back. ``discover`` reads the host once; ``fakeroot_map`` is pure: the map, or the one
line saying what the site must change.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple

from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
# useradd's SUB_UID_MIN and SUB_UID_COUNT (login.defs): where a suggested range starts, and
# its size, which is also every id an image's own users commonly have (Debian's 0-65534)
FIRST_SUBORDINATE = 100000
BLOCK = 65536


class Entry(namedtuple("Entry", "owner start count line")):
    """One line of /etc/subuid or /etc/subgid: owner (a name or a numeric id), the first
    subordinate id, how many, and the line number (for messages)."""

    __slots__ = ()

    @property
    def end(self) -> int:
        """The last id of the range."""
        return self.start + self.count - 1


class Helper(namedtuple("Helper", "path privileged")):
    """newuidmap or newgidmap: its path on PATH ("" when absent), and whether it can write a
    map of other ids (setuid root, or Fedora's cap_setuid file capability)."""

    __slots__ = ()


class Facts(namedtuple("Facts", "user uid gid subuid subgid newuidmap newgidmap fakeroot")):
    """What the host offers the caller: every line of both files, the helpers, and
    ``fakeroot(1)`` on PATH ("" when absent)."""

    __slots__ = ()


class IdMap(namedtuple("IdMap", "uid_map gid_map newuidmap newgidmap fakeroot note")):
    """The user namespace to enter, root inside.

    uid_map, gid_map: (inside, outside, count) lines as /proc/PID/uid_map has them;
    newuidmap, newgidmap: the helpers that write them ("" when the process writes its own
    one-line map); fakeroot: fakeroot(1) for the owners a one-line map cannot hold ("" with
    subordinate ids); note: what the user should know about this map, or "".
    """

    __slots__ = ()

    @property
    def subordinate(self) -> bool:
        return len(self.uid_map) > 1

    @property
    def highest(self) -> tuple[int, int]:
        """The highest uid and gid inside."""
        return (max(inside + count - 1 for inside, _, count in self.uid_map),
                max(inside + count - 1 for inside, _, count in self.gid_map))


# ---------------------------------------------------------------------------- discovery


def discover(root: HostRoot, user: str, uid: int, gid: int, path_env: str) -> Facts:
    """The caller's facts: /etc/subuid and /etc/subgid under ``root``, the helpers and
    fakeroot(1) on ``path_env`` (a PATH)."""
    return Facts(user, uid, gid, parse(_read(root, SUBUID)), parse(_read(root, SUBGID)),
                 helper(which("newuidmap", path_env)), helper(which("newgidmap", path_env)),
                 which("fakeroot", path_env))


def _read(root: HostRoot, name: str) -> str:
    try:
        return root.real(name).read_text(errors="replace")
    except OSError:
        return ""  # no file is no subordinate ids, as for shadow's tools


def parse(text: str) -> tuple[Entry, ...]:
    """The well-formed lines of a subuid/subgid file (shadow ignores the others too)."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] and fields[1].isdigit() and fields[2].isdigit() \
                and int(fields[2]) > 0:
            entries.append(Entry(fields[0], int(fields[1]), int(fields[2]), number))
    return tuple(entries)


def which(name: str, path_env: str) -> str:
    for directory in path_env.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return ""


def helper(path: str) -> Helper:
    if not path:
        return Helper("", False)
    try:
        st = os.stat(path)
    except OSError:
        return Helper(path, False)
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return Helper(path, True)
    try:
        os.getxattr(path, "security.capability")
        return Helper(path, True)
    except OSError:
        return Helper(path, False)


# --------------------------------------------------------------------------------- plan


def fakeroot_map(facts: Facts, *, fake_owners: bool) -> IdMap:
    """The namespace ``--fakeroot`` enters, or an HpcbindError naming what the site must do.

    ``fake_owners``: whether a root-mapped namespace needs fakeroot(1) (a build, which must
    record the owners its scripts set) or may do without (``exec``, ``shell``).
    """
    subuids = ranges_of(facts.subuid, facts.user, facts.uid)
    subgids = ranges_of(facts.subgid, facts.user, facts.uid)
    if subuids and subgids:
        _check_own(facts, subuids, subgids)
        for name, tool in (("newuidmap", facts.newuidmap), ("newgidmap", facts.newgidmap)):
            _check_helper(name, tool)
        return IdMap(_lines(facts.uid, subuids), _lines(facts.gid, subgids),
                     facts.newuidmap.path, facts.newgidmap.path, "", "")
    line = f"{facts.user}:{free_start(facts.subuid + facts.subgid)}:{BLOCK}"
    missing = " and ".join(name for name, found in ((SUBUID, subuids), (SUBGID, subgids))
                           if not found)
    if fake_owners and not facts.fakeroot:
        raise HpcbindError(
            f"--fakeroot: {facts.user} has no subordinate ids in {missing}, and fakeroot(1) "
            "is not installed to fake file owners instead",
            f"ask the site to add the line '{line}' to /etc/subuid and /etc/subgid (or to "
            "install fakeroot)")
    how = "fakeroot(1) recording file owners" if fake_owners else "and no other id exists inside"
    note = (f"no subordinate ids for {facts.user} in {missing}: root is mapped to you alone, "
            f"{how} (the line '{line}' in /etc/subuid and /etc/subgid gives the full map)")
    return IdMap(((0, facts.uid, 1),), ((0, facts.gid, 1),), "", "",
                 facts.fakeroot if fake_owners else "", note)


def ranges_of(entries: tuple[Entry, ...], user: str, uid: int) -> tuple[Entry, ...]:
    """The user's lines: shadow matches the owner field by name or by numeric id."""
    return tuple(e for e in entries if e.owner in (user, str(uid)))


def _check_own(facts: Facts, subuids: tuple[Entry, ...], subgids: tuple[Entry, ...]) -> None:
    for path, entries, mine, own_id in ((SUBUID, facts.subuid, subuids, facts.uid),
                                        (SUBGID, facts.subgid, subgids, facts.gid)):
        kind = "uid" if path == SUBUID else "gid"
        for entry in mine:
            if entry.start <= own_id <= entry.end:
                raise HpcbindError(
                    f"--fakeroot: your subordinate {kind}s {entry.start}-{entry.end} "
                    f"({path}:{entry.line}) include your own {kind} {own_id}",
                    "ask the site to give you a range apart from your own id")
            clash = _overlapping(entry, entries, mine)
            if clash is not None:
                raise HpcbindError(
                    f"--fakeroot: your subordinate {kind}s {entry.start}-{entry.end} "
                    f"({path}:{entry.line}) overlap those of {clash.owner} "
                    f"({clash.start}-{clash.end}, {path}:{clash.line}): a namespace of "
                    "either of you could own the other's files",
                    f"ask the site to give each user a range of their own (free: "
                    f"'{facts.user}:{free_start(facts.subuid + facts.subgid)}:{BLOCK}')")
        for first, second in zip(mine, mine[1:]):
            if first.start <= second.end and second.start <= first.end:
                raise HpcbindError(f"--fakeroot: your lines {path}:{first.line} and "
                                   f"{path}:{second.line} overlap", "ask the site to fix them")


def _overlapping(entry: Entry, entries: tuple[Entry, ...],
                 mine: tuple[Entry, ...]) -> Entry | None:
    for other in entries:
        if other not in mine and other.start <= entry.end and entry.start <= other.end:
            return other
    return None


def _check_helper(name: str, tool: Helper) -> None:
    if not tool.path:
        raise HpcbindError(f"--fakeroot: {name} is not installed (it maps your subordinate "
                           "ids into the namespace)",
                           "ask the site to install it (Debian: apt-get install uidmap)")
    if not tool.privileged:
        raise HpcbindError(f"--fakeroot: {tool.path} is neither setuid root nor given "
                           "cap_setuid, so it cannot map your subordinate ids",
                           f"ask the site to restore it (Debian: chmod u+s {tool.path}, as "
                           "package uidmap installs it)")


def _lines(own: int, ranges: tuple[Entry, ...]) -> tuple[tuple[int, int, int], ...]:
    lines = [(0, own, 1)]
    inside = 1
    for entry in ranges:
        lines.append((inside, entry.start, entry.count))
        inside += entry.count
    return tuple(lines)


def free_start(entries: tuple[Entry, ...]) -> int:
    """The lowest start, from FIRST_SUBORDINATE on, of a BLOCK no entry overlaps (where
    useradd would put the next user's range)."""
    start = FIRST_SUBORDINATE
    for entry in sorted(entries, key=lambda e: e.start):
        if entry.end < start:
            continue
        if entry.start >= start + BLOCK:
            break
        start = entry.end + 1
    return start
