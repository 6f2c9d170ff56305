"""The seam between the bind plan and the container: one pure step.

(options, site configuration, located image, plan, the caller's facts) -> a container spec
and an apply log. The spec holds everything the runtime will do: every mount (the system
binds every container gets, home, the current directory, /tmp, the user's ``--bind``s and
the plan's entries), each with its provider and reason; devices; links; the environment;
the working directory; the command. The apply log says what was skipped or changed on the
way from the plan and the options to the spec, and why: nothing is dropped silently.
``hpcrun exec --dry-run`` prints both, ``-v`` prints the log.

Nothing here mounts, forks or reads the host beyond resolving bind sources against the
site's bind policy: the caller (``hpcbind.launch``) reads the host once into a ``Caller``.
The per-rank step (``rank_spec``) narrows a node's container to one rank: its own
environment and directory, and its GPU and HCA for ``--gpu-bind``.

Imported on every rank's path: namedtuples, no dataclasses (they cost each rank ~9 ms).
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import NORMAL, HpcbindError
from hpcbind.host.conventions import installed_helper
from hpcbind.image.source import ImageKind, ImageSource
from hpcbind.mpi import rankenv
from hpcbind.runtime.binds import CREATE, OPTIONAL, Bind, parse_bind_specs
from hpcbind.runtime.container import SCRATCH_DIRS, ContainerSpec, DeviceBind, Overlay
from hpcbind.runtime.environment import (PREPEND, UNSET, ContainerEnv, EnvEdit, container_env,
                                         own_values, parse_env_assignments, read_env_file,
                                         split_env_option)
from hpcbind.runtime.rootfs import RootfsOptions

RUNTIME = "runtime"  # provider of the entries every container gets
USER = "user"  # provider of what the user's options asked for
SITE = "site"  # provider of the site configuration's binds (bind.paths)

# Binds every container gets (Apptainer's defaults). Each says why it is there.
SYSTEM_BINDS = (
    Bind("/proc", "/proc", provider=RUNTIME,
         reason="processes; MPI and debuggers read /proc/self"),
    Bind("/sys", "/sys", provider=RUNTIME,
         reason="devices and topology (hwloc, NUMA, GPU and HCA discovery)"),
)
HOST_FILES = (
    Bind("/etc/hosts", "/etc/hosts", read_only=True, need=OPTIONAL, recursive=False,
         provider=RUNTIME,
         reason="host names as on the host (MPI start-up stalls 5 s on a DNS timeout without)"),
    Bind("/etc/resolv.conf", "/etc/resolv.conf", read_only=True, need=OPTIONAL,
         recursive=False, provider=RUNTIME, reason="DNS as on the host (mount.hosts)"),
)
MINIMAL_DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
MINIMAL_DEV_LINKS = (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                     ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"),
                     ("/dev/ptmx", "pts/ptmx"))
# cwd is not bound when it is one of these (binding the host's /usr over the image's breaks it)
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt",
               "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var")
# Where the ranks' MPI_Comm_spawn is bound (hpcbind/mpi/spawn.c)
SPAWN_LIBRARY = "/.hpcbind/spawn.so"
# Mount options of plan entries the runtime applies as such; nosuid and nodev it applies to
# every bind anyway (nodev except on device binds), and every plan mount is a bind.
HONOURED_OPTIONS = frozenset({"ro", "rw", "noexec", "exec", "nosuid", "nodev", "bind", "rbind"})


# Ranks share one container per node, as the user: a namespace each would part them.
FAKEROOT_NOT_FOR_RANKS = ("--fakeroot is not for the ranks of a launcher: they share one "
                          "container per node, as you", "run the launcher without --fakeroot")


class RunOptions(namedtuple("RunOptions", (
        "image argv binds contain containall home no_home pwd cleanenv env env_files nv rocm "
        "ib devices exec_hint verbose node_session gpu_bind mpi_host fakeroot overlays writable "
        "writable_tmpfs workdir scratch level"),
        defaults=((), False, False, "", False, "", False, (), (), False, False, False, (), "",
                  False, "", "", False, False, (), False, False, "", (), NORMAL))):
    """What the user asked of exec/run/shell. home: SRC[:DST]; devices: CDI names;
    node_session: the key shared by the ranks of one launch (one container per node);
    fakeroot: root inside a user namespace of the caller's subordinate ids; overlays:
    ``--overlay`` values (PATH[:ro]); scratch: container paths; level: how much to say
    (``errors.message_level``)."""

    __slots__ = ()

    @property
    def wants_plan(self) -> bool:
        return bool(self.nv or self.rocm or self.ib or self.devices or self.mpi_host)


# Apptainer's option variables: field -> the names after APPTAINER_ / SINGULARITY_. A flag
# given wins over a variable, APPTAINER_ over SINGULARITY_; list options take the
# variables' items before the flags' (Apptainer appends both; placed first, a flag's bind
# onto the same destination hides the variable's).
OPTION_VARIABLES = (
    ("binds", ("BIND", "BINDPATH")), ("contain", ("CONTAIN",)),
    ("containall", ("CONTAINALL",)), ("home", ("HOME",)), ("no_home", ("NO_HOME",)),
    ("pwd", ("PWD", "TARGET_PWD")), ("cleanenv", ("CLEANENV",)), ("env_files", ("ENV_FILE",)),
    ("nv", ("NV",)), ("rocm", ("ROCM",)), ("overlays", ("OVERLAY", "OVERLAYIMAGE")),
    ("writable", ("WRITABLE",)), ("writable_tmpfs", ("WRITABLE_TMPFS",)),
    ("workdir", ("WORKDIR",)), ("scratch", ("SCRATCH", "SCRATCHDIR")),
)
VARIABLE_PREFIXES = ("APPTAINER_", "SINGULARITY_")
# Go's strconv.ParseBool, which Apptainer reads boolean variables with
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def with_option_variables(options: RunOptions, env: dict[str, str]) -> RunOptions:
    """``options`` completed from Apptainer's option variables (``APPTAINER_BIND``, ...)."""
    changes = {}
    for field, names in OPTION_VARIABLES:
        current = getattr(options, field)
        found = [(n, v) for n, v in (_variable(env, name) for name in names) if v]
        if not found:
            continue
        if isinstance(current, tuple):
            items = tuple(i for _, v in found for i in v.split(",") if i.strip())
            changes[field] = items + current
        elif isinstance(current, bool):
            changes[field] = current or _boolean(*found[0])
        elif not current:
            changes[field] = found[0][1]
    return options._replace(**changes) if changes else options


