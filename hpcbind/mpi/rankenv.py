"""Where this process stands in an MPI launch, read from the launcher's variables alone.

The one place that knows how Open MPI, MPICH's Hydra, Slurm's ``srun`` and PMIx servers tell
a rank who it is: whether it is a rank at all, its local rank, and how many ranks of the
launch run on its node. The node session is told the local count as a number (the runtime
knows nothing of MPI); ``--gpu-bind`` reads the local rank.

Imported on every rank's path: the standard library's ``collections`` only.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

# Under Open MPI, hpcrun is the daemons' fork agent, put in front of every process they start,
# initial ranks and MPI_Comm_spawn's alike. Open MPI insists on a program that exists on the
# host, so the initial ranks are given as ``HPCRUN-STARTER FORK_AGENT_MARK PROGRAM ...``, the
# spawned ones as ``/bin/sh FORK_AGENT_MARK PROGRAM ...`` (hpcbind/mpi/spawn.c), and the rank
# drops those two words (``hpcbind.launch.started_as``).
FORK_AGENT_MARK = "--hpcbind-fork-agent"
SPAWN_COMMANDS = ("/bin/sh",)
# Set by ``hpcrun mpirun`` when it installs the fork agent: spawned processes then start in
# the container, and need not be refused (``hpcbind.assemble``'s spawn refusal).
FORK_AGENT_VARIABLE = "HPCBIND_FORK_AGENT"
# Where Open MPI 4 and 5 read the fork agent from the environment (mpirun also hands its
# --mca settings on to the ranks this way)
FORK_AGENT_SETTINGS = ("OMPI_MCA_orte_fork_agent", "PRTE_MCA_prte_fork_agent")

_SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0

# Any launcher sets one of these in every rank's environment; a plain shell has none.
RANK_MARKERS = ("PMIX_RANK", "PMI_FD", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_STEP_ID")


class Place(namedtuple("Place", "launcher local_rank local_size")):
    """launcher: "openmpi", "hydra", "slurm" or "pmix"; local_size None where the launcher
    does not say (Hydra without MPI_LOCALNRANKS, a bare PMIx server)."""

    __slots__ = ()


def under_launcher(env: Mapping[str, str]) -> bool:
    return any(name in env for name in RANK_MARKERS)


def place(env: Mapping[str, str]) -> Place | None:
    """This rank's place on its node, or None when no launcher started it.

    Open MPI is asked first and Hydra second: both may run inside a Slurm allocation, whose
    SLURM_* variables their ranks then inherit without being srun's tasks.
    """
    if (local := _number(env, "OMPI_COMM_WORLD_LOCAL_RANK")) is not None:
        return Place("openmpi", local, _number(env, "OMPI_COMM_WORLD_LOCAL_SIZE"))
    if "PMI_RANK" in env and ("PMI_FD" in env or "MPI_LOCALRANKID" in env):
        return Place("hydra", _number(env, "MPI_LOCALRANKID"), _number(env, "MPI_LOCALNRANKS"))
    if _srun_step(env) and (local := _number(env, "SLURM_LOCALID")) is not None:
        return Place("slurm", local, slurm_tasks_on_node(env))
    if "PMIX_RANK" in env:
        return Place("pmix", None, None)
    return None


def under_fork_agent(env: Mapping[str, str]) -> bool:
    """Whether ``hpcrun mpirun`` made hpcrun the fork agent of this process's launcher."""
    return env.get(FORK_AGENT_VARIABLE) == "1"


def job(env: Mapping[str, str]) -> str:
    """Which job of the launch this process belongs to: processes that MPI_Comm_spawn starts
    form a job of their own, with its own local size, beside the initial ranks' job. ""
    outside a launcher."""
    if "PMIX_NAMESPACE" in env:  # Open MPI, and srun --mpi=pmix
        return "pmix:" + env["PMIX_NAMESPACE"]
    if "SLURM_STEP_ID" in env:
        return f"slurm:{env.get('SLURM_JOB_ID', '')}.{env['SLURM_STEP_ID']}"
    if "PMI_RANK" in env:  # Hydra marks the processes it spawns
        return "hydra:" + env.get("PMI_SPAWNED", "0")
    return ""


def _srun_step(env: Mapping[str, str]) -> bool:
    """A step of srun's tasks, not the batch script's, interactive or extern step (ids above
    Slurm's SLURM_MAX_NORMAL_STEP_ID), whose processes no launcher started."""
    step = _number(env, "SLURM_STEP_ID")
    return step is not None and step <= _SLURM_MAX_NORMAL_STEP_ID


def slurm_tasks_on_node(env: Mapping[str, str]) -> int | None:
    """The step's tasks on this node: SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 on each of
    three nodes, then 1) at this node's index. Not SLURM_NTASKS_PER_NODE, which only
    ``--ntasks-per-node`` sets, nor SLURM_NTASKS, the whole step's count."""
    tasks, node = env.get("SLURM_STEP_TASKS_PER_NODE"), _number(env, "SLURM_NODEID")
    if not tasks or node is None:
        return None
    counts: list[int] = []
    for item in tasks.split(","):
        count, _, repeat = item.partition("(x")
        times = repeat.removesuffix(")") if repeat else "1"
        if not count.isdigit() or not times.isdigit():
            return None
        counts += [int(count)] * int(times)
    return counts[node] if node < len(counts) else None


def _number(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "")
    return int(value) if value.isdigit() else None
