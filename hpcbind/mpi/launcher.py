"""``hpcrun [FLAGS] mpirun|mpiexec|srun [LAUNCHER ARGS] IMAGE COMMAND [ARGS]``: the hybrid model.

The host's launcher starts the ranks; each rank runs ``hpcrun exec --node-session KEY FLAGS
IMAGE COMMAND``, joins its node's container and execs the program, whose MPI library talks to
the host's PMIx/PMI server. Everything between the launcher's name and the image belongs to
the launcher; hpcrun's flags come before the launcher's name.

The image is the first operand after the launcher's options, and it must be an image (SIF,
squashfs or sandbox: checked by content). To find it, each launcher family has a table of its
options that take values (so ``-np 4`` and ``--mca btl self`` are skipped whole); an option
missing from the table is taken as a flag, and if its value is then taken for the image,
the check fails with the fix (write ``--opt=value``).

Pure functions: ``rewrite`` maps a launcher command line to the one that runs the ranks.
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import HpcbindError
from hpcbind.mpi import rankenv

OPENMPI, MPICH, SLURM = "openmpi", "mpich", "slurm"

# The command names each family answers to (Debian's alternatives included).
LAUNCHER_FAMILIES = {
    "mpirun": OPENMPI, "mpiexec": OPENMPI, "orterun": OPENMPI, "mpirun.openmpi": OPENMPI,
    "mpiexec.openmpi": OPENMPI, "prterun": OPENMPI,
    "mpirun.mpich": MPICH, "mpiexec.mpich": MPICH, "mpiexec.hydra": MPICH,
    "srun": SLURM,
}

# Options that take one value, and those that take two, per family. Long options may also be
# written --opt=value, which needs no table.
_OPENMPI_ONE = {
    "-n", "-np", "--np", "-c", "-N", "--npernode", "-npernode", "--npersocket", "-npersocket",
    "-H", "-host", "--host", "-hostfile", "--hostfile", "-machinefile", "--machinefile",
    "--default-hostfile", "-x", "-am", "--am", "--tune", "--prefix", "-wdir", "--wdir", "-wd",
    "--path", "-path", "--map-by", "-map-by", "--rank-by", "-rank-by", "--bind-to",
    "-bind-to", "--output-filename", "-output-filename", "--timeout", "--preload-files",
    "--stdin", "-stdin", "--app", "-app", "--rankfile", "-rf", "--cpu-set", "--cpus-per-proc",
    "--cpus-per-rank", "--personality", "--launch-agent", "--tmpdir", "--report-uri",
    "--ompi-server", "-s", "--report-pid", "--display-map-devel", "--dvm-uri", "--hnp",
}
_OPENMPI_TWO = {"--mca", "-mca", "--gmca", "-gmca", "--pmixmca", "-pmixmca"}
_MPICH_ONE = {
    "-n", "-np", "-f", "-hostfile", "-machinefile", "-hosts", "-host", "-ppn", "-genvlist",
    "-envlist", "-wdir", "-configfile", "-launcher", "-launcher-exec", "-bootstrap",
    "-bootstrap-exec", "-bind-to", "-binding", "-map-by", "-iface", "-rmk", "-demux",
    "-outfile-pattern", "-errfile-pattern", "-usize", "-ckpointlib", "-ckpoint-prefix",
    "-ckpoint-num", "-gpus-per-proc", "-gpu-bind", "-arch", "-path", "-tmpdir", "-nameserver",
}
_MPICH_TWO = {"-genv", "-env"}
_SLURM_ONE = {
    "-n", "--ntasks", "-N", "--nodes", "-c", "--cpus-per-task", "-p", "--partition", "-t",
    "--time", "-w", "--nodelist", "-x", "--exclude", "-o", "--output", "-e", "--error", "-i",
    "--input", "-J", "--job-name", "-A", "--account", "-q", "--qos", "-m", "--distribution",
    "-D", "--chdir", "-G", "--gpus", "-d", "--dependency", "-C", "--constraint", "--mpi",
    "--gres", "--gpus-per-task", "--gpus-per-node", "--mem", "--mem-per-cpu", "--mem-per-gpu",
    "--export", "--cpu-bind", "--gpu-bind", "--ntasks-per-node", "--ntasks-per-socket",
    "--cpus-per-gpu", "--reservation", "--jobid", "--het-group", "-r", "--relative",
    "-T", "--threads", "-W", "--wait", "--kill-on-bad-exit", "-K", "--signal", "--cores-per-socket",
    "--sockets-per-node", "--threads-per-core", "--hint", "--network", "--comment",
    "--begin", "--deadline", "--nice", "--priority", "--wckey", "--switches", "--prolog",
    "--epilog", "--task-prolog", "--task-epilog", "--container", "--tres-per-task",
}
VALUE_OPTIONS = {
    OPENMPI: (_OPENMPI_ONE, _OPENMPI_TWO),
    MPICH: (_MPICH_ONE, _MPICH_TWO),
    SLURM: (_SLURM_ONE, set()),
}
# How a variable reaches ranks on other nodes: Open MPI forwards only what -x names; Hydra
# and srun forward the whole environment by default.
ENV_FORWARD = {OPENMPI: lambda name: ["-x", name], MPICH: lambda name: [],
               SLURM: lambda name: []}
# hpcrun's own variables that must reach every rank
FORWARDED_PREFIXES = ("HPCBIND_", "APPTAINERENV_", "SINGULARITYENV_", "HPCRUNENV_")

LauncherLine = namedtuple("LauncherLine", "launcher family options image command")


def family_of(name: str) -> str | None:
    return LAUNCHER_FAMILIES.get(os.path.basename(name))


def split(argv: list[str]) -> LauncherLine:
    """``[launcher, *options, IMAGE, *command]`` -> its parts (IMAGE not yet checked)."""
    launcher, rest = argv[0], argv[1:]
    family = family_of(launcher)
    if family is None:
        raise HpcbindError(f"{launcher!r} is not a launcher hpcrun knows",
                           f"use one of {', '.join(sorted(LAUNCHER_FAMILIES))}")
    one, two = VALUE_OPTIONS[family]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name = arg.split("=", 1)[0]
        if "=" in arg and name.startswith("--"):
            i += 1
        elif arg in two:
            i += 3
        elif arg in one:
            i += 2
        else:
            i += 1
    if i >= len(rest):
        raise HpcbindError(f"no image in '{' '.join(argv)}'",
                           f"write hpcrun [FLAGS] {launcher} [{launcher} OPTIONS] IMAGE COMMAND")
    image, command = rest[i], rest[i + 1:]
    if not command:
        raise HpcbindError(f"no command after the image {image}",
                           f"write hpcrun [FLAGS] {launcher} [OPTIONS] IMAGE COMMAND [ARGS]")
    return LauncherLine(launcher, family, rest[:i], image, command)


def rewrite(line: LauncherLine, hpcrun: str, exec_flags: list[str], key: str,
            env: dict[str, str], starter: str | None) -> tuple[list[str], dict[str, str]]:
    """The launcher command that runs every rank through ``hpcrun exec`` in the node session,
    behind ``hpcrun-starter`` (C) when there is one: a rank that finds its node's holder
    then joins without starting Python (see hpcbind/runtime/starter.c); and the variables
    to add to the launcher's environment.

    Under Open MPI, that command is the daemons' fork agent, which they put in front of
    every process they start: the processes MPI_Comm_spawn asks for join the container like
    the initial ranks. Elsewhere it goes in front of the command, and spawning is refused
    in the container (``hpcbind.assemble``)."""
    added = {}
    prefix = [hpcrun, "exec", "--node-session", key, *exec_flags, line.image]
    if starter:
        prefix = [starter, key, str(len(prefix)), *prefix]
    if line.family == OPENMPI:
        agent = fork_agent(line, prefix, env)
        added = {rankenv.FORK_AGENT_VARIABLE: "1", rankenv.FORK_AGENT_SETTINGS[1]: agent}
        # Open MPI 4's daemons take the agent from mpirun's options (5's, from PRTE_MCA_)
        options = ["--mca", "orte_fork_agent", agent, *line.options]
        command = [prefix[0], rankenv.FORK_AGENT_MARK, *line.command]
    else:
        options, command = list(line.options), [*prefix, *line.command]
    forwarded = [arg for name in sorted({**env, **added}) if name.startswith(FORWARDED_PREFIXES)
                 for arg in ENV_FORWARD[line.family](name)]
    return [line.launcher, *forwarded, *options, *command], added


def fork_agent(line: LauncherLine, prefix: list[str], env: dict[str, str]) -> str:
    """The prefix as Open MPI's fork agent: one string that Open MPI splits at spaces."""
    for setting in rankenv.FORK_AGENT_SETTINGS:
        option = setting.split("_MCA_")[1]
        if option in line.options or any(name.endswith("MCA_" + option) for name in env):
            raise HpcbindError(f"the job sets Open MPI's {option}, which hpcrun mpirun uses "
                               "to start ranks in the container",
                               f"leave {option} unset, or run mpirun [OPTIONS] hpcrun exec "
                               "IMAGE COMMAND without hpcrun in front")
    if any(word == "--fork-agent" or word.startswith("--fork-agent=") for word in line.options):
        raise HpcbindError("the job sets mpirun --fork-agent, which hpcrun mpirun uses to "
                           "start ranks in the container", "drop --fork-agent")
    for word in prefix:
        if not word or any(c.isspace() for c in word):
            raise HpcbindError(f"{word!r} cannot be part of Open MPI's fork agent, which is "
                               "split at spaces", "use paths and values without spaces (a "
                               "symlink to the image or a --bind without spaces)")
    return " ".join(prefix)


