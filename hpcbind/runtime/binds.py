"""Bind mounts as values: parsing ``--bind`` specs and placing destinations safely.

A ``Bind`` says what to mount where, how, and why (Charliecloud's ``struct bind`` with its
required/optional level, plus a reason for ``-v`` output). Sources are host paths, resolved on
the host side before any namespace exists; destinations are container paths, resolved inside
the container root at mount time, where a symlink or ``..`` that leads outside the root is
refused rather than followed (a hostile image must not redirect a bind onto the host).
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import HpcbindError

# The runtime's records are namedtuples, not dataclasses: every MPI rank imports these
# modules, and dataclasses (with inspect, ast, re) add ~9 ms to each start-up.

REQUIRED = "required"  # missing source: error
OPTIONAL = "optional"  # missing source: skipped (e.g. /etc/resolv.conf on an offline node)
CREATE = "create"  # missing source: created as the caller's directory (in --workdir)
# Destinations a bind may not replace: the container's root and the kernel's filesystems the
# runtime mounts itself (a bind there hides them, or as a plain user fails half-way)
RESERVED_DESTINATIONS = ("/", "/proc", "/sys", "/dev")


class Bind(namedtuple("Bind", "source destination read_only recursive need reason device "
                              "noexec provider",
                      defaults=(False, True, REQUIRED, "", False, False, "user"))):
    """source: host path; destination: container path; recursive: rbind, keeping submounts
    (/proc, /sys, /dev, $HOME on autofs); device: a bind of device nodes (no nodev);
    provider: who asked for it ("runtime", "user", or the plan's provider)."""

    __slots__ = ()


def mount_options(bind: Bind) -> tuple[str, ...]:
    """The options the runtime mounts ``bind`` with, as mount(8) spells them."""
    return ("ro" if bind.read_only else "rw", "rbind" if bind.recursive else "bind", "nosuid",
            *(() if bind.device else ("nodev",)), *(("noexec",) if bind.noexec else ()))


def parse_bind_specs(specs: list[str], cwd: str) -> list[Bind]:
    """``--bind`` values: ``SRC[:DST[:OPTS]]`` items, comma-separated, repeatable.

    OPTS is ``ro`` or ``rw`` (Apptainer's syntax). A relative SRC is relative to the current
    directory, as for Apptainer.
    """
    binds = []
    for spec in specs:
        if not spec.strip():
            raise HpcbindError("empty --bind value", "use --bind SRC[:DST[:ro|rw]]")
        # empty items are skipped: site scripts write BIND="$BIND,/data" with BIND unset
        for item in filter(None, (s.strip() for s in spec.split(","))):
            binds.append(_parse_one(item, cwd))
    return binds


def _parse_one(item: str, cwd: str) -> Bind:
    fields = item.split(":")
    if len(fields) > 3 or not fields[0]:
        raise HpcbindError(f"bad bind spec {item!r}", "use --bind SRC[:DST[:ro|rw]]")
    source = fields[0]
    destination = fields[1] if len(fields) > 1 and fields[1] else source
    option = fields[2] if len(fields) > 2 else "rw"
    if option not in ("ro", "rw"):
        raise HpcbindError(f"bad bind option {option!r} in {item!r}", "use 'ro' or 'rw'")
    if not destination.startswith("/"):
        raise HpcbindError(f"bind destination {destination!r} in {item!r} is not absolute",
                           "give the container path as an absolute path")
    # normpath keeps a leading "//" (POSIX lets systems give it a meaning); in the
    # container it is "/", and destinations are compared as strings.
    destination = "/" + os.path.normpath(destination).lstrip("/")
    if destination in RESERVED_DESTINATIONS:
        raise HpcbindError(f"bind destination {destination} in {item!r} would replace the "
                           "container's own", "bind to a directory below it, or elsewhere "
                           "(for example SRC:/mnt)")
    return Bind(
        source=os.path.normpath(os.path.join(cwd, source)),
        destination=destination,
        read_only=option == "ro",
        reason="--bind",
    )


def host_source(bind: Bind) -> str | None:
    """The bind's source with host symlinks resolved; None when it is missing and optional."""
    if bind.need == CREATE:
        try:
            os.makedirs(bind.source, mode=0o700, exist_ok=True)
        except OSError as err:
            raise HpcbindError(f"can't create {bind.source}: {err.strerror}",
                               f"give a directory you can write to ({bind.reason})") from None
    if os.path.lexists(bind.source):
        return os.path.realpath(bind.source)
    if bind.need == OPTIONAL:
        return None
    raise HpcbindError(f"can't bind {bind.source}: no such file or directory",
                       f"create it or drop it from the binds ({bind.reason or 'bind'})")


def container_path(root: str, destination: str) -> str:
    """Where ``destination`` lands under ``root``, refusing any escape from the root.

    Symlinks in the image are container-relative: an absolute link target means a path in
    the container, never on the host (Debian's ``/var/run -> /run`` must keep working). Each
    component is resolved by hand against ``root`` (``realpath`` would follow an absolute link
    onto the host); a ``..`` or relative link that climbs above the root is refused, and so
    is a ``..`` after a name that is not a directory, where the kernel would stop.
    """
    parts = [p for p in destination.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not resolved:
                raise _escape(destination, "a '..' or relative symlink climbs above the "
                                           "container root")
            if not os.path.isdir(os.path.join(root, *resolved)):
                # the kernel stops there (ENOENT, ENOTDIR): '..' is not lexical in a link
                raise _escape(destination, f"a '..' follows /{'/'.join(resolved)}, which "
                                           "is not a directory of the image")
            resolved.pop()
            continue
        here = os.path.join(root, *resolved, part)
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise _escape(destination, "too many levels of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _escape(destination: str, why: str) -> HpcbindError:
    return HpcbindError(f"refusing bind destination {destination}: {why}",
                        "bind to a real directory of the image, not through a link")


def make_mountpoint(target: str, source_is_dir: bool, shown: str = "") -> None:
    """Create the file or directory a bind mounts onto (in the writable session layer);
    shown: the path as the user knows it, for the error."""
    if os.path.lexists(target):
        if os.path.islink(target):
            raise _escape(target, "the mount point is a symlink")
        return
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if source_is_dir:
            os.mkdir(target)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o644))
    except OSError as err:  # a read-only root (--writable sandbox), an image's file in the way
        raise HpcbindError(f"can't create the mount point {shown or target} in the "
                           f"container: {err.strerror}",
                           "bind onto a path the image has, or onto another path") from None