def _variable(env: dict[str, str], name: str) -> tuple[str, str]:
    for prefix in VARIABLE_PREFIXES:
        if env.get(prefix + name, "").strip():
            return prefix + name, env[prefix + name]
    return "", ""


def _boolean(name: str, value: str) -> bool:
    if value.strip() in _TRUE | _FALSE:
        return value.strip() in _TRUE
    raise HpcbindError(f"bad value {value!r} in {name}", f"set {name}=1 or {name}=0, or unset it")


class Caller(namedtuple("Caller", "env cwd home subids", defaults=(None,))):
    """What the container is assembled for: the caller's environment, current directory and
    home directory (from the password database), read from the host once by the caller;
    subids: a plain user's subordinate ids for --fakeroot (``hpcbind.host.subids.Facts``),
    None when not asked for or already root."""

    __slots__ = ()


class Assembly(namedtuple("Assembly", "spec log checks")):
    """spec: the ContainerSpec; log: lines saying what was skipped or changed and why;
    checks: the plan's checks as (status, name, message, fix), for people."""

    __slots__ = ()


def assemble(options: RunOptions, config, image: ImageSource, plan, caller: Caller) -> Assembly:
    """The whole container: system binds, site binds, /tmp, home, cwd, user binds, then the
    plan."""
    log: list[str] = []
    contain = contained(options, config)
    dev_minimal = contain or config["mount.dev"] == "minimal"
    home_src, home_dst = _home(options, caller)
    workdir = _workdir(options, caller.cwd)
    overlays = parse_overlays(options.overlays, caller.cwd)
    persistent = _persistent_root(options, image, overlays)
    scratch = [_container_dir(p, "--scratch") for item in options.scratch
               for p in item.split(",") if p.strip()]

    binds, devices, links = _dev_entries(dev_minimal)
    binds[:0] = SYSTEM_BINDS
    if config["mount.hosts"]:
        binds += HOST_FILES
    else:
        log.append("/etc/hosts and /etc/resolv.conf: the image's (mount.hosts = no)")
    if options.writable_tmpfs:
        log.append(f"--writable-tmpfs: the root takes writes in the session tmpfs of "
                   f"{config['session.size_mb']} MB (session.size_mb), as it always does here")
    binds += site_binds(config["bind.paths"])
    created = _scratch_binds(contain, config, workdir, log)
    if contain and not workdir and persistent:
        # the image's own /tmp would be kept in the persistent layer: private ones instead
        scratch = [*SCRATCH_DIRS, *scratch]
        log.append(f"/tmp and /var/tmp: empty and private, not kept in {persistent}")
    created += _home_binds(options, config, contain, home_src, home_dst, workdir, log)
    created += [Bind(os.path.join(workdir, "scratch", d.lstrip("/")), d, need=CREATE,
                     provider=USER, reason="--scratch in --workdir") for d in scratch if workdir]
    scratch = [] if workdir else scratch
    enforce_bind_policy([b for b in created if b.need == CREATE], config)
    binds += created
    binds += _cwd_binds(caller.cwd, contain, binds, log)
    user_binds = parse_bind_specs(list(options.binds), caller.cwd)
    enforce_bind_policy(user_binds, config)
    binds += user_binds

    plan_edits: list[EnvEdit] = []
    checks: list[tuple[str, str, str, str]] = []
    if plan is not None:
        binds += [_plan_bind(m, log) for m in plan.mounts]
        devices += _plan_devices(plan.devices, dev_minimal, log)
        links += [(ln.path, ln.target) for ln in plan.links]
        # EnvAction's values are the runtime's edit names ("set", "prepend", ...)
        plan_edits = [EnvEdit(str(op.action), op.name, op.value) for op in plan.env]
        checks = [(str(c.status), c.name, c.message, c.fix) for c in plan.checks]
    spawn = _spawn_library(caller.env, log)
    binds += spawn
    plan_edits += [EnvEdit(PREPEND, "LD_PRELOAD", SPAWN_LIBRARY)] if spawn else []
    if rankenv.under_fork_agent(caller.env):
        # a rank's own mpirun, in the container, must not take hpcrun's host paths for its
        # fork agent
        plan_edits += [EnvEdit(UNSET, name) for name in rankenv.FORK_AGENT_SETTINGS]
    _log_shadowed(binds, log)

    spec = ContainerSpec(
        image=image,
        argv=options.argv,
        env=environment(options, config, caller.env, image, home_dst, plan_edits,
                        user_assignments(options)),
        cwd=initial_dir(options, config, caller.cwd, home_dst),
        binds=tuple(binds),
        devices=tuple(devices),
        links=tuple(links),
        home=home_dst,
        session_size_mb=config["session.size_mb"],
        rootfs=RootfsOptions(squashfuse=_squashfs_server(config),
                             kernel_squashfs=config["image.kernel_squashfs"],
                             extract_fallback=config["image.extract_fallback"],
                             level=options.level),
        new_ipc=options.containall,
        exec_hint=options.exec_hint,
        verbose=options.verbose,
        id_map=_user_namespace(options, caller, log),
        cwd_required=bool(options.pwd),
        overlays=tuple(overlays),
        writable=options.writable,
        scratch=tuple(scratch),
        private_dev=dev_minimal,
        level=options.level,
    )
    return Assembly(spec, tuple(log), tuple(checks))


