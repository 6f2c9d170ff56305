"""``hpcrun [FLAGS] mpirun|mpiexec|srun [LAUNCHER ARGS] IMAGE COMMAND [ARGS]``

Not a subcommand: the CLI comes here when the first word after hpcrun's flags is a launcher.
Everything is checked before any rank starts (launcher on PATH, image, preflight plan, MPI
family), then hpcrun execs the launcher, whose exit code and signals are the job's.
"""

from __future__ import annotations

import os
import resource
import sys

from hpcbind.commands import container_options
from hpcbind.errors import HpcbindError
from hpcbind.mpi import launcher as mpi_launcher
from hpcbind.runtime.nodesession import SECRET_VARIABLE


def parse(argv: list[str]):
    args = container_options.parse_fast(argv)
    if args is None or mpi_launcher.family_of(args.image) is None:
        return None
    args.flag_tokens = argv[:len(argv) - len(args.rest) - 1]
    args.command_run = run
    return args


def run(args) -> int:
    if args.fakeroot:
        from hpcbind.assemble import FAKEROOT_NOT_FOR_RANKS

        raise HpcbindError(*FAKEROOT_NOT_FOR_RANKS)
    line = mpi_launcher.split([args.image, *args.rest])
    launcher_path = _which(line.launcher)
    _raise_open_files_limit()
    # the ranks' argv is public (/proc), their environment is not: see nodesession
    # os.urandom is what secrets.token_hex reads; the secrets module costs 6 ms to import
    os.environ[SECRET_VARIABLE] = os.urandom(16).hex()
    key = os.urandom(8).hex()
    if line.family == mpi_launcher.OPENMPI:  # this node's ranks will be mpirun's children
        from hpcbind import launch

        # now, so that the holder's imports overlap the checks below and mpirun's start-up
        launch.prestart_holder(key, lambda program: _rank_options(
            ["--node-session", key, *args.flag_tokens, line.image, *program]))
    image = _image(line)
    _check_visibility(line, image.path)
    _preflight(args, line, image)
    hpcrun = _hpcrun_path()
    argv, added = mpi_launcher.rewrite(line, hpcrun, list(args.flag_tokens), key,
                                       dict(os.environ), _starter_path(hpcrun))
    os.environ.update(added)
    if args.verbose:
        print("hpcrun:", " ".join(argv), file=sys.stderr)
    os.execv(launcher_path, argv)


def _rank_options(exec_argv: list[str]):
    """The options ``hpcrun exec EXEC_ARGV`` runs a rank with (its flags parsed here already,
    so the fast parser takes them)."""
    from hpcbind.commands import exec as exec_command

    return exec_command.run_options(container_options.parse_fast(exec_argv))


def _which(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        raise HpcbindError(f"launcher {name} not found on PATH",
                           "load the MPI or Slurm environment (module load ...) and retry")
    return path


def _image(line):
    from hpcbind.image.source import locate

    try:
        return locate(line.image)
    except HpcbindError as err:
        raise HpcbindError(err.what, mpi_launcher.not_an_image_hint(line)) from None


def _check_visibility(line, image_path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        fstype = mpi_launcher.filesystem_type(image_path, f.read())
    hosts = mpi_launcher.named_hosts(line, _read_text)
    if line.family == mpi_launcher.SLURM:
        hosts += _slurm_nodes(line)
    problem = mpi_launcher.image_visibility(image_path, fstype,
                                            [h for h in hosts if not _is_this_host(h)])
    if problem:
        raise HpcbindError(*problem)


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _slurm_nodes(line) -> list[str]:
    """The addresses of the nodes srun will use: -w/--nodelist, else the allocation's."""
    import subprocess

    names = mpi_launcher.named_hosts(line, _read_text) or \
        ([os.environ["SLURM_JOB_NODELIST"]] if "SLURM_JOB_NODELIST" in os.environ else [])
    if not names:
        return []
    expanded = subprocess.run(["scontrol", "show", "hostnames", ",".join(names)],
                              capture_output=True, text=True).stdout.split()
    addresses = []
    for node in expanded:
        info = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True,
                              text=True).stdout
        fields = dict(f.split("=", 1) for f in info.split() if "=" in f)
        addresses.append(fields.get("NodeAddr", node))
    return addresses


def _is_this_host(name: str) -> bool:
    """Whether ``name`` (a host name or address) is this machine: an address we can bind."""
    import socket

    if name in ("localhost", socket.gethostname(), socket.gethostname().split(".")[0]):
        return True
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except OSError:
        return False
    for *_, sockaddr in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False


def _preflight(args, line, image) -> None:
    """The plan for the image (GPU/fabric if asked, and the image's MPI) and the MPI family."""
    image_mpi = _image_mpi(image)
    options = container_options.run_options(args, ())  # APPTAINER_NV=1 asks as --nv does
    mpi_host = options.mpi_host
    if options.wants_plan:
        from pathlib import Path

        from hpcbind.discover import Request, make_plan  # ~14 ms: only when asked for

        plan = make_plan(Request(nv=options.nv, rocm=options.rocm, ib=options.ib,
                                 devices=options.devices, mpi_host=mpi_host),
                         image=Path(image.path))
        if plan.failed:
            check = plan.failed[0]
            raise HpcbindError(f"preflight check {check.name} failed: {check.message}",
                               check.fix or "see 'hpcrun plan --explain IMAGE'")
    problem = None if mpi_host else mpi_launcher.family_check(line.family, image_mpi)
    if problem:
        raise HpcbindError(*problem)


def _image_mpi(image) -> list[dict]:
    """The image's MPI libraries as its facts are stored, read from the cache where they are
    (without the modules that compute them), else computed (and stored)."""
    from hpcbind.image import facts_cache

    data = facts_cache.read(image.path, image.offset) if image.is_squashfs else None
    if data is not None and isinstance(data.get("mpi"), list):
        return data["mpi"]
    from hpcbind.image import contents

    return contents.facts_to_dict(contents.located_image_facts(image))["mpi"]


def _raise_open_files_limit() -> None:
    # Open MPI runs out of pipes at a few hundred local ranks with the default 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _starter_path(hpcrun: str) -> str | None:
    """hpcrun-starter, installed next to hpcrun by ``make``; without it ranks take the
    Python path, which does the same work slower."""
    starter = os.path.join(os.path.dirname(hpcrun), "hpcrun-starter")
    return starter if os.access(starter, os.X_OK) else None


def _hpcrun_path() -> str:
    """The hpcrun the ranks run: this one (on a shared filesystem, like the image)."""
    me = os.path.realpath(sys.argv[0])
    if os.path.basename(me) == "hpcrun" and os.access(me, os.X_OK):
        return me
    return _which("hpcrun")
