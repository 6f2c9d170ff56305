"""Becoming root of a new user namespace with a planned map (``--fakeroot``).

A map holding more than the caller's own id may only be written from outside the namespace
by the setuid helpers newuidmap and newgidmap (Debian's ``uidmap``). They are started before
the namespace exists, each waiting on its stdin, and told to go once this process is in it:
util-linux's ``unshare --map-users`` does the same, but it can only put a new process in a
namespace, and the runtime and the builder need this one there. A one-line map (root inside
= the caller) the process writes itself, setgroups denied first as the kernel requires.
"""

from __future__ import annotations

import os
import subprocess

from hpcbind.errors import HpcbindError
from hpcbind.runtime import linux

TYPE_CHECKING = False  # typing's flag without importing typing (the runtime's habit)
if TYPE_CHECKING:
    from hpcbind.host.subids import IdMap

# The helper waits for one line on stdin: the namespace exists then. A closed pipe (this
# process died first) ends it without mapping anything.
_WAIT_THEN_EXEC = 'read -r go && exec "$@"'


def enter(idmap: IdMap) -> None:
    """Move this process (single-threaded) into a new user namespace mapped by ``idmap``;
    it is uid 0 there, with every capability over what the namespace owns."""
    pid = os.getpid()
    helpers = [_start(idmap.newuidmap, pid, idmap.uid_map),
               _start(idmap.newgidmap, pid, idmap.gid_map)] if idmap.newuidmap else []
    try:
        linux.unshare(linux.CLONE_NEWUSER)
    except OSError as err:
        for proc in helpers:
            proc.kill()
            proc.wait()
        raise HpcbindError(f"can't create a user namespace: {err.strerror}",
                           "ask the admin to enable unprivileged user namespaces "
                           "(sysctl kernel.unprivileged_userns_clone=1, "
                           "user.max_user_namespaces > 0)") from None
    if helpers:
        errors = [(proc, proc.communicate(b"go\n", timeout=60)[1]) for proc in helpers]
        for proc, stderr in errors:
            if proc.returncode != 0:
                raise HpcbindError(
                    f"--fakeroot: {proc.args[4]} could not map your subordinate ids: "
                    f"{_last_line(stderr) or f'exit code {proc.returncode}'}",
                    "check your lines in /etc/subuid and /etc/subgid with the site")
        return
    _write(f"/proc/{pid}/setgroups", "deny")
    _write(f"/proc/{pid}/uid_map", map_text(idmap.uid_map))
    _write(f"/proc/{pid}/gid_map", map_text(idmap.gid_map))


def helper_argv(path: str, pid: int, lines: tuple[tuple[int, int, int], ...]) -> list[str]:
    """``newuidmap PID INSIDE OUTSIDE COUNT ...``, waiting for the word to go."""
    return ["/bin/sh", "-c", _WAIT_THEN_EXEC, "sh", path, str(pid),
            *(str(n) for line in lines for n in line)]


def map_text(lines: tuple[tuple[int, int, int], ...]) -> str:
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in lines)


def _start(path: str, pid: int, lines: tuple[tuple[int, int, int], ...]) -> subprocess.Popen:
    return subprocess.Popen(helper_argv(path, pid, lines), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""