def not_an_image_hint(line: LauncherLine) -> str:
    previous = line.options[-1] if line.options else ""
    if previous.startswith("-"):
        return (f"if {line.image!r} is the value of {line.launcher}'s option {previous}, "
                f"write {previous}={line.image}")
    return f"put the image right before the command: {line.launcher} [OPTIONS] IMAGE COMMAND"


def family_check(family: str, image_mpi: list[dict]) -> tuple[str, str] | None:
    """(problem, fix) when the launcher cannot start the image's MPI, else None.

    ``image_mpi``: the image's MPI libraries as its stored facts hold them (``family``,
    ``vendor``, ``version``, ``path``; ``hpcbind.image.facts_cache``). ``mpirun`` of Open
    MPI speaks PMIx to Open MPI; Hydra speaks PMI-1/2 to the MPICH ABI family; srun serves
    both (--mpi=pmix / pmi2), so it is left to the plan's PMIx checks.
    """
    if not image_mpi or family == SLURM:
        return None
    families = {str(lib["family"]) for lib in image_mpi}
    wanted = {OPENMPI: "openmpi", MPICH: "mpich"}[family]
    if wanted in families:
        return None
    found = ", ".join(describe_mpi(lib["vendor"], lib["version"], lib["path"])
                      for lib in image_mpi)
    other = {"openmpi": "mpirun.openmpi", "mpich": "mpiexec.mpich"}
    fix_launcher = " or ".join(other[f] for f in sorted(families) if f in other) or "srun"
    return (f"the image's MPI is {found}, which {family} launchers cannot start",
            f"launch it with {fix_launcher}, or use an image built with the host's MPI")


