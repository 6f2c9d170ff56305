"""--gpu-bind: each local rank's GPU and HCA, chosen from the plan of an 8-GPU/8-HCA node."""

from __future__ import annotations

import pytest

from hosts_fabric import build_mlx5_node
from hosts_gpu import build_nvidia_node
from hpcbind.discover import Request, make_plan
from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.mpi import binding


@pytest.fixture(scope="module")
def node_plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    build_mlx5_node(root, hcas=8)  # before the GPUs: it writes the ld.so.conf the GPUs extend
    build_nvidia_node(root, gpus=8, mig=())
    return make_plan(Request(nv=True, ib=True), HostRoot(root), env={})


# The fixture node: GPUs in pairs on NUMA nodes 3, 1, 7, 5 (indices 0-1, 2-3, 4-5, 6-7),
# mlx5_0-3 on NUMA 0 and mlx5_4-7 on NUMA 1, every port active.


def test_the_plan_gives_eight_gpus_and_the_active_hca_ports(node_plan):
    gpus, hcas = binding.plan_devices(node_plan)
    assert [(g.index, g.numa) for g in gpus] == [(0, 3), (1, 3), (2, 1), (3, 1), (4, 7), (5, 7),
                                                 (6, 5), (7, 5)]
    assert {g.variable for g in gpus} == {"CUDA_VISIBLE_DEVICES"}
    assert [(h.name, h.port, h.numa) for h in hcas] == [(f"mlx5_{i}", "1", i // 4)
                                                        for i in range(8)]


def test_closest_keeps_each_rank_on_its_numa_node(node_plan):
    gpus, hcas = binding.plan_devices(node_plan)
    chosen = [binding.choose("closest", r, 4, gpus, hcas, {1}) for r in range(4)]
    assert [c.gpu.index for c in chosen] == [2, 3, 2, 3]  # the two GPUs of NUMA node 1
    assert [c.hca.name for c in chosen] == ["mlx5_4", "mlx5_5", "mlx5_6", "mlx5_7"]
    # no HCA on NUMA node 3: the rank still gets one, from all of them
    far = binding.choose("closest", 1, 4, gpus, hcas, {3})
    assert (far.gpu.index, far.hca.name) == (1, "mlx5_1")


def test_unbound_ranks_share_out_all_gpus(node_plan):
    gpus, hcas = binding.plan_devices(node_plan)
    chosen = [binding.choose("closest", r, 8, gpus, hcas, set(range(8))) for r in range(8)]
    assert [c.gpu.index for c in chosen] == list(range(8))
    # the HCA sits with the GPU when one does (GPUs 2 and 3 on NUMA 1: mlx5_4-7), else any
    # (mlx5_0-7); local rank r takes the r-th of its candidates, wrapping round
    assert [c.hca.name for c in chosen] == ["mlx5_0", "mlx5_1", "mlx5_6", "mlx5_7", "mlx5_4",
                                            "mlx5_5", "mlx5_6", "mlx5_7"]
    env = dict(binding.choice_env(chosen[3]))
    assert env == {"CUDA_VISIBLE_DEVICES": "3", "UCX_NET_DEVICES": "mlx5_7:1",
                   "NCCL_IB_HCA": "=mlx5_7"}


def test_map_and_none(node_plan):
    gpus, hcas = binding.plan_devices(node_plan)
    assert [binding.choose("map:6,2", r, 4, gpus, hcas, {0}).gpu.index for r in range(4)] == \
        [6, 2, 6, 2]
    assert binding.choice_env(binding.choose("none", 0, 4, gpus, hcas, {0})) == []
    with pytest.raises(HpcbindError, match="GPU 9 is not in the container"):
        binding.choose("map:9", 0, 1, gpus, hcas, {0})
    for bad in ("nearest", "map:", "map:a,b"):
        with pytest.raises(HpcbindError, match="--gpu-bind"):
            binding.parse_policy(bad)


def test_numa_of_cpus():
    assert binding.numa_of_cpus({0, 1}, {0: "0-15,32-47", 1: "16-31,48-63"}) == {0}
    assert binding.numa_of_cpus({20, 40}, {0: "0-15,32-47", 1: "16-31,48-63"}) == {0, 1}


def test_the_choice_appears_in_the_plan(node_plan, tmp_path):
    plan = binding.preview(node_plan, "closest", 8)
    shown = {f.name: f.value for f in plan.facts if f.provider == "mpi.gpu-bind"}
    assert len(shown) == 8 and "gpu-bind:closest" in plan.request
    assert shown["local-rank-0003"].startswith("CUDA_VISIBLE_DEVICES=3 UCX_NET_DEVICES=mlx5_")
    assert plan.mounts == node_plan.mounts and plan.devices == node_plan.devices
