"""What ``hpcrun exec|run|shell`` do: options -> (plan) -> container spec -> enter.

This is the one place that joins the three stages: it asks discovery for a plan only when
``--nv/--rocm/--ib/--device`` ask for one, turns the plan and the user's options into a
``ContainerSpec``, and hands it to the runtime, which knows nothing of GPUs or MPI.
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.config import Config
from hpcbind.errors import HpcbindError
from hpcbind.image.source import ImageKind, ImageSource, locate
from hpcbind.runtime.binds import OPTIONAL, Bind, parse_bind_specs
from hpcbind.runtime.container import ContainerSpec, DeviceBind, enter
from hpcbind.runtime.environment import (APPEND, PASS, PREPEND, SET, UNSET, ContainerEnv,
                                         EnvEdit, container_env, own_values,
                                         parse_env_assignments, read_env_file)
from hpcbind.runtime.rootfs import RootfsOptions

# Binds every container gets (Apptainer's defaults). Each says why it is there.
SYSTEM_BINDS = (
    Bind("/proc", "/proc", reason="processes; MPI and debuggers read /proc/self"),
    Bind("/sys", "/sys", reason="devices and topology (hwloc, NUMA, GPU and HCA discovery)"),
)
HOST_FILES = (
    Bind("/etc/hosts", "/etc/hosts", read_only=True, need=OPTIONAL, recursive=False,
         reason="host names as on the host (MPI start-up stalls 5 s on a DNS timeout without)"),
    Bind("/etc/resolv.conf", "/etc/resolv.conf", read_only=True, need=OPTIONAL,
         recursive=False, reason="DNS as on the host"),
)
MINIMAL_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
MINIMAL_DEV_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                     ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
                     ("/dev/ptmx", "pts/ptmx"))
# cwd is not bound when it is one of these (binding the host's /usr over the image's breaks it)
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt",
               "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var")


class RunOptions(namedtuple("RunOptions", (
        "image argv binds contain containall home no_home pwd cleanenv env env_files nv rocm "
        "ib devices exec_hint verbose node_session gpu_bind mpi_host"),
        defaults=((), False, False, "", False, "", False, (), (), False, False, False, (), "",
                  False, "", "", False))):
    """What the user asked of exec/run/shell. home: SRC[:DST]; devices: CDI names;
    node_session: the key shared by the ranks of one launch (one container per node)."""

    __slots__ = ()


def run(options: RunOptions, config: Config) -> "NoReturn":  # noqa: F821
    host_env = dict(os.environ)
    if options.node_session:
        from hpcbind.runtime import nodesession

        nodesession.join(options.node_session,
                         lambda: _spec_and_devices(options, config, host_env),
                         lambda shared: rank_spec(options, config, host_env, shared))
    spec, devices = _spec_and_devices(options, config, host_env)
    enter(_bound_to_rank(spec, options, host_env, devices))


def rank_spec(options: RunOptions, config: Config, host_env: dict[str, str],
              shared: dict) -> ContainerSpec:
    """A rank joining its node's container: its own environment and directory, the
    container's edits (user settings and plan, computed once by the node's holder)."""
    image = ImageSource(os.path.realpath(options.image), ImageKind.SIF)
    base = _environment(options, config, host_env, image, shared["home"], [])
    edits = tuple(EnvEdit(*e) for e in shared["edits"])
    env = ContainerEnv(base.base, edits, own_values(edits, host_env))
    spec = ContainerSpec(image=image, argv=options.argv, env=env,
                         cwd=_initial_dir(options, config, shared["home"]), home=shared["home"],
                         exec_hint=options.exec_hint, verbose=options.verbose)
    return _bound_to_rank(spec, options, host_env, shared.get("devices"))


def _bound_to_rank(spec: ContainerSpec, options: RunOptions, host_env: dict[str, str],
                   devices) -> ContainerSpec:
    """``--gpu-bind``: this process's own GPU and HCA, narrowed from the node's plan."""
    if not options.gpu_bind or options.gpu_bind == "none" or not devices:
        return spec
    from hpcbind.mpi import binding

    where = binding.local_rank(host_env)
    if where is None:
        return spec  # not under a launcher: keep the plan's selection
    gpus = [binding.Gpu(*g) for g in devices[0]]
    hcas = [binding.Hca(*h) for h in devices[1]]
    choice = binding.choose(binding.parse_policy(options.gpu_bind), where[0], where[1], gpus,
                            hcas, _rank_numa())
    if options.verbose:
        os.write(2, f"hpcrun: gpu-bind {choice.reason}: {binding.choice_env(choice)}\n".encode())
    edits = spec.env.edits + tuple(EnvEdit(SET, k, v) for k, v in binding.choice_env(choice))
    return spec._replace(env=spec.env._replace(edits=edits))


def _rank_numa() -> set[int]:
    """The NUMA nodes of the CPUs this process may run on."""
    from hpcbind.mpi.binding import numa_of_cpus

    base = "/sys/devices/system/node"
    cpulists = {}
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        if entry.startswith("node") and entry[4:].isdigit():
            with open(f"{base}/{entry}/cpulist") as f:
                cpulists[int(entry[4:])] = f.read()
    return numa_of_cpus(set(os.sched_getaffinity(0)), cpulists)


def container_spec(options: RunOptions, config: Config, host_env: dict[str, str]) -> ContainerSpec:
    return _spec_and_devices(options, config, host_env)[0]


def _spec_and_devices(options: RunOptions, config: Config, host_env: dict[str, str]):
    """The container spec, and the GPUs and HCAs of its plan for ``--gpu-bind`` (or None)."""
    if options.gpu_bind:
        from hpcbind.mpi.binding import parse_policy

        parse_policy(options.gpu_bind)  # a bad value fails before anything happens
    image = locate(options.image)
    if config["trust.allowed_signers"] or config["trust.denied_signers"]:
        from hpcbind.image.policy import check_signers  # before anything is mounted

        check_signers(image.path, config["trust.allowed_signers"],
                      config["trust.denied_signers"], config["trust.keyrings"])
    contain = _contained(options, config)
    cwd = os.getcwd()
    home_src, home_dst = _home(options, host_env)

    binds = list(SYSTEM_BINDS)
    devices: list[DeviceBind] = []
    links: list[tuple[str, str]] = []
    dev_minimal = contain or config["mount.dev"] == "minimal"
    if dev_minimal:
        devices += [DeviceBind(f"/dev/{n}", f"/dev/{n}") for n in MINIMAL_DEV_NODES]
        binds += [Bind("/dev/pts", "/dev/pts", device=True, reason="terminals"),
                  Bind("/dev/shm", "/dev/shm", reason="POSIX shared memory (MPI intra-node)")]
        links += MINIMAL_DEV_LINKS
    else:
        binds.append(Bind("/dev", "/dev", device=True, reason="host devices (mount.dev = yes)"))
    if config["mount.hosts"]:
        binds += HOST_FILES
    if not contain and config["mount.tmp"]:
        binds += [Bind("/tmp", "/tmp", reason="host /tmp (mount.tmp)"),
                  Bind("/var/tmp", "/var/tmp", need=OPTIONAL, reason="host /var/tmp")]
    if home_src and not options.no_home and config["mount.home"] and (not contain or options.home):
        binds.append(Bind(home_src, home_dst, reason="home directory"))
    if not contain and _bind_cwd(cwd, binds):
        binds.append(Bind(cwd, cwd, reason="current directory"))
    user_binds = parse_bind_specs(list(options.binds), cwd)
    _enforce_policy(user_binds, config)
    binds += user_binds

    plan_edits: list[EnvEdit] = []
    rank_devices = None
    if (options.nv or options.rocm or options.ib or options.devices or options.mpi_host
            or _under_launcher(host_env)):
        plan_binds, plan_devices, plan_links, plan_edits, rank_devices = _apply_plan(
            options, image, host_env, dev_minimal)
        binds += plan_binds
        devices += plan_devices
        links += plan_links

    return ContainerSpec(
        image=image,
        argv=options.argv,
        env=_environment(options, config, host_env, image, home_dst, plan_edits),
        cwd=_initial_dir(options, config, home_dst),
        binds=tuple(binds),
        devices=tuple(devices),
        links=tuple(links),
        home=home_dst,
        session_size_mb=config["session.size_mb"],
        rootfs=RootfsOptions(squashfuse=config["image.squashfuse"],
                             kernel_squashfs=config["image.kernel_squashfs"],
                             extract_fallback=config["image.extract_fallback"]),
        new_ipc=options.containall,
        exec_hint=options.exec_hint,
        verbose=options.verbose,
    ), rank_devices


def _under_launcher(env: dict[str, str]) -> bool:
    """A rank of mpirun/mpiexec/srun: the PMIx/PMI rendezvous must reach the container.
    Read from the variables alone, so a plain ``hpcrun exec`` imports nothing for it."""
    return any(k in env for k in ("PMIX_RANK", "PMI_FD", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
                                  "SLURM_STEP_ID"))


def _contained(options: RunOptions, config: Config) -> bool:
    return options.contain or options.containall or config["defaults.contain"]


def _initial_dir(options: RunOptions, config: Config, home: str) -> str:
    return options.pwd or (home if _contained(options, config) else os.getcwd())


def _environment(options: RunOptions, config: Config, host_env: dict[str, str],
                 image: ImageSource, home: str, plan_edits: list[EnvEdit]) -> ContainerEnv:
    user_env = [pair for item in options.env
                for pair in parse_env_assignments(item.split(","), "--env")]
    for path in options.env_files:
        user_env += read_env_file(path)
    cleanenv = options.cleanenv or options.containall or config["defaults.cleanenv"]
    return container_env(host_env, home=home, cleanenv=cleanenv, user_env=user_env,
                         runtime_vars=_runtime_vars(image), plan_edits=plan_edits)


def _home(options: RunOptions, host_env: dict[str, str]) -> tuple[str, str]:
    """(host source, container path) of the home directory."""
    import pwd

    if options.home:
        src, _, dst = options.home.partition(":")
        return os.path.abspath(src), dst or os.path.abspath(src)
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = host_env.get("HOME", "/")
    return home, home


def _bind_cwd(cwd: str, binds: list[Bind]) -> bool:
    if cwd in SYSTEM_DIRS or any(cwd.startswith(d + "/") for d in ("/proc", "/sys", "/dev")):
        return False
    return not any(cwd == b.destination or cwd.startswith(b.destination.rstrip("/") + "/")
                   for b in binds if b.destination != "/")


def _enforce_policy(binds: list[Bind], config: Config) -> None:
    allow, deny = config["bind.allow"], config["bind.deny"]
    for bind in binds:
        real = os.path.realpath(bind.source)
        if any(_under(real, d) for d in deny):
            raise HpcbindError(f"binding {bind.source} is denied by the site configuration "
                               f"(bind.deny)", "bind another path or ask the site admin")
        if allow and not any(_under(real, a) for a in allow):
            raise HpcbindError(f"binding {bind.source} is not allowed by the site configuration "
                               f"(bind.allow = {', '.join(allow)})",
                               "bind a path under an allowed prefix")


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _runtime_vars(image: ImageSource) -> dict[str, str]:
    # Images built by Apptainer/Singularity read these in their env scripts and runscripts
    name = os.path.basename(image.path)
    return {"HPCBIND_CONTAINER": image.path, "APPTAINER_CONTAINER": image.path,
            "SINGULARITY_CONTAINER": image.path, "APPTAINER_NAME": name,
            "SINGULARITY_NAME": name}


def _apply_plan(options: RunOptions, image: ImageSource, host_env: dict[str, str],
                dev_minimal: bool):
    import sys

    if sys.flags.no_site:  # the launcher skips site-packages (python -S); discovery needs them
        import site

        site.main()
    from hpcbind.discover import Request, make_plan
    from hpcbind.plan import EnvAction

    from pathlib import Path

    plan = make_plan(Request(nv=options.nv, rocm=options.rocm, ib=options.ib,
                             devices=options.devices, mpi_host=options.mpi_host), env=host_env,
                     image=Path(image.path) if options.mpi_host else None)
    if plan.failed:
        check = plan.failed[0]
        raise HpcbindError(f"preflight check {check.name} failed: {check.message}",
                           check.fix or "see 'hpcrun plan --explain'")
    binds = [Bind(m.source, m.destination, read_only="ro" in m.options, recursive=False,
                  need=m.need.value, reason=f"{m.provider}: {m.rule}")
             for m in plan.mounts]
    devices = [DeviceBind(d.source, d.path) for d in plan.devices
               if dev_minimal or d.source != d.path or not d.path.startswith("/dev/")]
    links = [(ln.path, ln.target) for ln in plan.links]
    actions = {EnvAction.SET: SET, EnvAction.PREPEND: PREPEND, EnvAction.APPEND: APPEND,
               EnvAction.UNSET: UNSET, EnvAction.PASS: PASS}
    edits = [EnvEdit(actions[op.action], op.name, op.value) for op in plan.env]
    from hpcbind.mpi.binding import plan_devices

    gpus, hcas = plan_devices(plan)
    return binds, devices, links, edits, ([list(g) for g in gpus], [list(h) for h in hcas])
