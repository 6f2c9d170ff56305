"""``hpcrun overlay create --size MB [--sparse] [--create-dir DIR]... IMAGE``: an ext3
overlay image for ``--overlay``, as ``apptainer overlay create`` makes one."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create an ext3 overlay image")
    create.add_argument("-s", "--size", type=int, default=64, metavar="MB",
                        help="size in MiB (default 64, as Apptainer)")
    create.add_argument("-S", "--sparse", action="store_true",
                        help="a sparse file: disk space is taken as the container writes")
    create.add_argument("--create-dir", action="append", default=[], metavar="DIR",
                        help="a directory to make in the overlay, owned by you (repeatable)")
    create.add_argument("image", metavar="IMAGE", help="the new overlay image file")


def run(args: argparse.Namespace) -> int:
    from hpcbind.image import overlay

    overlay.create(args.image, args.size, args.sparse, tuple(args.create_dir))
    return 0