def _spawn_library(env: dict[str, str], log: list[str]) -> list[Bind]:
    """The bind of hpcbind/mpi/spawn.c's library, which ranks preload: MPI_Comm_spawn then
    starts its processes through the fork agent of ``hpcrun mpirun`` (Open MPI), into the
    container, and is refused in one line under any other launcher, whose daemons would
    start them on the host."""
    if rankenv.place(env) is None:
        return []  # no launcher's daemon to fear: a singleton's daemon would be in here
    library = installed_helper("hpcbind-spawn.so")
    if rankenv.under_fork_agent(env):
        effect = "starts its processes in the container (hpcrun is mpirun's fork agent)"
    else:
        effect = "refused: this launcher would start the processes on the host"
    if library is None:
        log.append("MPI_Comm_spawn: not handled (no hpcbind-spawn.so beside hpcrun); the "
                   "processes it starts may run on the host")
        return []
    log.append(f"MPI_Comm_spawn {effect} (LD_PRELOAD={SPAWN_LIBRARY})")
    return [Bind(library, SPAWN_LIBRARY, read_only=True, recursive=False, provider=RUNTIME,
                 reason=f"MPI_Comm_spawn {effect}")]


def _user_namespace(options: RunOptions, caller: Caller, log: list[str]):
    """--fakeroot: the map of the user namespace to be root in (an ``IdMap``), or None."""
    if not options.fakeroot:
        return None
    if options.node_session:
        raise HpcbindError(*FAKEROOT_NOT_FOR_RANKS)
    if caller.subids is None:
        log.append("--fakeroot: you are root already; no user namespace")
        return None
    from hpcbind.host.subids import fakeroot_map

    idmap = fakeroot_map(caller.subids, fake_owners=False)
    log.append("--fakeroot: root inside, uid map " + ", ".join(
        " ".join(map(str, line)) for line in idmap.uid_map) + (f"; {idmap.note}" if idmap.note
                                                               else ""))
    return idmap


