"""``hpcrun sign --key FILE [--key FILE]... [--group N] IMAGE``

A PGP secret key signs in PGP clear-sign format; PEM private keys (Ed25519, RSA, ECDSA P-256)
sign one DSSE envelope per group, with a signature by each key given.
"""

from __future__ import annotations

import argparse

from hpcbind.image import integrity


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", action="append", required=True, metavar="FILE",
                        help="PGP secret key, or PEM private key (repeat for several DSSE signers)")
    parser.add_argument("--group", type=int, metavar="N", help="sign only object group N "
                        "(default: every group)")
    parser.add_argument("image", metavar="IMAGE")


def run(args: argparse.Namespace) -> int:
    key = integrity.load_signing_key(args.key)
    for group, signature in integrity.sign(args.image, key, group=args.group):
        print(f"object group {group}: signed with {key.describe()} (signature object {signature})")
    return 0
