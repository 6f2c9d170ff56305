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
    "sign": ("hpcbind.commands.sign", "sign a SIF image (PGP or DSSE)"),
    "verify": ("hpcbind.commands.verify", "verify a SIF image's signatures"),
    "config": ("hpcbind.commands.config", "show the effective site configuration"),
    "validate": ("hpcbind.commands.validate",
                 "check inside an image that its GPUs, RDMA devices and MPI work as on the host"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: hpcrun COMMAND [ARGS...]\n"
            "       hpcrun [FLAGS] mpirun|mpiexec|srun [LAUNCHER ARGS] IMAGE COMMAND [ARGS...]\n"
            "\ncommands:\n" + "\n".join(lines) + "\n"
            "\nFLAGS are those of 'hpcrun exec' (--nv, --ib, --bind, ...); each rank joins one "
            "container per node.\n")


def parse(argv: list[str]):
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        raise SystemExit(0)
    if argv[0] == "--version":
        from hpcbind import __version__

        print(f"hpcrun {__version__}")
        raise SystemExit(0)
    name = argv[0]
    if sys.flags.no_site and name not in HOT_COMMANDS:
        import site  # the launcher skipped it (python -S); these commands need rich, etc.

        site.main()
    if name not in COMMANDS:
        from hpcbind.commands import launcher  # hpcrun [FLAGS] mpirun|mpiexec|srun ...

        args = launcher.parse(argv)
        if args is not None:
            return args
        from hpcbind.errors import HpcbindError

        raise HpcbindError(f"unknown command or launcher {name!r}",
                           "run 'hpcrun --help' for the commands, or give a launcher "
                           "(mpirun, mpiexec, srun) after hpcrun's flags")
    module = importlib.import_module(COMMANDS[name][0])
    fast = getattr(module, "parse_fast", None)
    args = fast(argv[1:]) if fast else None
    if args is not None:
        args.command_run = module.run
        return args
    parser = _parser(name)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
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

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        return args.command_run(args)
    except HpcbindError as err:
        print(f"hpcrun: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
