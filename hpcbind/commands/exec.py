"""``hpcrun exec IMAGE COMMAND [ARGS...]``"""

from __future__ import annotations

import argparse

from hpcbind import config, launch
from hpcbind.commands import container_options
from hpcbind.errors import HpcbindError


def configure(parser: argparse.ArgumentParser) -> None:
    container_options.configure(parser, command=True)


def run(args: argparse.Namespace) -> int:
    argv = tuple(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    if not argv:
        raise HpcbindError("no command given", "use 'hpcrun exec IMAGE COMMAND [ARGS...]'")
    launch.run(container_options.run_options(args, argv), config.load())