def describe_mpi(vendor: str, version: str, path: str) -> str:
    """"Open MPI 4.1.4 (libmpi.so.40.30.4)": the real file's name, as Sarus prints it."""
    release = f" {version}" if version else ""
    return f"{vendor}{release} ({os.path.basename(path)})"


# Filesystems every node of a cluster sees alike. Anything else (ext4, xfs, tmpfs, overlay)
# is taken as node-local.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.ceph", "cephfs",
    "glusterfs", "fuse.glusterfs", "panfs", "wekafs", "fuse.cvmfs2", "cvmfs", "virtiofs", "9p",
    "fuse.sshfs", "pvfs2", "orangefs", "quobyte", "fuse.quobyte", "vast", "fuse.dvs", "dvs",
})
_HOST_OPTIONS = {
    OPENMPI: ({"-H", "-host", "--host"}, {"-hostfile", "--hostfile", "-machinefile",
                                         "--machinefile", "--default-hostfile"}),
    MPICH: ({"-hosts", "-host"}, {"-f", "-hostfile", "-machinefile"}),
    SLURM: ({"-w", "--nodelist"}, set()),
}


def filesystem_type(path: str, mountinfo: str) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point that prefixes it)."""
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fstype = line.split(" - ", 1)[1].split()[0]
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fstype
    return best_type


def named_hosts(line: LauncherLine, read_file) -> list[str]:
    """Hosts the launcher line names: host lists and host files (Slurm node names as given)."""
    lists, files = _HOST_OPTIONS[line.family]
    hosts: list[str] = []
    options = line.options
    for i, arg in enumerate(options):
        name, eq, inline = arg.partition("=")
        value = inline if eq else (options[i + 1] if i + 1 < len(options) else "")
        if name in lists:
            hosts += [h.split(":")[0] for h in value.split(",") if h]
        elif name in files:
            text = read_file(value) or ""
            hosts += [ln.split()[0].split(":")[0] for ln in text.splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
    return hosts


def image_visibility(image_path: str, fstype: str, remote: list[str]) -> tuple[str, str] | None:
    """(problem, fix) when ranks on ``remote`` hosts cannot see the image, else None."""
    if not remote or fstype in SHARED_FILESYSTEMS:
        return None
    return (f"the image {image_path} is on a node-local filesystem ({fstype}) but the job runs "
            f"on {', '.join(sorted(set(remote))[:4])}",
            "put the image (and hpcrun) on a filesystem every node mounts (NFS, Lustre, GPFS...)")
