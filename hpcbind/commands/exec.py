"""``hpcrun exec IMAGE COMMAND [ARGS...]``"""

from __future__ import annotations

from hpcbind.commands import container_options
parse_fast = container_options.parse_fast  # the CLI's fast path
from hpcbind.errors import HpcbindError


def configure(parser) -> None:
    container_options.configure(parser, "COMMAND [ARGS...]")


def run(args) -> int:
    argv = tuple(args.rest[1:] if args.rest[:1] == ["--"] else args.rest)
    if not argv:
        raise HpcbindError("no command given", "use 'hpcrun exec IMAGE COMMAND [ARGS...]'")
    return container_options.start(args, container_options.run_options(args, argv))
