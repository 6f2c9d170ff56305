"""/etc/passwd and /etc/group inside the container: the image's, plus the caller.

The user is the same user inside as outside; programs that look the user up (ssh, MPI
launchers, Python's getpass, shells setting PS1) need an entry for the uid and its group.
The image's own entries are kept, so the image's system users still resolve.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections import namedtuple


class HostUser(namedtuple("HostUser", "uid gid name group gecos shell",
                          defaults=("", "/bin/sh"))):
    __slots__ = ()


# who the caller is inside with --fakeroot
ROOT = HostUser(0, 0, "root", "root", "root", "/bin/bash")


def host_user() -> HostUser:
    """The caller as the host knows them; looked up before the host's /etc is out of reach."""
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        name, gecos, shell = pw.pw_name, pw.pw_gecos, pw.pw_shell
    except KeyError:
        name, gecos, shell = f"uid{uid}", "", "/bin/sh"
    try:
        group_name = grp.getgrgid(gid).gr_name
    except KeyError:
        group_name = f"gid{gid}"
    return HostUser(uid, gid, name, group_name, gecos, shell)


def files(root: str, user: HostUser, home: str) -> dict[str, str]:
    shell = user.shell if os.path.exists(root + user.shell) else "/bin/sh"
    return {
        "passwd": passwd(_read(root, "passwd"), user, home, shell),
        "group": group(_read(root, "group"), user),
    }


def passwd(image_passwd: str, user: HostUser, home: str, shell: str) -> str:
    lines = [ln for ln in image_passwd.splitlines() if ln and not _is_entry_for(ln, 2, user.uid)]
    lines.append(f"{user.name}:x:{user.uid}:{user.gid}:{user.gecos}:{home}:{shell}")
    return "\n".join(lines) + "\n"


def group(image_group: str, user: HostUser) -> str:
    lines = [ln for ln in image_group.splitlines() if ln]
    if not any(_is_entry_for(ln, 2, user.gid) for ln in lines):
        lines.append(f"{user.group}:x:{user.gid}:")
    return "\n".join(lines) + "\n"


def _is_entry_for(line: str, field: int, number: int) -> bool:
    parts = line.split(":")
    return len(parts) > field and parts[field] == str(number)


def _read(root: str, name: str) -> str:
    path = os.path.join(root, "etc", name)
    if os.path.islink(path):  # never follow an image's link out of the root
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
