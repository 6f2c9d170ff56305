"""``hpcrun shell IMAGE [ARGS...]``: bash when the image has it, else sh (as Apptainer)."""

from __future__ import annotations

from hpcbind.commands import container_options

parse_fast = container_options.parse_fast  # the CLI's fast path looks for it here

# SHELL names the shell that runs, as Apptainer sets it (programs start subshells with it)
SHELL = ('if [ -x /bin/bash ]; then export SHELL=/bin/bash; exec /bin/bash --norc "$@"; fi; '
         'export SHELL=/bin/sh; exec /bin/sh "$@"')


def configure(parser) -> None:
    container_options.configure(parser, "ARGS")


def run(args) -> int:
    argv = ("/bin/sh", "-c", SHELL, "sh", *args.rest)
    return container_options.start(args, container_options.run_options(args, argv))
