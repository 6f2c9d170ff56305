"""Slingshot (CXI) and Omni-Path (PSM2) discovery on fixture nodes built from the drivers'
sysfs layout with real ELF libraries, and fixture builders combined on one root."""

from __future__ import annotations

from pathlib import Path

import pytest

from hosts_fabric import (
    DEBIAN_LIBDIR,
    HFI1_MAJOR,
    RHEL_LIBDIR,
    UCXI_MAJOR,
    UVERBS_BASE_MINOR,
    UVERBS_MAJOR,
    build_mlx5_node,
    build_opa_node,
    build_slingshot_node,
)
from hpcbind import fabric
from hpcbind.fabric import cxi, opa
from hpcbind.hostroot import HostRoot
from hpcbind.plan import CONTAINER_LIBDIR, BindPlan, EnvAction, Status

JOB_ENV = {"SLINGSHOT_VNIS": "1310,1271", "SLINGSHOT_DEVICES": "cxi0,cxi2",
           "SLINGSHOT_SVC_IDS": "5,5", "SLINGSHOT_TCS": "0x8", "HOME": "/home/user"}


def _plan(root: Path, env: dict[str, str]) -> BindPlan:
    return BindPlan.merge(("ib",), [fabric.discover(HostRoot(root), env)])


# --- Slingshot ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slingshot(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slingshot")
    build_slingshot_node(root, 4, link_down=(3,))
    return root


def test_cxi_devices(slingshot):
    nics = cxi.read_cxi_devices(HostRoot(slingshot))
    assert [n.name for n in nics] == ["cxi0", "cxi1", "cxi2", "cxi3"]
    assert [n.numbers for n in nics] == [(UCXI_MAJOR, i) for i in range(4)]
    assert [n.numa_node for n in nics] == [0, 0, 1, 1]
    assert [n.local_cpulist for n in nics] == ["0-31", "0-31", "32-63", "32-63"]
    assert [n.pci for n in nics] == ["0000:05:00.0", "0000:15:00.0", "0000:85:00.0", "0000:95:00.0"]
    assert [n.nid for n in nics] == [f"0x{0x1a2b0 + i:x}" for i in range(4)]
    assert [n.link_up for n in nics] == [True, True, True, False]
    assert {(n.driver, n.speed, n.cassini_version) for n in nics} == {("cxi_ss1", "200000", "1.1")}
    assert [n.netdevs for n in nics] == [(f"hsn{i}",) for i in range(4)]
    assert fabric.hca_numa(HostRoot(slingshot)) == {"cxi0": 0, "cxi1": 0, "cxi2": 1, "cxi3": 1}


def test_cxi_plan_outside_a_job(slingshot):
    plan = _plan(slingshot, {})
    assert [(d.path, d.major, d.minor, d.provider, d.rule) for d in plan.devices] == \
        [(f"/dev/cxi{i}", UCXI_MAJOR, i, "fabric.cxi", "cxi") for i in range(4)]
    assert {(c.name, c.status) for c in plan.checks} == \
        {("slingshot-vni", Status.WARN), ("cxi-link", Status.WARN)}
    (link,) = [c for c in plan.checks if c.name == "cxi-link"]
    assert link.message == "cxi3 link is down"
    mounts = {(m.source, m.destination, m.rule) for m in plan.mounts}
    assert mounts == {
        (f"{RHEL_LIBDIR}/libcxi.so.1.5.0", f"{CONTAINER_LIBDIR}/libcxi.so.1.5.0", "libcxi"),
        (f"{RHEL_LIBDIR}/libfabric.so.1.22.0", f"{CONTAINER_LIBDIR}/libfabric.so.1.22.0",
         "libfabric"),
    }
    assert {(ln.path, ln.target) for ln in plan.links} == \
        {(f"{CONTAINER_LIBDIR}/libcxi.so.1", "libcxi.so.1.5.0"),
         (f"{CONTAINER_LIBDIR}/libfabric.so.1", "libfabric.so.1.22.0")}
    assert [(op.name, op.action) for op in plan.env] == [("LD_LIBRARY_PATH", EnvAction.APPEND)]
    assert not plan.failed


def test_cxi_plan_in_a_job_step(slingshot):
    plan = _plan(slingshot, JOB_ENV)
    assert [d.path for d in plan.devices] == ["/dev/cxi0", "/dev/cxi2"]
    assert {(r.candidate, r.reason) for r in plan.rejected} == \
        {(f"/dev/cxi{i}", "not in SLINGSHOT_DEVICES=cxi0,cxi2") for i in (1, 3)}
    passed = [op.name for op in plan.env if op.action is EnvAction.PASS]
    assert passed == ["SLINGSHOT_DEVICES", "SLINGSHOT_SVC_IDS", "SLINGSHOT_TCS", "SLINGSHOT_VNIS"]
    assert "slingshot-vni" not in {c.name for c in plan.checks}
    facts = [f.value for f in plan.facts if f.name == "cxi"]
    assert facts[3] == ("cxi3 nid=0x1a2b3 link=down speed=200000 cassini=1.1 pci=0000:95:00.0 "
                        "driver=cxi_ss1 numa=1 netdevs=hsn3")


def test_cxi_without_user_module(tmp_path):
    build_slingshot_node(tmp_path, 2)
    (tmp_path / "sys/class/cxi_user/cxi1").unlink()
    plan = _plan(tmp_path, JOB_ENV | {"SLINGSHOT_DEVICES": "cxi0,cxi1"})
    assert [d.path for d in plan.devices] == ["/dev/cxi0"]
    (check,) = [c for c in plan.checks if c.name == "cxi-device"]
    assert check.status is Status.WARN and "/sys/class/cxi_user/cxi1" in check.message


# --- Omni-Path ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def omnipath(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opa")
    build_opa_node(root)
    return root


