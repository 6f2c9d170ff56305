"""``hpcrun plan [--nv] [--rocm] [--ib] [--device NAME]... [IMAGE]``: what would be bound, and why."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbind.errors import HpcbindError

if TYPE_CHECKING:
    from hpcbind.plan import BindPlan

EXIT_CHECK_FAILED = 1

EPILOG = """\
exit status: 0 when the plan was made (even when nothing was found), 1 when a check failed,
255 for a usage error (a missing image, sysroot or plan file).
--capture writes the host files the plan was read from; pass that archive to --sysroot to
get the same plan (same digest) on any machine. --sysroot also takes a directory: a capture
unpacked with 'tar xzf' (less its sockets, which tar cannot hold), or an hwloc-gather-topology tree.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--nv", action="store_true", help="NVIDIA GPUs: the host driver's libraries, binaries and devices")
    add("--rocm", action="store_true", help="AMD GPUs: the host ROCm libraries and devices")
    add("--ib", action="store_true", help="InfiniBand/RoCE/Slingshot/Omni-Path devices and verbs providers")
    add("--device", action="append", default=[], metavar="VENDOR/CLASS=NAME",
        help="a CDI device from /etc/cdi or /var/run/cdi, e.g. nvidia.com/gpu=0 or =all (repeatable)")
    add("--mpi", choices=("image", "host"), default="image",
        help="host: show the bind model, the host's MPI replacing the image's (needs IMAGE)")
    add("--gpu-bind", metavar="closest|none|map:I,J,...",
        help="also show which GPU and HCA each local rank would get (see hpcrun exec --help)")
    add("--local-ranks", type=int, default=8, metavar="N",
        help="how many ranks per node --gpu-bind shows (default 8)")
    add("--sysroot", metavar="DIR|ARCHIVE", type=Path,
        help="read the host from this directory or --capture archive instead of /")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the plan as JSON, with its digest")
    out.add_argument("--cdi", action="store_true", help="the plan as a CDI spec (JSON)")
    out.add_argument("--explain", action="store_true", help="one sentence per entry: why it is there")
    out.add_argument("--diff", nargs=2, metavar=("A.json", "B.json"), type=Path,
                     help="what changed from plan A to plan B (files from --json)")
    add("--capture", metavar="OUT.tar.gz", type=Path,
        help="also write the host files the plan was made from to this archive")
    add("image", nargs="?", type=Path, metavar="IMAGE",
        help="check the plan against this image (SIF, squashfs or sandbox directory)")


def _diff(a: Path, b: Path) -> int:
    from hpcbind.discover import load_plan
    from hpcbind.planview import diff

    old, new = load_plan(a), load_plan(b)
    sys.stdout.write(diff(old, new, str(a), str(b)) or f"plans are identical ({old.digest})\n")
    return 0


def _render(args: argparse.Namespace, plan: BindPlan) -> str:
    from hpcbind import planview

    if args.json:
        return plan.to_json() + "\n"
    if args.cdi:
        from hpcbind.cdi import to_cdi

        return json.dumps(to_cdi(plan), indent=2) + "\n"
    if args.explain:
        return planview.explain(plan)
    # $COLUMNS, else the terminal's width, else 80: piped output no wider than a terminal
    width = shutil.get_terminal_size().columns
    if not sys.stdout.isatty():
        return planview.render_table(plan, width=width)
    return planview.render_table(plan, color="NO_COLOR" not in os.environ, width=width)


def run(args: argparse.Namespace) -> int:
    if args.diff:
        return _diff(*args.diff)
    if args.image is not None and not args.image.exists():
        raise HpcbindError(f"image {args.image} does not exist",
                           "give a SIF file, a squashfs file or a sandbox directory")
    from hpcbind.capture import capture, sysroot
    from hpcbind.discover import Request, make_plan

    request = Request(nv=args.nv, rocm=args.rocm, ib=args.ib, devices=tuple(args.device),
                      mpi_host=args.mpi == "host")
    with sysroot(args.sysroot) as host:
        plan = (capture(request, host, os.environ, args.image, out=args.capture) if args.capture
                else make_plan(request, host, os.environ, args.image))
    if args.gpu_bind:
        from hpcbind.mpi.binding import preview

        plan = preview(plan, args.gpu_bind, args.local_ranks)
    sys.stdout.write(_render(args, plan))
    if args.image is not None and args.sysroot is None and not (args.json or args.cdi or args.diff):
        from hpcbind import config, launch, specview

        sys.stdout.write(f"\nThe container 'hpcrun exec {args.image}' makes with this plan "
                         "('hpcrun exec --dry-run' shows it for any options):\n")
        sys.stdout.write(specview.render_mounts(
            launch.container_for_plan(str(args.image), plan, config.load())))
    if args.gpu_bind and not (args.json or args.cdi):
        sys.stdout.write(f"\nRank binding (--gpu-bind {args.gpu_bind}):\n" + "".join(
            f"  {f.name}: {f.value}\n" for f in plan.facts if f.provider == "mpi.gpu-bind"))
    return EXIT_CHECK_FAILED if plan.failed else 0
