"""``hpcrun srun`` under a real Slurm 22.05 (tests/slurm_cluster.py), as the unprivileged user:
PMIx and PMI-2, one node and three emulated nodes each with its own container."""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

from conftest import Unprivileged
from mpi_images import build_mpi_image
from slurm_cluster import slurm_single, slurm_three  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def images(unprivileged: Unprivileged):
    return {family: build_mpi_image(family, unprivileged.root) for family in ("openmpi", "mpich")}


def srun(unprivileged: Unprivileged, cluster, *args: str):
    return unprivileged.run("srun", *args, env=cluster.env, timeout=180)


def test_srun_pmix_open_mpi(unprivileged, slurm_single, images):
    r = srun(unprivileged, slurm_single, "--mpi=pmix", "-n", "2", str(images["openmpi"]),
             "/usr/local/bin/mpi-check")
    assert (r.returncode, r.stdout) == (0, "OK size=2 sum=1 node_ranks=2\n"), r.stderr


def test_srun_pmi2_mpich(unprivileged, slurm_single, images):
    r = srun(unprivileged, slurm_single, "--mpi=pmi2", "-n", "2", str(images["mpich"]),
             "/usr/local/bin/mpi-check")
    assert (r.returncode, r.stdout) == (0, "OK size=2 sum=1 node_ranks=2\n"), r.stderr


def test_three_nodes_each_with_its_own_container(unprivileged, slurm_three, images):
    r = srun(unprivileged, slurm_three, "--mpi=pmix", "-N", "3", "-n", "6",
             str(images["openmpi"]), "/usr/local/bin/mpi-check")
    assert (r.returncode, r.stdout) == (0, "OK size=6 sum=15 node_ranks=2\n"), r.stderr

    # Every rank waits until all six have written their line: namespace inode numbers are
    # reused once freed, so containers that never overlap in time could look like one.
    barrier = unprivileged.root / "three-nodes-barrier"
    barrier.mkdir()
    os.chown(barrier, unprivileged.uid, unprivileged.gid)
    r = srun(unprivileged, slurm_three, "--mpi=pmix", "-N", "3", "-n", "6",
             str(unprivileged.busybox_sif), "sh", "-c",
             f'echo "$SLURMD_NODENAME $(readlink /proc/self/ns/mnt)" > {barrier}/$SLURM_PROCID;'
             f' i=0; while [ $(ls {barrier} | wc -l) -lt 6 ] && [ $i -lt 600 ];'
             ' do sleep 0.1; i=$((i+1)); done')
    assert r.returncode == 0, r.stderr
    lines = [f.read_text() for f in sorted(barrier.iterdir())]
    assert len(lines) == 6, r.stderr
    by_node = defaultdict(set)
    for line in lines:
        node, mnt = line.split()
        by_node[node].add(mnt)
    # one mount namespace (one image mount) per node, shared by its two ranks
    assert sorted(by_node) == ["n1", "n2", "n3"]
    assert all(len(m) == 1 for m in by_node.values())
    assert len(set.union(*by_node.values())) == 3