def node_share(assembly: Assembly, gpus_and_hcas) -> dict:
    """What a node's holder tells each rank (JSON): the container's edits and home, the
    located image, and the plan's GPUs and HCAs for ``--gpu-bind``."""
    spec = assembly.spec
    return {"edits": [list(e) for e in spec.env.edits], "home": spec.home,
            "image": list(spec.image), "devices": gpus_and_hcas}


def rank_spec(options: RunOptions, config, caller: Caller, shared: dict, where,
              rank_numa, log: list[str]) -> ContainerSpec:
    """A rank joining its node's container: its own environment and directory, the node's
    edits (user settings and plan, computed once by the holder), its own GPU and HCA.

    where: its ``rankenv.Place`` (None outside a launcher); rank_numa: a function giving the
    NUMA nodes of its CPUs, called only for ``--gpu-bind``.
    """
    image = ImageSource(*shared["image"])
    home = shared["home"]
    base = environment(options, config, caller.env, image, home, [], [])  # edits: the node's
    edits = tuple(EnvEdit(*e) for e in shared["edits"])
    edits += rank_binding(options, shared.get("devices"), where, rank_numa, log)
    env = ContainerEnv(base.base, edits, own_values(edits, caller.env))
    return ContainerSpec(image=image, argv=options.argv, env=env,
                         cwd=initial_dir(options, config, caller.cwd, home), home=home,
                         exec_hint=options.exec_hint, verbose=options.verbose,
                         cwd_required=bool(options.pwd), level=options.level)


def rank_binding(options: RunOptions, devices, where, rank_numa,
                 log: list[str]) -> tuple[EnvEdit, ...]:
    """``--gpu-bind``: the variables narrowing this rank to its own GPU and HCA."""
    if not options.gpu_bind or options.gpu_bind == "none" or not devices or where is None \
            or where.local_rank is None:
        return ()
    from hpcbind.mpi import binding

    gpus = [binding.Gpu(*g) for g in devices[0]]
    hcas = [binding.Hca(*h) for h in devices[1]]
    choice = binding.choose(binding.parse_policy(options.gpu_bind), where.local_rank,
                            where.local_size or 0, gpus, hcas, rank_numa())
    variables = binding.choice_env(choice)
    log.append(f"gpu-bind {choice.reason}: {variables}")
    return tuple(EnvEdit("set", k, v) for k, v in variables)


def contained(options: RunOptions, config) -> bool:
    return options.contain or options.containall or config["defaults.contain"]


def initial_dir(options: RunOptions, config, cwd: str, home: str) -> str:
    if options.pwd:
        return _container_dir(options.pwd, "--pwd")
    return home if contained(options, config) else cwd


def user_assignments(options: RunOptions) -> list[tuple[str, str]]:
    """--env and --env-file, read on the host (a node's holder answers from inside)."""
    user_env = [pair for item in options.env
                for pair in parse_env_assignments(split_env_option(item), "--env")]
    for path in options.env_files:
        user_env += read_env_file(path)
    return user_env


def environment(options: RunOptions, config, host_env: dict[str, str], image: ImageSource,
                home: str, plan_edits: list[EnvEdit],
                user_env: list[tuple[str, str]]) -> ContainerEnv:
    cleanenv = options.cleanenv or options.containall or config["defaults.cleanenv"]
    return container_env(host_env, home=home, cleanenv=cleanenv, user_env=user_env,
                         runtime_vars=_runtime_vars(image), plan_edits=plan_edits)


def enforce_bind_policy(binds: list[Bind], config) -> None:
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


