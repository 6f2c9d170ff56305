"""``hpcrun exec IMAGE COMMAND [ARGS...]``"""

from __future__ import annotations

from hpcbind.commands import container_options
from hpcbind.errors import HpcbindError

parse_fast = container_options.parse_fast  # the CLI's fast path looks for it here


def configure(parser) -> None:
    container_options.configure(parser, "COMMAND [ARGS...]")


def run(args) -> int:
    return container_options.start(args, run_options(args))


def run_options(args):
    argv = tuple(args.rest[1:] if args.rest[:1] == ["--"] else args.rest)
    if not argv:
        raise HpcbindError("no command given", "use 'hpcrun exec IMAGE COMMAND [ARGS...]'")
    return container_options.run_options(args, argv)
