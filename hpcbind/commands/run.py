"""``hpcrun run IMAGE [ARGS...]``: the image's runscript, as Apptainer runs it."""

from __future__ import annotations

import argparse

from hpcbind import config, launch
from hpcbind.commands import container_options

RUNSCRIPT = "/.singularity.d/runscript"


def configure(parser: argparse.ArgumentParser) -> None:
    container_options.configure(parser, command=False)


def run(args: argparse.Namespace) -> int:
    options = container_options.run_options(
        args, (RUNSCRIPT, *args.args),
        exec_hint=f"the image has no runscript ({RUNSCRIPT}); use 'hpcrun exec IMAGE COMMAND'")
    launch.run(options, config.load())
