"""``hpcrun inspect [--labels|--deffile|--runscript|--environment|--helpfile|--json] IMAGE``"""

from __future__ import annotations

import argparse
import sys

from hpcbind.image.metadata import read_metadata, to_json
from hpcbind.image.source import locate

PARTS = ("labels", "deffile", "runscript", "environment", "helpfile")


def configure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    for part in PARTS:
        group.add_argument(f"--{part}", dest="part", action="store_const", const=part,
                           help=f"show the image's {part}")
    group.add_argument("--json", dest="part", action="store_const", const="json",
                       help="everything, as Apptainer's inspect --json")
    parser.add_argument("image", metavar="IMAGE")


def run(args: argparse.Namespace) -> int:
    meta = read_metadata(locate(args.image))
    part = args.part or "labels"
    if part == "json":
        text = to_json(meta) + "\n"
    elif part == "labels":
        text = "".join(f"{k}: {v}\n" for k, v in sorted(meta.labels.items()))
    else:
        text = getattr(meta, part)
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0
