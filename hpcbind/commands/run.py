"""``hpcrun run IMAGE [ARGS...]``: the image's runscript, as Apptainer runs it."""

from __future__ import annotations

from hpcbind.commands import container_options
parse_fast = container_options.parse_fast  # the CLI's fast path

RUNSCRIPT = "/.singularity.d/runscript"


def configure(parser) -> None:
    container_options.configure(parser, "ARGS")


def run(args) -> int:
    options = container_options.run_options(
        args, (RUNSCRIPT, *args.rest),
        exec_hint=f"the image has no runscript ({RUNSCRIPT}); use 'hpcrun exec IMAGE COMMAND'")
    return container_options.start(args, options)
