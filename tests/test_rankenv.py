"""Launcher knowledge in one place: is this a rank, its local rank, the node's local size."""

from __future__ import annotations

import pytest

from hpcbind.mpi.rankenv import Place, job, place, slurm_tasks_on_node, under_launcher

# What each launcher gives a rank here (variables seen under Open MPI 4.1 mpirun, MPICH 4
# Hydra and Slurm 22.05 srun on this machine; values chosen for the cases)
OPENMPI = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4", "PMIX_RANK": "5"}
HYDRA = {"PMI_FD": "6", "PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "3",
         "MPI_LOCALNRANKS": "4"}
SLURM_3_NODES = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "4", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
                 "SLURM_NTASKS": "5", "SLURM_MPI_TYPE": "pmix", "PMIX_RANK": "4"}


@pytest.mark.parametrize("env, expected", [
    (OPENMPI, Place("openmpi", 1, 4)),
    (HYDRA, Place("hydra", 3, 4)),
    ({"PMI_FD": "6", "PMI_RANK": "3", "PMI_SIZE": "4"}, Place("hydra", None, None)),
    (SLURM_3_NODES, Place("slurm", 0, 1)),
    ({**SLURM_3_NODES, "SLURM_NODEID": "1", "SLURM_LOCALID": "1"}, Place("slurm", 1, 2)),
    # --ntasks-per-node and the step's total are not this node's count
    ({**SLURM_3_NODES, "SLURM_NTASKS_PER_NODE": "8"}, Place("slurm", 0, 1)),
    # mpirun inside an allocation: its ranks inherit the batch step's SLURM_* variables
    ({**OPENMPI, "SLURM_STEP_ID": "4294967291", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
      "SLURM_STEP_TASKS_PER_NODE": "1"}, Place("openmpi", 1, 4)),
    ({"PMIX_RANK": "0", "PMIX_NAMESPACE": "x"}, Place("pmix", None, None)),
    ({"HOME": "/home/u", "PATH": "/bin"}, None),
])
def test_place(env, expected):
    assert place(env) == expected
    assert under_launcher(env) is (expected is not None)


def test_a_batch_scripts_processes_have_no_place():
    """sbatch's script runs in Slurm's batch step (id 0xfffffffb in Slurm 22.05): its
    processes, an MPI singleton among them, were started by no launcher."""
    batch = {"SLURM_STEP_ID": "4294967291", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "42"}
    assert place(batch) is None


@pytest.mark.parametrize("tasks, node, expected", [
    ("4", "0", 4), ("2(x3),1", "2", 2), ("2(x3),1", "3", 1), ("2(x3),1", "4", None),
    ("garbage", "0", None), ("2(xa)", "0", None),
])
def test_slurm_tasks_on_node(tasks, node, expected):
    assert slurm_tasks_on_node({"SLURM_STEP_TASKS_PER_NODE": tasks, "SLURM_NODEID": node}) \
        == expected


@pytest.mark.parametrize("env, expected", [
    ({**OPENMPI, "PMIX_NAMESPACE": "1107034113"}, "pmix:1107034113"),
    # the processes one MPI_Comm_spawn starts are a job of their own
    ({**OPENMPI, "PMIX_NAMESPACE": "1107034114"}, "pmix:1107034114"),
    ({**SLURM_3_NODES, "SLURM_JOB_ID": "42"}, "slurm:42.0"),
    (HYDRA, "hydra:0"),
    ({**HYDRA, "PMI_SPAWNED": "1"}, "hydra:1"),
    ({"HOME": "/home/u"}, ""),
])
def test_job(env, expected):
    assert job(env) == expected
