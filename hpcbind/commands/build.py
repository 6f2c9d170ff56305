"""``hpcrun build [--force] [--sandbox] [--fakeroot] [--compression C] [--build-arg K=V] OUT
SOURCE``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbind.errors import HpcbindError

if TYPE_CHECKING:
    from hpcbind.host.subids import IdMap

# The compression default can come from the environment, so a site can make lz4 or zstd its
# default for faster container start-up without changing every build command.
COMPRESSION_ENV = "HPCRUN_BUILD_COMPRESSION"


def configure(parser: argparse.ArgumentParser) -> None:
    from hpcbind.commands.pull import configure_fetch
    from hpcbind.image.build import COMPRESSIONS

    parser.add_argument("-F", "--force", action="store_true",
                        help="overwrite OUT if it exists; let %%labels and %%help replace "
                             "existing ones")
    parser.add_argument("-s", "--sandbox", action="store_true",
                        help="write a sandbox directory instead of a SIF file")
    parser.add_argument("-f", "--fakeroot", action="store_true",
                        help="build as a plain user: root in a user namespace of your "
                             "subordinate ids (/etc/subuid, /etc/subgid), else fakeroot(1)")
    parser.add_argument("--compression", choices=COMPRESSIONS,
                        default=os.environ.get(COMPRESSION_ENV, COMPRESSIONS[0]),
                        help=f"squashfs compression (default: ${COMPRESSION_ENV} or gzip, as "
                             "Apptainer; lz4 and zstd start faster, and need a squashfuse or "
                             "kernel built with them where the image runs)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="value for {{ KEY }} in the definition file (repeatable)")
    parser.add_argument("out", metavar="OUT", type=Path, help="the SIF file (or directory) "
                        "to write")
    parser.add_argument("source", metavar="SOURCE",
                        help="a definition file, sandbox directory, squashfs file, SIF, or an "
                             "image reference (docker://..., oci:..., oci-archive:..., "
                             "docker-archive:...)")
    configure_fetch(parser)


def run(args: argparse.Namespace) -> int:
    from hpcbind.commands.pull import fetch_options
    from hpcbind.image.build import Privilege, build, console_progress

    privilege = Privilege.ROOT if os.geteuid() == 0 else Privilege.USER
    idmap = None
    if args.fakeroot and privilege is Privilege.USER:
        # before any thread exists (the progress spinner): unshare(2) refuses threaded callers
        idmap = _become_root()
        privilege = Privilege.NAMESPACE if idmap.subordinate else Privilege.FAKED
    with console_progress() as progress:
        if idmap is not None and idmap.note:
            progress.step(f"NOTE: {idmap.note}")
        build(args.out, args.source, force=args.force, sandbox=args.sandbox,
              compression=args.compression, build_args=_build_args(args.build_arg),
              progress=progress, fetch=fetch_options(args), privilege=privilege,
              fakeroot=idmap.fakeroot if idmap else "",
              mapped=idmap.highest if idmap else (0, 0))
    return 0


def _become_root() -> IdMap:
    """Enter the --fakeroot namespace (the process must have no thread yet); its map."""
    import pwd

    from hpcbind.hostroot import HostRoot
    from hpcbind.host.subids import discover, fakeroot_map
    from hpcbind.runtime import userns

    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)  # shadow matches /etc/subuid by numeric id too
    idmap = fakeroot_map(discover(HostRoot(), user, uid, gid, os.environ.get("PATH", "")),
                         fake_owners=True)
    userns.enter(idmap)
    return idmap


def _build_args(pairs: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise HpcbindError(f"--build-arg {pair!r} is not KEY=VALUE",
                               "write e.g. --build-arg VERSION=1.2")
        parsed[key.strip()] = value.strip()
    return parsed
