"""``hpcrun verify [--key FILE]... [--legacy] [--legacy-all] [--group N] [--id N] IMAGE``

One line per signature checked (or per group or object with none), on standard output when
it verified and on standard error when not; exit 0 when all verified, 255 otherwise, as
Apptainer's ``verify`` exits.
"""

from __future__ import annotations

import argparse
import sys

from hpcbind.errors import EXIT_USER_ERROR, HpcbindError
from hpcbind.image import integrity


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", action="append", default=[], metavar="FILE",
                        help="PGP keyring (armored or binary, several keys allowed) or PEM "
                        "public/private key; repeat for more")
    parser.add_argument("--legacy", "--legacy-insecure", action="store_true",
                        help="check legacy (Singularity <= 3.5) signatures instead: the "
                        "primary partition's own, unless --group or --id says")
    parser.add_argument("--legacy-all", action="store_true",
                        help="check the legacy signature of every object in a group")
    parser.add_argument("--group", type=int, metavar="N", help="verify only object group N")
    parser.add_argument("--id", type=int, dest="object_id", metavar="N", help="verify only object N")
    parser.add_argument("image", metavar="IMAGE")


def run(args: argparse.Namespace) -> int:
    if not args.key:
        raise HpcbindError("no key to verify with", "give --key FILE: the signer's PGP public key "
                           "or PEM public key")
    results = integrity.verify_as_asked(
        args.image, integrity.load_keyring(args.key), legacy=args.legacy,
        legacy_all=args.legacy_all, group=args.group, object_id=args.object_id)
    for result in results:
        print(result, file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else EXIT_USER_ERROR