def _dev_entries(minimal: bool) -> tuple[list[Bind], list[DeviceBind], list[tuple[str, str]]]:
    if not minimal:
        return [Bind("/dev", "/dev", device=True, provider=RUNTIME,
                     reason="host devices (mount.dev = yes)")], [], []
    devices = [DeviceBind(f"/dev/{n}", f"/dev/{n}", RUNTIME, "minimal /dev")
               for n in MINIMAL_DEV_NODES]
    binds = [Bind("/dev/pts", "/dev/pts", device=True, provider=RUNTIME, reason="terminals"),
             Bind("/dev/shm", "/dev/shm", provider=RUNTIME,
                  reason="POSIX shared memory (MPI intra-node)")]
    return binds, devices, list(MINIMAL_DEV_LINKS)


def site_binds(paths: list[str]) -> list[Bind]:
    """``bind.paths``: the site's ``SRC[:DST]`` for every container (Apptainer's ``bind
    path``); a source this node lacks is skipped (``-v`` says so), as a site lists /scratch,
    /lustre or /gpfs once for nodes that may not all have them."""
    binds = []
    for entry in paths:
        source, _, destination = entry.partition(":")
        binds.append(Bind(os.path.normpath(source), _container_dir(destination or source,
                                                                  "bind.paths"),
                          need=OPTIONAL, provider=SITE, reason="bind.paths"))
    return binds


def _scratch_binds(contain: bool, config, workdir: str, log: list[str]) -> list[Bind]:
    if contain and workdir:
        log.append(f"/tmp and /var/tmp: in --workdir {workdir} (--contain)")
        return [Bind(os.path.join(workdir, "tmp"), "/tmp", need=CREATE, provider=USER,
                     reason="--workdir, contained /tmp"),
                Bind(os.path.join(workdir, "var_tmp"), "/var/tmp", need=CREATE, provider=USER,
                     reason="--workdir, contained /var/tmp")]
    if contain or not config["mount.tmp"]:
        why = "--contain" if contain else "mount.tmp = no"
        log.append(f"/tmp and /var/tmp: the image's, private and writable ({why})")
        return []
    return [Bind("/tmp", "/tmp", provider=RUNTIME, reason="host /tmp (mount.tmp)"),
            Bind("/var/tmp", "/var/tmp", need=OPTIONAL, provider=RUNTIME,
                 reason="host /var/tmp (mount.tmp)")]


def _home_binds(options: RunOptions, config, contain: bool, src: str, dst: str,
                workdir: str, log: list[str]) -> list[Bind]:
    if contain and workdir and not options.home and not options.no_home:
        return [Bind(os.path.join(workdir, "home"), dst, need=CREATE, provider=USER,
                     reason="--workdir, contained home")]
    why = ("--no-home" if options.no_home else "mount.home = no" if not config["mount.home"]
           else "--contain without --home" if contain and not options.home
           else "no home directory" if not src else "")
    if why:
        log.append(f"home {src or '?'}: not bound ({why}); {dst} is an empty directory")
        return []
    return [Bind(src, dst, provider=USER if options.home else RUNTIME,
                 reason="--home" if options.home else "home directory")]


def _cwd_binds(cwd: str, contain: bool, binds: list[Bind], log: list[str]) -> list[Bind]:
    if contain:
        log.append(f"current directory {cwd}: not bound (--contain)")
        return []
    if cwd in SYSTEM_DIRS or any(cwd.startswith(d + "/") for d in ("/proc", "/sys", "/dev")):
        log.append(f"current directory {cwd}: not bound (a system directory; the image's is "
                   "used)")
        return []
    covering = next((b for b in binds if b.destination != "/" and
                     (cwd == b.destination or cwd.startswith(b.destination.rstrip("/") + "/"))),
                    None)
    if covering is not None:
        log.append(f"current directory {cwd}: not bound again (inside {covering.destination}, "
                   f"{covering.reason})")
        return []
    return [Bind(cwd, cwd, provider=RUNTIME, reason="current directory")]


def _plan_bind(mount, log: list[str]) -> Bind:
    options = mount.options
    ignored = [o for o in options if o not in HONOURED_OPTIONS]
    if ignored:
        log.append(f"{mount.destination} ({mount.provider}): mount option(s) "
                   f"{','.join(ignored)} not applied (a bind takes ro/rw, noexec, nosuid, "
                   "nodev)")
    return Bind(mount.source, mount.destination, read_only="ro" in options,
                recursive="rbind" in options, need=str(mount.need),
                noexec="noexec" in options, provider=mount.provider, reason=_why(mount))


