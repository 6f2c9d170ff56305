"""``hpcrun config``: the effective site configuration and where each value comes from."""

from __future__ import annotations

import argparse
import sys

from hpcbind import config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", default=None, help="read this file instead of "
                        f"{config.DEFAULT_PATH} (or ${config.ENV_PATH})")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(config.render(config.load(args.file)))
    return 0
