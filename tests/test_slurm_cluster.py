"""The Slurm test clusters themselves, against real Slurm 22.05, munge and Open MPI.

One node (named after this host) and three nodes emulated on this machine (n1..n3), each a
module-scoped cluster from ``slurm_cluster``; stop() is tested on a cluster of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import slurm_cluster
from slurm_cluster import (Layout, SlurmCluster, SlurmStartError, is_alive, processes_with_env,
                           slurm_single, slurm_three, start_single_node)  # noqa: F401

TEST_USER = "hpcbind-test"
HOST = socket.gethostname()

# Each rank prints "rank size sum": the sum of all ranks proves every rank took part.
ALLREDUCE_C = r"""
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size, sum;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("%d %d %d\n", rank, size, sum);
    MPI_Finalize();
    return 0;
}
"""


def by_rank(result: subprocess.CompletedProcess) -> dict[int, list[str]]:
    """{task: its output lines} from ``srun --label`` output ("3: text")."""
    assert result.returncode == 0, result.stderr
    lines: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        task, _, text = line.partition(": ")
        lines.setdefault(int(task), []).append(text)
    return lines


def env_by_rank(result: subprocess.CompletedProcess) -> dict[int, dict[str, str]]:
    return {rank: dict(line.split("=", 1) for line in lines if "=" in line)
            for rank, lines in by_rank(result).items()}


@pytest.fixture(scope="module")
def allreduce() -> Iterator[Path]:
    """The MPI program built with Debian's Open MPI, in a directory every user can read."""
    if shutil.which("mpicc.openmpi") is None:
        pytest.skip("mpicc.openmpi missing (Debian: libopenmpi-dev)")
    build = Path(tempfile.mkdtemp(prefix="hpcbind-mpi-"))
    build.chmod(0o755)
    (build / "allreduce.c").write_text(ALLREDUCE_C)
    subprocess.run(["mpicc.openmpi", "-o", str(build / "allreduce"), str(build / "allreduce.c")],
                   check=True, capture_output=True)
    yield build / "allreduce"
    shutil.rmtree(build)


def test_single_node_runs_two_tasks(slurm_single: SlurmCluster):
    assert slurm_single.nodes == [HOST]
    assert by_rank(slurm_single.srun("--label", "-n", "2", "hostname")) == {0: [HOST], 1: [HOST]}


def test_mpi_plugins_include_pmix_and_pmi2(slurm_single: SlurmCluster):
    r = slurm_single.srun("--mpi=list")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.splitlines()
    plugins = {line.strip() for line in listed if line.startswith("\t")}
    assert {"pmix", "pmi2", "none"} <= plugins
    assert "specific pmix plugin versions available: pmix_v4" in listed


def test_pmix_ranks_see_their_rank_and_server(slurm_single: SlurmCluster):
    envs = env_by_rank(slurm_single.srun("--label", "--mpi=pmix", "-n", "2", "env"))
    assert sorted(envs) == [0, 1]
    for rank, env in envs.items():
        job, step = env["SLURM_JOB_ID"], env["SLURM_STEP_ID"]
        assert (env["SLURM_PROCID"], env["PMIX_RANK"]) == (str(rank), str(rank))
        assert env["SLURM_MPI_TYPE"] == "pmix"
        assert env["PMIX_NAMESPACE"] == f"slurm.pmix.{job}.{step}"
        assert Path(env["PMIX_SERVER_TMPDIR"]) == Layout(slurm_single.scratch).spool / \
            f"pmix.{job}.{step}"
        assert "PMI_FD" not in env


def test_pmi2_ranks_get_a_pmi_fd(slurm_single: SlurmCluster):
    envs = env_by_rank(slurm_single.srun("--label", "--mpi=pmi2", "-n", "2", "env"))
    assert sorted(envs) == [0, 1]
    for rank, env in envs.items():
        assert int(env["PMI_FD"]) > 2
        assert (env["SLURM_PROCID"], env["PMI_RANK"], env["PMI_SIZE"]) == (str(rank), str(rank),
                                                                           "2")
        assert env["SLURM_MPI_TYPE"] == "pmi2"
        assert not [name for name in env if name.startswith("PMIX_")]


# Per rank: node, job, the PMIx server dir, the file-system directory mounted on it, the
# device of /dev/shm, the server's URI and the server dir's entries (named after its pid).
NODE_VIEW = ('echo "$SLURMD_NODENAME" "$SLURM_JOB_ID" "$PMIX_SERVER_TMPDIR" '
             '"$(findmnt --noheadings --output FSROOT --target "$PMIX_SERVER_TMPDIR")" '
             '"$(stat -c %d /dev/shm)" "$PMIX_SERVER_URI4" $(ls "$PMIX_SERVER_TMPDIR")')


