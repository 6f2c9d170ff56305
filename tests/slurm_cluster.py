"""A real Slurm 22.05 for the test suite: one node, or three nodes emulated on this machine.

Debian's slurm-wlm runs here without systemd or cgroups (see ../shared/reference/
this-machine.md, "Slurm"). Every cluster is self-contained under its scratch directory:
its own munged (private key and socket, named in slurm.conf's ``AuthInfo``), its own
slurmctld and slurmd ports, state, spool and logs. Two clusters, or two pytest processes,
therefore never share a daemon, and stopping one cannot break another; the host's
``/etc/munge`` and ``/run/munge`` are neither needed nor touched.

Every slurmd runs in a private mount namespace, as a real node would have its own disks:

* ``<scratch>/spool`` (``SlurmdSpoolDir``) is a bind of ``nodes/<name>/spool``. PMIx's
  ``PMIX_SERVER_TMPDIR`` is ``<SlurmdSpoolDir>/pmix.<job>.<step>``: the same path on
  every node, a different directory on each, as on a real cluster.
* ``<scratch>/pmix`` (``PMIxCliTmpDirBase`` in mpi.conf, which does not expand ``%n``) is a
  bind of ``nodes/<name>/pmix``: otherwise the nodes' steps share and delete one client dir.
* ``/dev/shm`` is a private tmpfs: a shared one makes Open MPI's vader segments of
  different "nodes" collide and ranks crash.

The single node goes through the same path (one node named after the host), so both
layouts are tested by the same code.

PID 1 here does not reap orphans, so slurmstepd and task zombies may stay listed by ps;
liveness is read from /proc/<pid>/status (State not Z).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SLURM_TOOLS = ("slurmctld", "slurmd", "srun", "sinfo", "squeue", "scancel", "munged",
               "mungekey", "unshare", "setpriv")
MUNGE_USER = "munge"
START_TIMEOUT = 60.0  # s; a node is idle 1 s after start, but 38 s was seen at load 400
STOP_TIMEOUT = 10.0  # s for daemons and job steps to exit after SIGTERM/scancel
POLL = 0.05  # s between readiness and liveness checks
LOG_TAIL_LINES = 15

THREE_NODES = ("n1", "n2", "n3")
PARTITION = "test"

# Run in the node's fresh mount namespace before slurmd: $1..$4 are the spool and PMIx
# client directories and their mount points; the rest is slurmd's argv.
NODE_NAMESPACE_SETUP = ('mount --bind "$1" "$2" && mount --bind "$3" "$4" && '
                        'mount -t tmpfs -o mode=1777 shm /dev/shm && shift 4 && exec "$@"')


class SlurmStartError(RuntimeError):
    """A daemon exited or the nodes did not become idle; the message ends with log tails."""


@dataclass(frozen=True)
class Layout:
    """Where a cluster keeps everything, all under ``scratch``."""

    scratch: Path

    @property
    def conf(self) -> Path:
        return self.scratch / "slurm.conf"

    @property
    def munge(self) -> Path:
        return self.scratch / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "socket"

    @property
    def state(self) -> Path:
        return self.scratch / "state"

    @property
    def logs(self) -> Path:
        return self.scratch / "log"

    @property
    def spool(self) -> Path:
        return self.scratch / "spool"

    @property
    def pmix(self) -> Path:
        return self.scratch / "pmix"

    def node(self, name: str) -> Path:
        return self.scratch / "nodes" / name


@dataclass(frozen=True)
class Daemon:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class SlurmCluster:
    """A running cluster; ``env`` is what a client needs (``SLURM_CONF``)."""

    conf: Path
    nodes: list[str]
    env: dict[str, str]
    scratch: Path
    daemons: list[Daemon] = field(default_factory=list)

    def srun(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
             user: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``srun ARGS`` on this cluster, as root or as ``user``.

        As ``user``, srun runs under setpriv with that user's uid, gid (no other groups),
        HOME, USER and LOGNAME; the tasks start in ``cwd``, which that user must be able to
        enter (slurmstepd falls back to /tmp with an error otherwise).
        """
        identity = user_identity(user) if user else {}
        return subprocess.run([*as_user(user), "srun", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.client_env({**identity, **(env or {})}),
                              cwd=cwd)

    def client_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's environment, without the variables of any enclosing Slurm job
        (srun would join that job), plus this cluster's ``env`` and ``extra``."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_ENV_PREFIXES)}
        return {**inherited, **self.env, **(extra or {})}

    def stop(self) -> None:
        """Cancel jobs, stop the daemons, kill any process still carrying this cluster's
        ``SLURM_CONF``, check that none is alive, and remove the scratch directory."""
        if any(d.name == "slurmctld" and d.process.poll() is None for d in self.daemons):
            cancel_jobs(self)
        for daemon in reversed(self.daemons):
            terminate(daemon.process)
        leftovers = processes_with_env(f"SLURM_CONF={self.conf}")
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        survivors = wait_dead(leftovers, STOP_TIMEOUT)
        if survivors:
            raise RuntimeError(f"processes of the Slurm cluster in {self.scratch} survived "
                               f"SIGKILL: {survivors}")
        if self.scratch.exists():
            shutil.rmtree(self.scratch)


# An enclosing job's variables (CI inside an allocation) would make srun join that job.
SLURM_ENV_PREFIXES = ("SLURM_", "SRUN_", "SALLOC_", "SBATCH_")


def as_user(user: str | None) -> list[str]:
    """argv prefix that runs a command as ``user`` with only that user's group."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def user_identity(user: str) -> dict[str, str]:
    return {"HOME": pwd.getpwnam(user).pw_dir, "USER": user, "LOGNAME": user}


def start_single_node(scratch: Path) -> SlurmCluster:
    """One node named after this host, all its CPUs, one partition."""
    return start_cluster(scratch, [socket.gethostname()])


def start_three_nodes(scratch: Path) -> SlurmCluster:
    """Nodes n1..n3 on this host, each a slurmd in its own mount namespace."""
    return start_cluster(scratch, list(THREE_NODES))


def start_cluster(scratch: Path, nodes: list[str]) -> SlurmCluster:
    """Start munged, slurmctld and one slurmd per node; return once every node is idle.

    On any failure, what was started is stopped and ``scratch`` removed before raising.
    """
    layout = Layout(scratch)
    cluster = SlurmCluster(conf=layout.conf, nodes=nodes, env={"SLURM_CONF": str(layout.conf)},
                           scratch=scratch)
    try:
        prepare(layout, nodes)
        launch(cluster, "munged", [*as_user(MUNGE_USER), *munged_argv(layout)])
        wait_for(layout.munge_socket.exists, cluster, "munged's socket")
        launch(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(layout.conf)])
        for name in nodes:
            launch(cluster, f"slurmd-{name}", slurmd_argv(layout, name))
        wait_for(lambda: nodes_idle(cluster), cluster, "every node idle in sinfo")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def prepare(layout: Layout, nodes: list[str]) -> None:
    """Write the tree and the configuration; munged (user munge) and unprivileged sruns
    must reach into it."""
    blocked = [p for p in layout.scratch.parents if p.exists() and not p.stat().st_mode & 0o001]
    if blocked:
        raise SlurmStartError(f"scratch {layout.scratch} is not reachable by other users "
                              f"({blocked[0]} lacks o+x); use a directory under /tmp")
    dirs = [layout.scratch, layout.state, layout.logs, layout.spool, layout.pmix]
    dirs += [layout.node(n) / sub for n in nodes for sub in ("spool", "pmix")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    layout.munge.mkdir(mode=0o755)
    munge = pwd.getpwnam(MUNGE_USER)
    os.chown(layout.munge, munge.pw_uid, munge.pw_gid)
    subprocess.run([*as_user(MUNGE_USER), "mungekey", "--create",
                    f"--keyfile={layout.munge / 'munge.key'}"], check=True, capture_output=True)
    ports = free_ports(len(nodes) + 1)
    layout.conf.write_text(slurm_conf(layout, socket.gethostname(), nodes, ports[0], ports[1:],
                                      node_hardware()))
    (layout.scratch / "mpi.conf").write_text(f"PMIxCliTmpDirBase={layout.pmix}\n")
    # slurm.conf's PlugStackConfig points here rather than at /etc/slurm/plugstack.conf:
    # no SPANK plugin of the host (pyxis, ...) takes part in the tests' jobs
    (layout.scratch / "plugstack.conf").write_text("")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now; held open together so they are distinct."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_hardware() -> str:
    """This machine's CPUs, sockets, cores, threads and memory as slurmd detects them.

    Every node's line carries them, so no slurmd finds less than configured (which drains
    the node) on whatever machine the tests run.
    """
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(word for word in first if not word.startswith("NodeName="))


def slurm_conf(layout: Layout, host: str, nodes: list[str], ctld_port: int,
               node_ports: list[int], hardware: str) -> str:
    """slurm.conf with the settings measured to work here without systemd or cgroups."""
    settings = {
        "ClusterName": "hpcbind",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": ctld_port,
        "SlurmUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={layout.munge_socket}",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "MpiDefault": "none",
        "ReturnToService": 2,
        # a task that ignores SIGTERM gets SIGKILL after this, so stop() stays quick
        "KillWait": 2,
        "StateSaveLocation": layout.state,
        # written even in the foreground; the defaults are in the host's /run
        "SlurmctldPidFile": layout.scratch / "slurmctld.pid",
        "SlurmdPidFile": layout.scratch / "slurmd-%n.pid",
        "SlurmdSpoolDir": layout.spool,
        "PlugStackConfig": layout.scratch / "plugstack.conf",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} {hardware}"
              for name, port in zip(nodes, node_ports, strict=True)]
    lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
                 "OverSubscribe=FORCE:8")
    return "\n".join(lines) + "\n"


def munged_argv(layout: Layout) -> list[str]:
    m = layout.munge
    return ["munged", "--foreground", f"--socket={layout.munge_socket}",
            f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
            f"--seed-file={m / 'munged.seed'}"]


def slurmd_argv(layout: Layout, name: str) -> list[str]:
    node = layout.node(name)
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", NODE_NAMESPACE_SETUP, "sh",
            str(node / "spool"), str(layout.spool), str(node / "pmix"), str(layout.pmix),
            "slurmd", "-D", "-N", name, "-f", str(layout.conf)]


def launch(cluster: SlurmCluster, name: str, argv: list[str]) -> None:
    """Start a daemon in the foreground, logging to log/<name>.log.

    Foreground daemons are our children: their PIDs are known without pid files and we reap
    them. Every one carries SLURM_CONF, and so do the slurmstepds and tasks they start,
    which is how stop() finds what a daemon left behind.
    """
    log = Layout(cluster.scratch).logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=cluster.client_env(),
                                   cwd=cluster.scratch)
    cluster.daemons.append(Daemon(name, process, log))


def wait_for(ready: Callable[[], bool], cluster: SlurmCluster, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        dead = [d for d in cluster.daemons if d.process.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = (f"{dead[0].name} exited with {dead[0].process.returncode}" if dead
                   else f"timed out after {START_TIMEOUT:.0f} s")
            raise SlurmStartError(f"Slurm cluster in {cluster.scratch}: waiting for {what}: "
                                  f"{why}\n{log_tails(cluster)}")
        time.sleep(POLL)


def nodes_idle(cluster: SlurmCluster) -> bool:
    return node_states(cluster) == dict.fromkeys(cluster.nodes, "idle")


def node_states(cluster: SlurmCluster) -> dict[str, str]:
    """{node: state} from sinfo; empty while slurmctld does not answer yet."""
    r = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N %T"], capture_output=True,
                       text=True, env=cluster.client_env())
    return dict(line.split() for line in r.stdout.splitlines()) if r.returncode == 0 else {}


def log_tails(cluster: SlurmCluster) -> str:
    parts = []
    for daemon in cluster.daemons:
        lines = daemon.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        parts.append(f"--- {daemon.log} (last {len(lines)} lines)\n" + "\n".join(lines))
    return "\n".join(parts)


def cancel_jobs(cluster: SlurmCluster) -> None:
    """scancel what is queued or running (an srun killed by a timeout leaves its job) and
    wait for the queue to drain, so slurmstepd kills the tasks through proctrack."""
    queue = job_ids(cluster)
    if not queue:
        return
    subprocess.run(["scancel", *queue], capture_output=True, env=cluster.client_env(),
                   check=True)
    deadline = time.monotonic() + STOP_TIMEOUT
    while job_ids(cluster) and time.monotonic() < deadline:
        time.sleep(POLL)


def job_ids(cluster: SlurmCluster) -> list[str]:
    """Jobs in the queue; none when slurmctld does not answer (stop() then relies on its
    sweep of leftover processes)."""
    r = subprocess.run(["squeue", "--noheader", "--format=%A"], capture_output=True, text=True,
                       env=cluster.client_env())
    return r.stdout.split() if r.returncode == 0 else []


def terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def is_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (PID 1 here never reaps them)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] != "Z"


def processes_with_env(entry: str) -> list[int]:
    """Live processes (not this one) whose initial environment holds ``entry``."""
    wanted = entry.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        except PermissionError:
            continue  # PID 1 under gVisor, even for root: not one of ours
        if wanted in environ.split(b"\0") and is_alive(int(name)):
            found.append(int(name))
    return found


def wait_dead(pids: list[int], timeout: float) -> list[int]:
    """The PIDs still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [p for p in alive if is_alive(p)]
    return alive


def cluster_fixture(start: Callable[[Path], SlurmCluster]) -> Iterator[SlurmCluster]:
    """A started cluster, stopped afterwards; skipped where Slurm cannot run."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Slurm test cluster needs {', '.join(missing)} "
                    "(Debian: slurm-wlm munge util-linux)")
    if os.getuid() != 0:
        pytest.skip("Slurm test cluster needs root: slurmd switches to the job's user and "
                    "each node mounts its own spool")
    # tmp_path lives under /tmp/pytest-of-root (0700), out of the munge user's reach
    cluster = start(Path(tempfile.mkdtemp(prefix="hpcbind-slurm-")))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def slurm_single() -> Iterator[SlurmCluster]:
    yield from cluster_fixture(start_single_node)


@pytest.fixture(scope="module")
def slurm_three() -> Iterator[SlurmCluster]:
    yield from cluster_fixture(start_three_nodes)
