"""``hpcrun validate [--nv] [--rocm] [--ib] [--launcher mpirun.openmpi] IMAGE``"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from hpcbind import validate
from hpcbind.errors import HpcbindError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nv", action="store_true", help="check the NVIDIA GPUs (hpcrun --nv)")
    parser.add_argument("--rocm", action="store_true", help="check the AMD GPUs (hpcrun --rocm)")
    parser.add_argument("--ib", action="store_true",
                        help="check the RDMA devices and the verbs provider (hpcrun --ib)")
    parser.add_argument("--launcher", default=validate.DEFAULT_LAUNCHER,
                        help="the launcher of the MPI check (default: %(default)s)")
    parser.add_argument("image", metavar="IMAGE",
                        help="a SIF file, a squashfs file or a sandbox directory")


def run(args: argparse.Namespace) -> int:
    request = validate.Request(args.image, args.nv, args.rocm, args.ib, args.launcher)
    results = validate.validate(request, hpcrun_path())
    print(validate.render(results))
    return 1 if validate.failed(results) else 0


def hpcrun_path() -> str:
    """The hpcrun the checks run: this one, else the one beside this Python (a virtualenv's),
    else the first on PATH."""
    candidates = [os.path.realpath(sys.argv[0]), os.path.join(os.path.dirname(sys.executable), "hpcrun"),
                  shutil.which("hpcrun") or ""]
    for path in candidates:
        if os.path.basename(path) == "hpcrun" and os.access(path, os.X_OK):
            return path
    raise HpcbindError("no hpcrun program to run the checks with",
                       "put hpcrun on PATH (make venv writes .venv/bin/hpcrun)")
