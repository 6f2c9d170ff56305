"""``hpcrun sif header|list|info|dump|new|add|del|setprim IMAGE ...``: siftool's commands.

The output of header, list, info and dump is the reference ``siftool``'s; ``add`` takes
siftool's numeric codes (``--datatype 4 --partfs 1 --parttype 2 --partarch 2``) so recipes
written for siftool work unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeVar

from hpcbind.errors import HpcbindError
from hpcbind.image import sif, siftool

T = TypeVar("T")

# siftool's --datatype numbers: 1 Deffile ... 11 OCI.Blob, in DataType order.
_DATA_TYPES = {number: data_type for number, data_type in enumerate(sif.DataType, start=1)}
_SBOM_FORMATS = {siftool.SBOM_NAMES[f]: f for f in sif.SbomFormat} | {"github": sif.SbomFormat.GITHUB_JSON}


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_ in (
        ("header", "show the global header"),
        ("list", "list the data objects"),
        ("new", "create an empty image"),
    ):
        commands.add_parser(action, help=help_).add_argument("image", metavar="IMAGE", type=Path)
    for action, help_ in (
        ("info", "show one data object's descriptor"),
        ("dump", "write one data object's contents to standard output"),
        ("setprim", "make a system partition the primary one"),
        ("del", "delete a data object"),
    ):
        # siftool's order is ID IMAGE; IMAGE ID, this command's first order, still works
        sub = commands.add_parser(action, help=help_, usage=f"hpcrun sif {action} ID IMAGE")
        sub.add_argument("first", metavar="ID", help="the object's ID (siftool's order)")
        sub.add_argument("second", metavar="IMAGE")
        if action == "del":
            delete = sub
    delete.add_argument("--zero", action="store_true", help="overwrite the object's data with zeros")
    delete.add_argument("--compact", action="store_true", help="drop unused space at the end of the file")
    _configure_add(commands.add_parser("add", help="add a data object from a file"))


def _configure_add(add: argparse.ArgumentParser) -> None:
    add.add_argument("image", metavar="IMAGE", type=Path)
    add.add_argument("file", metavar="FILE", type=Path, help="the object's contents")
    add.add_argument(
        "--datatype", type=int, required=True, choices=sorted(_DATA_TYPES),
        help="1 Deffile, 2 EnvVar, 3 Labels, 4 Partition, 5 Signature, 6 GenericJSON, "
        "7 Generic, 8 CryptoMessage, 9 SBOM, 10 OCI.RootIndex, 11 OCI.Blob",
    )
    add.add_argument("--parttype", type=int, choices=[t.value for t in sif.PartType],
                     help="with --datatype 4: 1 System, 2 PrimSys, 3 Data, 4 Overlay")
    add.add_argument("--partfs", type=int, choices=[t.value for t in sif.FsType],
                     help="with --datatype 4: 1 Squashfs, 2 Ext3, 3 ImmuObj, 4 Raw, ...")
    add.add_argument("--partarch", type=int, choices=range(1, len(sif.ARCH_CODES) + 1),
                     help="with --datatype 4: 1 386, 2 amd64, 3 arm, 4 arm64, ... (SIF arch codes)")
    add.add_argument("--signhash", type=int, choices=[t.value for t in sif.HashType],
                     help="with --datatype 5: 1 SHA256, 2 SHA384, 3 SHA512, 4 BLAKE2s, 5 BLAKE2b")
    add.add_argument("--signentity", help="with --datatype 5: the signing key's fingerprint, hex")
    add.add_argument("--sbomformat", choices=sorted(_SBOM_FORMATS), help="with --datatype 9")
    add.add_argument("--groupid", type=int, default=0, help="object group (default: 0, no group)")
    add.add_argument("--link", type=int, default=0, help="ID of the object this one is linked to")
    add.add_argument("--alignment", type=int, help="data alignment (default: 4096 for partitions)")
    add.add_argument("--filename", default="", help="the object's name")


def id_and_image(first: str, second: str) -> tuple[int, Path]:
    """(ID, IMAGE) from siftool's ``ID IMAGE`` or the older ``IMAGE ID``: the one that is a
    number and not an existing file is the ID."""
    for number, image in ((first, second), (second, first)):
        if number.isdigit() and not Path(number).exists():
            return int(number), Path(image)
    raise HpcbindError(f"no object ID among {first!r} and {second!r}",
                       "give the object's number and the image: hpcrun sif info ID IMAGE")


def run(args: argparse.Namespace) -> int:
    if hasattr(args, "first"):
        args.id, args.image = id_and_image(args.first, args.second)
    if args.action in ("header", "list", "info", "dump"):
        with sif.SifImage.open(args.image) as image:
            if args.action == "dump":
                siftool.dump(image, args.id, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            elif args.action == "info":
                sys.stdout.write(siftool.render_info(image.get(args.id)))
            elif args.action == "header":
                sys.stdout.write(siftool.render_header(image))
            else:
                sys.stdout.write(siftool.render_list(image))
    elif args.action == "new":
        sif.create(args.image, [])
    elif args.action == "add":
        sif.add_object(args.image, _object_input(args))
    elif args.action == "del":
        sif.delete_object(args.image, args.id, zero=args.zero, compact=args.compact)
    else:
        sif.set_primary_partition(args.image, args.id)
    return 0


def _object_input(args: argparse.Namespace) -> sif.ObjectInput:
    data_type = _DATA_TYPES[args.datatype]
    partition = signature = sbom = None
    if data_type == sif.DataType.PARTITION:
        if None in (args.parttype, args.partfs, args.partarch):
            raise HpcbindError("a partition needs its type, filesystem and architecture",
                               "pass --parttype, --partfs and --partarch")
        arch = sif.arch_name(f"{args.partarch:02d}")
        partition = sif.Partition(sif.FsType(args.partfs), sif.PartType(args.parttype), arch)
    elif data_type == sif.DataType.SIGNATURE:
        hash_type = sif.HashType(_required(args.signhash, "--signhash"))
        signature = (hash_type, _fingerprint(_required(args.signentity, "--signentity")))
    elif data_type == sif.DataType.SBOM:
        sbom = _SBOM_FORMATS[_required(args.sbomformat, "--sbomformat")]
    if not args.file.is_file():
        raise HpcbindError(f"{args.file}: no such file", "give the path of the object's contents")
    return sif.ObjectInput(
        data_type,
        source=args.file,
        name=args.filename,
        group=args.groupid,
        linked_id=args.link,
        alignment=args.alignment,
        partition=partition,
        signature=signature,
        sbom_format=sbom,
    )


def _required(value: T | None, flag: str) -> T:
    if value is None:
        raise HpcbindError(f"this data type needs {flag}", f"pass {flag}; see 'hpcrun sif add --help'")
    return value


def _fingerprint(text: str) -> bytes:
    try:
        fingerprint = bytes.fromhex(text)
    except ValueError:
        fingerprint = b""
    if len(fingerprint) != 20:
        raise HpcbindError(f"signing entity {text!r} is not a 40-digit hex fingerprint",
                           "pass the key's fingerprint, as 'gpg --fingerprint' shows it")
    return fingerprint