def _plan_devices(devices, dev_minimal: bool, log: list[str]) -> list[DeviceBind]:
    """Device nodes to bind one by one. With the host's /dev bound whole, a node at its host
    path is already there: logged, not bound twice."""
    kept = []
    for d in devices:
        if not dev_minimal and d.source == d.path and d.path.startswith("/dev/"):
            log.append(f"device {d.path} ({d.provider}): not bound by itself, the host's /dev "
                       "is (mount.dev = yes)")
            continue
        kept.append(DeviceBind(d.source, d.path, d.provider, _why(d)))
    return kept


def _why(entry) -> str:
    """A plan entry's reason as the spec shows it: the rule that chose it, and why."""
    return f"{entry.rule}: {entry.reason}" if entry.reason else entry.rule


def _log_shadowed(binds: list[Bind], log: list[str]) -> None:
    """A later bind onto the same destination hides the earlier one (mounted over it)."""
    last = {b.destination: i for i, b in enumerate(binds)}
    for i, b in enumerate(binds):
        if last[b.destination] != i:
            later = binds[last[b.destination]]
            log.append(f"{b.destination}: {b.source} ({b.provider}) is hidden by "
                       f"{later.source} ({later.provider}, {later.reason})")


def _home(options: RunOptions, caller: Caller) -> tuple[str, str]:
    """(host source, container path) of the home directory."""
    if options.home:
        src, _, dst = options.home.partition(":")
        if not src:
            raise HpcbindError(f"--home {options.home!r} names no host directory",
                               "use --home SRC[:DST]")
        src = os.path.normpath(os.path.join(caller.cwd, src))
        return src, _container_dir(dst, "--home") if dst else src
    return caller.home, caller.home


def _container_dir(path: str, option: str) -> str:
    """A directory inside the container, as an option names it: absolute, canonical."""
    if not path.startswith("/"):
        raise HpcbindError(f"{option} {path!r}: not an absolute path in the container",
                           f"give {option} an absolute path (for example /data)")
    return "/" + os.path.normpath(path).lstrip("/")


def _workdir(options: RunOptions, cwd: str) -> str:
    if not options.workdir:
        return ""
    workdir = os.path.normpath(os.path.join(cwd, options.workdir))
    if not os.path.isdir(workdir):
        raise HpcbindError(f"--workdir {options.workdir}: no such directory",
                           "create it first, or give an existing directory")
    return workdir


def parse_overlays(values, cwd: str) -> list[Overlay]:
    """``--overlay PATH[:ro]`` values, in the order given (each above the previous): at most
    one writable, as overlayfs has one upper layer and Apptainer allows one."""
    overlays = []
    for value in values:
        path, _, mode = value.partition(":")
        if not path or mode not in ("", "ro", "rw"):
            raise HpcbindError(f"bad --overlay {value!r}", "use --overlay PATH[:ro]")
        overlays.append(Overlay(os.path.normpath(os.path.join(cwd, path)), mode == "ro"))
    writable = [o.path for o in overlays if not o.read_only]
    if len(writable) > 1:
        raise HpcbindError(f"more than one writable --overlay ({', '.join(writable)})",
                           "make all but one read-only: --overlay PATH:ro")
    return overlays


def _persistent_root(options: RunOptions, image: ImageSource, overlays) -> str:
    """What keeps the root's writes, when something does: "" for the session tmpfs."""
    if options.writable and image.kind != ImageKind.DIRECTORY:
        raise HpcbindError(f"--writable needs a sandbox directory; {image.path} is a "
                           f"{image.kind} image",
                           "use --overlay DIR or IMG for writes that persist, or "
                           "--writable-tmpfs for writes that do not")
    if options.writable and overlays:
        raise HpcbindError("--writable and --overlay together",
                           "give one: --writable writes into the sandbox itself")
    upper = next((o.path for o in overlays if not o.read_only), "")
    return upper or (image.path if options.writable else "")


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _squashfs_server(config) -> str:
    # squashfuse_ll costs every rank ~340 FUSE requests, ours ~5 (benchmarks/launch/README.md)
    return (config["image.squashfuse"] or installed_helper("hpcbind-squashfuse")
            or "squashfuse_ll")


def _runtime_vars(image: ImageSource) -> dict[str, str]:
    # Images built by Apptainer/Singularity read these in their env scripts and runscripts
    name = os.path.basename(image.path)
    return {"HPCBIND_CONTAINER": image.path, "APPTAINER_CONTAINER": image.path,
            "SINGULARITY_CONTAINER": image.path, "APPTAINER_NAME": name,
            "SINGULARITY_NAME": name}
