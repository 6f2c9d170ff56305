"""The options ``exec``, ``run`` and ``shell`` share (Apptainer's names and meanings).

One table, two readers: ``parse_fast`` reads it on the per-rank path (argparse and what it
imports cost ~10 ms per launch, paid by every MPI rank), and argparse reads it for ``--help``
and for any command line ``parse_fast`` does not accept, so users get argparse's messages.
"""

from __future__ import annotations

from collections import namedtuple

from hpcbind.assemble import RunOptions, with_option_variables
from hpcbind.errors import VERBOSE, message_level

# kind: "flag" (store_true), "value" (last wins), "list" (append)
Option = namedtuple("Option", "flags dest kind metavar help")

OPTIONS = (
    Option(("-B", "--bind"), "bind", "list", "SRC[:DST[:ro|rw]]",
           "bind a host path into the container (repeatable, comma-separated lists)"),
    Option(("-c", "--contain"), "contain", "flag", None,
           "minimal /dev and no host $HOME, /tmp or current directory"),
    Option(("-C", "--containall"), "containall", "flag", None,
           "--contain plus --cleanenv and a private IPC namespace"),
    Option(("-H", "--home"), "home", "value", "SRC[:DST]", "home directory to bind"),
    Option(("--no-home",), "no_home", "flag", None, "do not bind the home directory"),
    Option(("--pwd",), "pwd", "value", "DIR", "initial working directory in the container"),
    Option(("-e", "--cleanenv"), "cleanenv", "flag", None,
           "do not pass the host environment (except TERM and proxies)"),
    Option(("--env",), "env", "list", "K=V",
           "set an environment variable in the container (repeatable, comma lists)"),
    Option(("--env-file",), "env_file", "list", "FILE",
           "set environment variables from a file of K=V lines"),
    Option(("--nv",), "nv", "flag", None, "NVIDIA GPUs: bind the host driver and devices"),
    Option(("--rocm",), "rocm", "flag", None, "AMD GPUs: bind the host ROCm driver and devices"),
    Option(("--ib",), "ib", "flag", None,
           "InfiniBand/RoCE/Slingshot/Omni-Path: bind devices and verbs providers"),
    Option(("--device",), "device", "list", "VENDOR/CLASS=NAME",
           "apply a CDI device from /etc/cdi or /var/run/cdi"),
    Option(("--mpi",), "mpi", "value", "image|host",
           "host: replace the image's MPI library with the host's (the bind model), only when "
           "their ABIs are compatible (Sarus's rules); image (default): the image's own MPI"),
    Option(("--gpu-bind",), "gpu_bind", "value", "closest|none|map:I,J,...",
           "under a launcher, give each local rank its own GPU (and the HCA nearest it): "
           "closest by NUMA locality, or a map of local rank -> GPU"),
    Option(("-o", "--overlay"), "overlay", "list", "PATH[:ro]",
           "a directory or ext3 image (hpcrun overlay create) over the image; the root's "
           "writes persist in the writable one; read-only ones (:ro) below it"),
    Option(("--writable-tmpfs",), "writable_tmpfs", "flag", None,
           "writes to the root go to a private tmpfs of session.size_mb (always so in hpcrun)"),
    Option(("-w", "--writable"), "writable", "flag", None,
           "a sandbox directory is the root itself, read-write"),
    Option(("-W", "--workdir"), "workdir", "value", "DIR",
           "host directory for --scratch and, with --contain, /tmp, /var/tmp and home"),
    Option(("-S", "--scratch"), "scratch", "list", "PATH",
           "an empty private directory at PATH in the container (in --workdir if given)"),
    Option(("-v", "--verbose"), "verbose", "flag", None,
           "say what is mounted and why, and what was skipped or changed"),
    Option(("-d", "--debug"), "debug", "flag", None, "as -v, and a traceback with errors"),
    Option(("-q", "--quiet"), "quiet", "flag", None, "only warnings and errors"),
    Option(("-s", "--silent"), "silent", "flag", None, "only errors"),
    Option(("--dry-run",), "dry_run", "flag", None,
           "show the whole container (every mount with its provider and reason, devices, "
           "environment, directory, command, the apply log); mount and run nothing"),
    Option(("--json",), "json", "flag", None, "with --dry-run: as JSON"),
    Option(("-f", "--fakeroot"), "fakeroot", "flag", None,
           "be root inside: a user namespace mapping root to you and your subordinate ids "
           "(/etc/subuid, /etc/subgid), or root alone without them"),
    Option(("--node-session",), "node_session", "value", "KEY",
           "share one container among the processes of this node that give the same KEY "
           "(set by 'hpcrun mpirun|mpiexec|srun'; rarely given by hand)"),
)
_BY_FLAG = {flag: opt for opt in OPTIONS for flag in opt.flags}