def test_three_nodes_each_have_their_own_pmix_server_dir(slurm_three: SlurmCluster):
    views = by_rank(slurm_three.srun("--label", "--mpi=pmix", "-N", "3", "-n", "6",
                                     "sh", "-c", NODE_VIEW))
    layout = Layout(slurm_three.scratch)
    rows = {rank: lines[0].split() for rank, lines in views.items()}
    # block distribution: two tasks on each node, in node order
    assert {rank: row[0] for rank, row in rows.items()} == {0: "n1", 1: "n1", 2: "n2", 3: "n2",
                                                            4: "n3", 5: "n3"}
    per_node = {}
    for node, job, tmpdir, fsroot, shm, uri, *entries in rows.values():
        # one path for all (as on a real cluster), each node's own directory behind it
        assert Path(tmpdir) == layout.spool / f"pmix.{job}.0"
        assert fsroot.endswith(f"/nodes/{node}/spool")
        server_pid = uri.split(";")[0].removeprefix("pmix-server.")
        assert entries and all(e.endswith(f"_{server_pid}") for e in entries)
        per_node.setdefault(node, set()).add((server_pid, shm))
    assert all(len(seen) == 1 for seen in per_node.values()), per_node
    servers = [seen.pop() for seen in per_node.values()]
    assert len({pid for pid, _ in servers}) == 3
    assert len({shm for _, shm in servers} | {str(os.stat("/dev/shm").st_dev)}) == 4
    # outside the nodes' namespaces the spool path is an empty mount point
    assert list(layout.spool.iterdir()) == []
    assert all((layout.node(n) / "spool" / "cred_state").exists() for n in slurm_three.nodes)


def test_mpi_allreduce_across_three_nodes(slurm_three: SlurmCluster, allreduce: Path):
    r = slurm_three.srun("--mpi=pmix", "-N", "3", "-n", "6", str(allreduce))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"{rank} 6 15" for rank in range(6)]


def test_unprivileged_user_runs_mpi_across_three_nodes(slurm_three: SlurmCluster,
                                                       allreduce: Path):
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip(f"user {TEST_USER} missing: run 'make test-user' (make test does)")
    r = slurm_three.srun("--label", "--mpi=pmix", "-N", "3", "-n", "6", "sh", "-c",
                         f'echo "$(id -u) $HOME $({allreduce})"', user=TEST_USER,
                         cwd=allreduce.parent)
    assert by_rank(r) == {rank: [f"{user.pw_uid} {user.pw_dir} {rank} 6 15"] for rank in range(6)}


def test_stop_leaves_no_process_and_no_scratch():
    if os.getuid() != 0 or shutil.which("slurmctld") is None:
        pytest.skip("needs root and slurm-wlm, as the cluster fixtures do")
    cluster = start_single_node(Path(tempfile.mkdtemp(prefix="hpcbind-slurm-")))
    # a job still running at stop(): its srun, slurmstepd and task must go too
    job = subprocess.Popen(["srun", "-n", "1", "sleep", "300"], env=cluster.client_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = f"SLURM_CONF={cluster.conf}"
    deadline = time.monotonic() + 30
    while not any(comm(pid) == "sleep" for pid in processes_with_env(marker)):
        assert time.monotonic() < deadline, "the job's task never started"
        time.sleep(0.05)
    running = {pid: comm(pid) for pid in processes_with_env(marker)}
    assert {"munged", "slurmctld", "slurmd", "slurmstepd", "srun", "sleep"} <= set(running.values())

    cluster.stop()

    job.wait(timeout=10)
    assert [pid for pid in running if is_alive(pid)] == []
    assert processes_with_env(marker) == []
    assert not cluster.scratch.exists()


def test_failed_start_reports_the_log_and_leaves_nothing(monkeypatch):
    """slurmd cannot bind its port: the error names it and carries slurmd's log."""
    if os.getuid() != 0 or shutil.which("slurmctld") is None:
        pytest.skip("needs root and slurm-wlm, as the cluster fixtures do")
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        free = slurm_cluster.free_ports
        # the last port is the node's: hand it one that is taken
        monkeypatch.setattr(slurm_cluster, "free_ports", lambda n: [*free(n - 1), taken])
        scratch = Path(tempfile.mkdtemp(prefix="hpcbind-slurm-"))
        with pytest.raises(SlurmStartError) as failed:
            start_single_node(scratch)
    message = str(failed.value)
    assert f"slurmd-{HOST} exited with 1" in message.splitlines()[0]
    assert f"Unable to bind listen port ({taken})" in message
    assert not scratch.exists()
    assert processes_with_env(f"SLURM_CONF={scratch / 'slurm.conf'}") == []


def test_scratch_out_of_other_users_reach_is_refused(tmp_path: Path):
    """As under pytest's tmp_path (0700 /tmp/pytest-of-root): munged could not start there."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(SlurmStartError, match=f"{locked} lacks o\\+x"):
        start_single_node(locked / "cluster")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""
