"""What ``hpcrun exec|run|shell`` do, as two recipes.

``run``: read the caller, locate the image, ask discovery for a plan when ``--nv/--rocm/
--ib/--device/--mpi=host`` or a launcher asks for one, assemble the container spec
(``hpcbind.assemble``, the one seam between plan and container), enter it.

``run_rank``: a rank of ``hpcrun mpirun|mpiexec|srun`` (``--node-session KEY``) joins its
node's container, or becomes the node's holder, which runs ``run``'s steps once for the
node; then it execs its own spec. The runtime knows nothing of GPUs or MPI: it is told how
many ranks the node expects.
"""

from __future__ import annotations

import os

from hpcbind.assemble import (Assembly, Caller, RunOptions, assemble, node_share, rank_binding,
                               rank_spec)
from hpcbind.errors import HpcbindError
from hpcbind.host.conventions import load_site_packages
from hpcbind.image.source import locate
from hpcbind.mpi import rankenv
from hpcbind.runtime.container import enter

TYPE_CHECKING = False  # typing's flag without importing typing, which costs a rank ~3 ms
if TYPE_CHECKING:
    from typing import NoReturn


def run(options: RunOptions, config) -> NoReturn:
    if options.node_session:
        run_rank(options, config)  # returns only when the node's container is out of reach
        argv, env = started_as(options.argv, os.environ)
        os.environ.clear()
        os.environ.update(env)
        options = options._replace(argv=argv)
    caller = _caller(options.fakeroot)
    assembly, plan = _assembled(options, config, caller, refuse_failed=True)
    _show_log(assembly, options)
    _warn_checks(assembly, options)
    spec = assembly.spec
    if options.gpu_bind and plan is not None:  # a rank started without a node session
        log: list[str] = []
        narrowed = rank_binding(options, _gpus_and_hcas(plan), rankenv.place(caller.env),
                                lambda: _rank_numa(os.getpid(), _numa_cpulists()), log)
        _show_log(Assembly(spec, log, ()), options)
        spec = spec._replace(env=spec.env._replace(edits=spec.env.edits + narrowed))
    enter(spec)


def run_rank(options: RunOptions, config) -> None:
    """Join the node's container and exec; returns only when the node session cannot be
    joined (its name held by another user): ``run`` then makes this rank its own container.

    The node's holder computes each rank's spec from the rank's own argv, environment and
    directory, so a rank that hpcrun-starter (C) brings in gets what this one gets."""
    from hpcbind.runtime import nodesession

    listener = nodesession.inherited_listener()  # before the environment is read
    caller = _caller()
    nodesession.join(options.node_session, list(options.argv), caller.env, caller.cwd,
                     listener, *_holder_steps(options, config, caller))


def prestart_holder(key: str, rank_options) -> None:
    """``hpcrun mpirun`` under Open MPI, before it checks the image and execs mpirun: this
    node's holder, started now so that its imports overlap both instead of delaying the
    first rank (benchmarks/launch/README.md). It sets the container up for the first rank
    that comes, with the options that rank's command line gives (``rank_options(argv)``),
    its environment and directory, as that rank would have."""
    from hpcbind.runtime import nodesession

    def warm() -> None:
        load_site_packages()
        for module in ("hpcbind.config", "hpcbind.discover", "hpcbind.image.sif",
                       "hpcbind.mpi.host", "hpcbind.runtime.container"):
            __import__(module)  # what the first request needs, loaded while mpirun starts

    def setup(request) -> tuple:
        from hpcbind import config

        os.environ.clear()
        os.environ.update(request.env)
        try:
            os.chdir(request.cwd)
        except OSError:
            pass  # the container's directory is the request's all the same
        return _holder_steps(rank_options(request.argv), config.load(), _caller())

    nodesession.prestart(key, warm, setup)


def _holder_steps(options: RunOptions, config, caller: Caller) -> tuple:
    """``nodesession.join``'s make_container, make_rank and job_of for these options."""
    def make_rank(shared: dict, request) -> tuple:
        log: list[str] = []
        argv, env = started_as(request.argv, request.env)
        spec = rank_spec(options._replace(argv=argv), config,
                         Caller(env, request.cwd, caller.home), shared, rankenv.place(env),
                         lambda: _rank_numa(request.pid, shared["cpulists"]), log)
        return spec, "".join(f"hpcrun: {line}\n" for line in log) if options.verbose else ""

    def job_of(request) -> tuple[str, int | None]:
        where = rankenv.place(request.env)
        return rankenv.job(request.env), where.local_size if where else None

    return lambda: _node_container(options, config, caller), make_rank, job_of


def started_as(argv, env) -> tuple[tuple[str, ...], dict[str, str]]:
    """A rank's command and environment as if Open MPI had started its program itself: without
    the two words that got it past Open MPI's check that the program exists on the host
    (``rankenv.FORK_AGENT_MARK``; its fork agent, hpcrun, runs what follows them, which need
    only exist in the image), and with OMPI_COMMAND and OMPI_ARGV naming that program."""
    if not (len(argv) > 2 and argv[1] == rankenv.FORK_AGENT_MARK and (
            argv[0] in rankenv.SPAWN_COMMANDS
            or os.path.basename(argv[0]) in ("hpcrun", "hpcrun-starter"))):
        return tuple(argv), dict(env)
    program = tuple(argv[2:])
    env = dict(env)
    if "OMPI_COMMAND" in env:
        env["OMPI_COMMAND"] = os.path.basename(program[0])
        env.pop("OMPI_ARGV", None)
        if len(program) > 1:
            env["OMPI_ARGV"] = " ".join(program[1:])
    return program, env