class ParsedArgs:
    """What either parser produces: one attribute per option, plus image and rest."""

    def __init__(self, **values) -> None:
        self.__dict__.update(values)


def defaults() -> dict:
    return {o.dest: (False if o.kind == "flag" else [] if o.kind == "list" else "")
            for o in OPTIONS}


def parse_fast(argv: list[str]) -> ParsedArgs | None:
    """Options, then IMAGE, then the rest verbatim; None when argparse should take over."""
    values = defaults()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            return ParsedArgs(**values, image=arg, rest=argv[i + 1:])
        name, eq, inline = arg.partition("=")
        opt = _BY_FLAG.get(name if arg.startswith("--") else arg)
        if opt is None or (eq and opt.kind == "flag") or (not arg.startswith("--") and eq):
            return None  # --help, unknown or malformed: argparse explains
        if opt.kind == "flag":
            values[opt.dest] = True
        else:
            if not eq:
                i += 1
                if i == len(argv):
                    return None
                inline = argv[i]
            if opt.kind == "list":
                values[opt.dest].append(inline)
            else:
                values[opt.dest] = inline
        i += 1
    return None  # no IMAGE


def configure(parser, rest_metavar: str) -> None:
    import argparse

    for opt in OPTIONS:
        kwargs = {"dest": opt.dest, "help": opt.help}
        if opt.kind == "flag":
            kwargs["action"] = "store_true"
        else:
            kwargs.update(metavar=opt.metavar, default=[] if opt.kind == "list" else "",
                          action="append" if opt.kind == "list" else "store")
        parser.add_argument(*opt.flags, **kwargs)
    parser.add_argument("image", metavar="IMAGE",
                        help="a SIF file, a squashfs file or a sandbox directory")
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar=rest_metavar)


def _mpi_host(value: str) -> bool:
    if value not in ("", "image", "host"):
        from hpcbind.errors import HpcbindError

        raise HpcbindError(f"bad --mpi value {value!r}", "use --mpi=host or --mpi=image")
    return value == "host"


def run_options(args, argv: tuple[str, ...], exec_hint: str = "") -> RunOptions:
    """The options as given, completed by Apptainer's option variables (APPTAINER_BIND...)."""
    import os

    level = message_level(args.debug, args.verbose, args.quiet, args.silent)
    given = RunOptions(
        image=args.image, argv=argv, binds=tuple(args.bind), contain=args.contain,
        containall=args.containall, home=args.home, no_home=args.no_home, pwd=args.pwd,
        cleanenv=args.cleanenv, env=tuple(args.env), env_files=tuple(args.env_file),
        nv=args.nv, rocm=args.rocm, ib=args.ib, devices=tuple(args.device),
        exec_hint=exec_hint, verbose=level >= VERBOSE, node_session=args.node_session,
        gpu_bind=args.gpu_bind, mpi_host=_mpi_host(args.mpi), fakeroot=args.fakeroot,
        overlays=tuple(args.overlay), writable=args.writable,
        writable_tmpfs=args.writable_tmpfs, workdir=args.workdir, scratch=tuple(args.scratch),
        level=level,
    )
    return with_option_variables(given, os.environ)


def start(args, options: RunOptions) -> int:
    """Enter the container (never returns), or with --dry-run show it: exit 1 when one of
    the plan's checks failed, as ``hpcrun plan``."""
    from hpcbind import config, launch

    if not args.dry_run:
        launch.run(options, config.load())
    import sys

    from hpcbind import specview

    assembly = launch.dry_run(options, config.load())
    render = specview.render_json if args.json else specview.render_text
    sys.stdout.write(render(assembly))
    return 1 if any(status == "fail" for status, *_ in assembly.checks) else 0
