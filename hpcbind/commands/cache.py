"""``hpcrun cache list|clean``: the layers and images pulls keep (see hpcbind.image.cache)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "clean"),
                        help="list: what is cached and its size; clean: remove it all")


def run(args: argparse.Namespace) -> int:
    from hpcbind.image import cache

    if args.action == "clean":
        freed = cache.clean()
        print(f"removed {_size(freed)} from {cache.cache_dir()}")
        return 0
    found = cache.entries()
    for entry in found:
        converted = "  (converted)" if entry.sif else ""
        print(f"{entry.reference}  {entry.platform}  {entry.digest[:19]}  "
              f"{_size(entry.size)}{converted}")
    print(f"{len(found)} images, {_size(cache.total_size())} in {cache.cache_dir()}")
    return 0


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
