"""``hpcrun``: argument parsing only, then a call into the module that does the work.

Each subcommand lives in ``hpcbind/commands/<name>.py`` with two functions,
``configure(parser)`` and ``run(args) -> int``. Only the invoked command's module is imported:
``hpcrun exec`` runs once per MPI rank, and importing every command's dependencies (rich,
cryptography, pyelftools) would cost each rank tens of milliseconds. For the same reason a
per-rank command may offer ``parse_fast(argv) -> args | None``; argparse is imported only
when it returns None (``--help``, a mistake to explain).
"""

from __future__ import annotations

import importlib
import sys

# Commands on the per-rank path: they import only the standard library and hpcbind.
HOT_COMMANDS = frozenset({"exec", "run", "shell"})

# name -> (module, one-line help). Order is the order of ``hpcrun --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "exec": ("hpcbind.commands.exec", "run a command inside an image"),
    "run": ("hpcbind.commands.run", "run the image's runscript"),
    "shell": ("hpcbind.commands.shell", "start an interactive shell inside an image"),
    "inspect": ("hpcbind.commands.inspect", "show an image's labels, definition, runscript, environment"),
    "plan": ("hpcbind.commands.plan", "show what --nv/--rocm/--ib would bind, and why"),
    "build": ("hpcbind.commands.build", "build a SIF image from a definition file, sandbox, "
              "squashfs or image reference"),
    "pull": ("hpcbind.commands.pull", "pull an image (docker://, oci:, oci-archive:, "
             "docker-archive:) into a SIF file"),
    "cache": ("hpcbind.commands.cache", "list or clean the cache of pulled layers and images"),
    "sif": ("hpcbind.commands.sif", "read and edit SIF files (header, list, info, dump, new, add, del, setprim)"),
    "overlay": ("hpcbind.commands.overlay", "create an ext3 overlay image for --overlay"),
    "sign": ("hpcbind.commands.sign", "sign a SIF image (PGP or DSSE)"),
    "verify": ("hpcbind.commands.verify", "verify a SIF image's signatures"),
    "config": ("hpcbind.commands.config", "show the effective site configuration"),
    "validate": ("hpcbind.commands.validate",
                 "check inside an image that its GPUs, RDMA devices and MPI work as on the host"),
}


# Apptainer's global flags, given before the command: -> the attribute they set.
GLOBAL_FLAGS = {"-d": "debug", "--debug": "debug", "-v": "verbose", "--verbose": "verbose",
                "-q": "quiet", "--quiet": "quiet", "-s": "silent", "--silent": "silent"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: hpcrun [-d|-v|-q|-s] COMMAND [ARGS...]\n"
            "       hpcrun [FLAGS] mpirun|mpiexec|srun [LAUNCHER ARGS] IMAGE COMMAND [ARGS...]\n"
            "\ncommands:\n" + "\n".join(lines) + "\n"
            "\nglobal flags: -d/--debug (tracebacks too), -v/--verbose, -q/--quiet (warnings and "
            "errors only), -s/--silent (errors only)\n"
            "FLAGS are those of 'hpcrun exec' (--nv, --ib, --bind, ...); each rank joins one "
            "container per node.\n")


def split_global_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the global flags before the command, the rest)."""
    count = next((i for i, arg in enumerate(argv) if arg not in GLOBAL_FLAGS), len(argv))
    return argv[:count], argv[count:]


def parse(argv: list[str]):
    global_flags, argv = split_global_flags(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        raise SystemExit(0)
    if argv[0] == "--version":
        from hpcbind import __version__

        print(f"hpcrun {__version__}")
        raise SystemExit(0)
    name = argv[0]
    if name not in HOT_COMMANDS:
        from hpcbind.host.conventions import load_site_packages

        load_site_packages()
    if name not in COMMANDS:
        from hpcbind.commands import launcher  # hpcrun [FLAGS] mpirun|mpiexec|srun ...

        # exec's options include the global flags (Apptainer's are persistent flags, valid
        # after the command too), so they reach every rank with the other FLAGS
        args = launcher.parse(global_flags + argv)
        if args is not None:
            return args
        from hpcbind.errors import HpcbindError

        raise HpcbindError(f"unknown command or launcher {name!r}",
                           "run 'hpcrun --help' for the commands, or give a launcher "
                           "(mpirun, mpiexec, srun) after hpcrun's flags")
    if name not in HOT_COMMANDS:
        import tempfile

        from hpcbind.host.conventions import temp_dir

        tempfile.tempdir = temp_dir()  # APPTAINER_TMPDIR for builds and pulls
    module = importlib.import_module(COMMANDS[name][0])
    fast = getattr(module, "parse_fast", None)
    args = fast(global_flags + argv[1:]) if fast else None
    if args is not None:
        args.command_run = module.run
        return args
    parser = _parser(name)
    module.configure(parser)
    if name in HOT_COMMANDS:  # their option table has the global flags
        args = parser.parse_args(global_flags + argv[1:])
    else:
        # parsed apart: 'hpcrun -s build' is silent, 'hpcrun build -s' a sandbox
        args = parser.parse_args(argv[1:])
        for flag in global_flags:
            setattr(args, GLOBAL_FLAGS[flag], True)
    args.command_run = module.run
    return args


def _parser(name: str):
    """argparse, with usage errors as HpcbindErrors (exit 255, as Apptainer)."""
    import argparse

    from hpcbind.errors import HpcbindError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            self.print_usage(sys.stderr)
            raise HpcbindError(message, f"see 'hpcrun {name} --help'")

    return Parser(prog=f"hpcrun {name}", description=COMMANDS[name][1])


def main(argv: list[str] | None = None) -> int:
    from hpcbind.errors import HpcbindError

    argv = sys.argv[1:] if argv is None else argv
    debug = "debug" in (GLOBAL_FLAGS[f] for f in split_global_flags(argv)[0])
    try:
        args = parse(argv)
        debug = bool(getattr(args, "debug", debug))
        if debug:  # now: inside the container the host's Python library is out of reach
            import traceback
        return args.command_run(args)
    except HpcbindError as err:
        if debug:  # a traceback for a bug report, as asked
            traceback.print_exc()
        print(f"hpcrun: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