def test_hfi_device(omnipath):
    hfis = opa.read_hfi_devices(HostRoot(omnipath))
    assert [(h.name, h.major, h.minor, h.path) for h in hfis] == \
        [("hfi1_0", HFI1_MAJOR, 0, "/dev/hfi1_0")]
    assert f"{HFI1_MAJOR} hfi1" in (omnipath / "proc/devices").read_text()


def test_opa_plan(omnipath):
    env = {"OMPI_MCA_orte_precondition_transports": "0123456789abcdef-0123456789abcdef",
           "PSM2_MULTI_EP": "1", "HFI_UNIT": "0", "PSM2": "not a PSM2_ setting", "PATH": "/usr/bin"}
    plan = _plan(omnipath, env)
    assert [(d.path, d.major, d.minor, d.provider) for d in plan.devices] == [
        ("/dev/hfi1_0", HFI1_MAJOR, 0, "fabric.opa"),
        ("/dev/infiniband/rdma_cm", 10, 58, "fabric.verbs"),
        ("/dev/infiniband/uverbs0", UVERBS_MAJOR, UVERBS_BASE_MINOR, "fabric.verbs"),
    ]
    libs = {m.destination.removeprefix(CONTAINER_LIBDIR + "/"): (m.provider, m.rule)
            for m in plan.mounts if m.kind == "lib"}
    assert libs["libpsm2.so.2.2"] == ("fabric.opa", "psm2")
    assert libs["libhfi1verbs-rdmav34.so"] == ("fabric.verbs", "verbs-provider")
    assert libs["libnuma.so.1.0.0"] == ("fabric.opa", "dependency")
    assert not any(name.startswith("libuc") for name in libs)  # no UCX on this host
    passed = sorted(op.name for op in plan.env if op.action is EnvAction.PASS)
    assert passed == ["HFI_UNIT", "OMPI_MCA_orte_precondition_transports", "PSM2_MULTI_EP"]
    env_ops = {op.name: op.value for op in plan.env if op.action is EnvAction.SET}
    assert env_ops == {"UCX_NET_DEVICES": "hfi1_0:1", "NCCL_IB_HCA": "=hfi1_0:1"}
    assert [f.value for f in plan.facts if f.name == "hfi"] == \
        [f"hfi1_0 {HFI1_MAJOR}:0 pci=0000:09:00.0 numa=0"]
    hca = [f.value for f in plan.facts if f.name == "hca"]
    assert hca == ["hfi1_0 CA guid=0011:7501:0179:e2d4 fw=1.27.0 board=Intel Omni-Path Host Fabric "
                   "Interface Adapter 100 Series pci=0000:09:00.0 driver=hfi1 numa=0 cpus=0-31"]
    assert [c.status for c in plan.checks if c.name == "verbs-provider-abi"] == [Status.OK]


def test_opa_adapter_not_selected(omnipath):
    plan = _plan(omnipath, {"HPCBIND_HCA": "mlx5_0"})
    assert plan.devices[0].path == "/dev/infiniband/rdma_cm" and len(plan.devices) == 1
    assert ("/dev/hfi1_0", "not selected by HPCBIND_HCA=mlx5_0") in \
        {(r.candidate, r.reason) for r in plan.rejected}
    assert "hca-selection" in {c.name for c in plan.checks}


def test_opa_without_psm2_node(tmp_path):
    build_opa_node(tmp_path)
    (tmp_path / "sys/class/hfi1_user/hfi1_0").unlink()
    plan = _plan(tmp_path, {})
    assert "/dev/hfi1_0" not in {d.path for d in plan.devices}
    (check,) = [c for c in plan.checks if c.name == "psm2-device"]
    assert check.message == \
        "hfi1_0 has no /sys/class/hfi1_user/hfi1_0: PSM2 cannot open /dev/hfi1_0"


# --- builders combine ---------------------------------------------------------------------------


def test_mlx5_and_slingshot_on_one_root(tmp_path):
    build_mlx5_node(tmp_path, 2, fabric_dl_providers=("psm3",))
    build_slingshot_node(tmp_path, 2)
    plan = _plan(tmp_path, {})
    assert {d.provider for d in plan.devices} == {"fabric.verbs", "fabric.cxi"}
    assert fabric.hca_numa(HostRoot(tmp_path)) == {"mlx5_0": 0, "mlx5_1": 1, "cxi0": 0, "cxi1": 1}
    # both ask for libfabric.so.1 (the cache's first, Debian's) and the LD_LIBRARY_PATH append:
    # one entry each, kept by the first provider, and nothing rejected as a duplicate
    fabric_libs = [(m.source, m.provider) for m in plan.mounts
                   if m.destination == f"{CONTAINER_LIBDIR}/libfabric.so.1.22.0"]
    assert fabric_libs == [(f"{DEBIAN_LIBDIR}/libfabric.so.1.22.0", "fabric.verbs")]
    assert [op.provider for op in plan.env if op.name == "LD_LIBRARY_PATH"] == ["fabric.verbs"]
    assert not [r for r in plan.rejected if "already bound" in r.reason]
    assert (f"{RHEL_LIBDIR}/libcxi.so.1.5.0", "fabric.cxi") in \
        {(m.source, m.provider) for m in plan.mounts}


def test_builders_only_add(tmp_path):
    keep = tmp_path / "sys/class/drm/card0"
    keep.mkdir(parents=True)
    (keep / "uevent").write_text("DEVNAME=dri/card0\n")
    build_slingshot_node(tmp_path, 1)
    assert (keep / "uevent").read_text() == "DEVNAME=dri/card0\n"
    assert sorted(p.name for p in (tmp_path / "sys/class").iterdir()) == \
        ["cxi", "cxi_user", "drm", "net"]