def dry_run(options: RunOptions, config) -> Assembly:
    """The whole container, nothing mounted and nothing run (failed checks shown, not raised)."""
    return _assembled(options, config, _caller(options.fakeroot), refuse_failed=False)[0]


def container_for_plan(image: str, plan, config) -> Assembly:
    """The container ``hpcrun exec IMAGE`` (default options) makes of ``plan``, for
    ``hpcrun plan IMAGE``: the system binds, home, cwd and /tmp with the plan's entries."""
    options = RunOptions(image=image, argv=("COMMAND",))
    return assemble(options, config, locate(image), plan, _caller())


def _node_container(options: RunOptions, config, caller: Caller):
    """The holder's work, once per node: the spec it prepares, and what it tells each rank."""
    assembly, plan = _assembled(options, config, caller, refuse_failed=True)
    _show_log(assembly, options)
    _warn_checks(assembly, options)
    shared = node_share(assembly, _gpus_and_hcas(plan) if plan else None)
    # read on the host: the holder answers ranks from inside the container
    shared["cpulists"] = _numa_cpulists() if options.gpu_bind else {}
    return assembly.spec, shared


def _gpus_and_hcas(plan) -> list[list[list]]:
    """The plan's GPUs and HCAs for ``--gpu-bind``, as plain lists (the holder sends JSON)."""
    from hpcbind.mpi.binding import plan_devices

    gpus, hcas = plan_devices(plan)
    return [[list(g) for g in gpus], [list(h) for h in hcas]]


def _assembled(options: RunOptions, config, caller: Caller, refuse_failed: bool):
    if options.gpu_bind:
        from hpcbind.mpi.binding import parse_policy

        parse_policy(options.gpu_bind)  # a bad value fails before anything happens
    image = locate(options.image)
    if config["trust.allowed_signers"] or config["trust.denied_signers"]:
        load_site_packages()
        from hpcbind.image.policy import check_signers  # before anything is mounted

        check_signers(image.path, config["trust.allowed_signers"],
                      config["trust.denied_signers"], config["trust.keyrings"])
    plan = None
    if options.wants_plan or rankenv.under_launcher(caller.env):
        plan = _plan(options, image.path, caller.env)
        if refuse_failed and plan.failed:
            check = plan.failed[0]
            raise HpcbindError(f"preflight check {check.name} failed: {check.message}",
                               check.fix or "see 'hpcrun plan --explain'")
    return assemble(options, config, image, plan, caller), plan


def _plan(options: RunOptions, image_path: str, env: dict[str, str]):
    load_site_packages()
    from pathlib import Path

    from hpcbind.discover import Request, make_plan

    return make_plan(Request(nv=options.nv, rocm=options.rocm, ib=options.ib,
                             devices=options.devices, mpi_host=options.mpi_host), env=env,
                     image=Path(image_path) if options.mpi_host else None)


def _caller(fakeroot: bool = False) -> Caller:
    import pwd

    env = dict(os.environ)
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
        home, name = entry.pw_dir, entry.pw_name
    except KeyError:
        home, name = env.get("HOME", "/"), str(uid)  # /etc/subuid may name the uid itself
    subids = None
    if fakeroot and uid != 0:
        from hpcbind.host.subids import discover
        from hpcbind.hostroot import HostRoot

        subids = discover(HostRoot(), name, uid, os.getgid(), env.get("PATH", ""))
    return Caller(env, os.getcwd(), home, subids)


def _show_log(assembly: Assembly, options: RunOptions) -> None:
    if options.verbose:
        os.write(2, "".join(f"hpcrun: {line}\n" for line in assembly.log).encode())


def _warn_checks(assembly: Assembly, options: RunOptions) -> None:
    """The plan's warnings (--nv on a node without a GPU, ...), one line each, as Apptainer
    warns and runs; once per node under a launcher."""
    from hpcbind.errors import warn

    for status, name, message, _ in assembly.checks:
        if status == "warn":
            warn(options.level, f"{name}: {message}")


def _rank_numa(pid: int, cpulists: dict) -> set[int]:
    """The NUMA nodes of the CPUs process ``pid`` may run on."""
    from hpcbind.mpi.binding import numa_of_cpus

    return numa_of_cpus(set(os.sched_getaffinity(pid)),
                        {int(node): cpus for node, cpus in cpulists.items()})


def _numa_cpulists() -> dict[int, str]:
    base = "/sys/devices/system/node"
    cpulists = {}
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        if entry.startswith("node") and entry[4:].isdigit():
            with open(f"{base}/{entry}/cpulist") as f:
                cpulists[int(entry[4:])] = f.read()
    return cpulists
