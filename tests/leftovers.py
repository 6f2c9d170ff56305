"""What the unprivileged test user's runs left on the host: processes, mounts, temporary files.

``HostState.now(uid)`` before, ``leftovers(uid, before)`` after: what is new, once the kernel
has had time to finish what it does asynchronously (tearing a mount namespace down, delivering
a parent-death signal). Only what belongs to the user, or is a mount, is looked at, so work
of other users on the machine does not count.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass

TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


@dataclass(frozen=True)
class HostState:
    processes: frozenset[str]  # "PID NAME START": the start time tells a reused PID apart
    mounts: frozenset[str]  # lines of the host's mountinfo
    entries: frozenset[str]  # paths the user owns in TEMP_DIRS and in their home

    @classmethod
    def now(cls, uid: int) -> HostState:
        with open("/proc/self/mountinfo") as f:
            mounts = frozenset(f.read().splitlines())
        return cls(frozenset(_live_processes(uid)), mounts, frozenset(_entries(uid)))

    def new_since(self, before: HostState) -> dict[str, list[str]]:
        """What this state has that ``before`` had not, by kind; empty kinds left out."""
        new = {"processes": self.processes - before.processes,
               "mounts": self.mounts - before.mounts,
               "entries": self.entries - before.entries}
        return {kind: sorted(items) for kind, items in new.items() if items}


def leftovers(uid: int, before: HostState, timeout: float = 10) -> dict[str, list[str]]:
    """What is new since ``before`` and still there after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = HostState.now(uid).new_since(before)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _live_processes(uid: int) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        real_uid = next(line.split()[1] for line in status.splitlines()
                        if line.startswith("Uid:"))
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        state, *fields = stat[stat.rindex(")") + 2:].split()
        if real_uid == str(uid) and state != "Z":  # a zombie holds nothing but its PID
            found.append(f"{pid} {name} {fields[18]}")  # field 22 of stat(5): start time
    return found


def _entries(uid: int) -> list[str]:
    found = []
    for directory in (*TEMP_DIRS, pwd.getpwuid(uid).pw_dir):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_uid == uid:
                    found.append(path)
            except OSError:
                continue
    return found
