"""``hpcrun shell IMAGE [ARGS...]``: bash when the image has it, else sh (as Apptainer)."""

from __future__ import annotations

import argparse

from hpcbind import config, launch
from hpcbind.commands import container_options

SHELL = 'if [ -x /bin/bash ]; then exec /bin/bash --norc "$@"; fi; exec /bin/sh "$@"'


def configure(parser: argparse.ArgumentParser) -> None:
    container_options.configure(parser, command=False)
    parser.add_argument("--shell", default="", metavar="PATH", help="the shell to start")


def run(args: argparse.Namespace) -> int:
    argv = (args.shell, *args.args) if args.shell else ("/bin/sh", "-c", SHELL, "sh", *args.args)
    launch.run(container_options.run_options(args, argv), config.load())
