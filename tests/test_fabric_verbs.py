"""RDMA verbs discovery: a real captured node (QLogic qib0), fixture nodes built from the
kernel's sysfs ABI with real ELF libraries (8x mlx5 InfiniBand, RoCE), the real rdma-core 44
of this machine, and this machine itself (no RDMA device)."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from hosts_fabric import (
    DEBIAN_LIBDIR,
    RDMA_CM,
    UMAD_MAJOR,
    UVERBS_BASE_MINOR,
    UVERBS_MAJOR,
    build_libibverbs,
    build_mlx5_node,
    mlx5_guid,
    roce_gids,
    roce_netdev,
)
from hpcbind import fabric
from hpcbind.cli import main
from hpcbind.fabric import verbs
from hpcbind.host import libbind
from hpcbind.host.elf import elf_info
from hpcbind.hostroot import HostRoot
from hpcbind.plan import CONTAINER_LIBDIR, BindPlan, EnvAction, Status

QIB_CAPTURE = Path(__file__).resolve().parent / "data/hosts/40intel64-2g2n4c+pcilocality.tar.bz2"
# Where the capture keeps the HCA's PCI function (the class link /sys/class/infiniband/qib0
# points below it); raw reads from here check what the reader finds through the links.
QIB_PCI = "sys/devices/pci0000:40/0000:40:03.0/0000:43:00.0"
# The parts of the capture RDMA discovery reads: the class directories and the HCA's PCI
# subtree. Writing all 11,000 files of the capture takes seconds; these take milliseconds.
QIB_PARTS = ("sys/class/", "sys/bus/", "sys/devices/pci0000:40/0000:40:03.0/")

ALL_IB = tuple(f"mlx5_{i}" for i in range(8))
UMAD_ISSM = {f"/dev/infiniband/{kind}{i}" for kind in ("umad", "issm") for i in range(8)}


def _plan(part) -> BindPlan:
    return BindPlan.merge(("ib",), [part])


def _env(plan: BindPlan) -> dict[str, tuple[EnvAction, str]]:
    return {op.name: (op.action, op.value) for op in plan.env}


def _rejected(plan: BindPlan) -> set[tuple[str, str]]:
    return {(r.candidate, r.reason) for r in plan.rejected}


# --- the real capture ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qib(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("capture")
    with tarfile.open(QIB_CAPTURE) as archive:
        wanted = [m for m in archive.getmembers()
                  if m.name.partition("/")[2].startswith(QIB_PARTS)]
        # project reference data; Debian's Python 3.11.2 predates extraction filters
        archive.extractall(target, members=wanted)
    (top,) = target.iterdir()
    return top


def test_capture_device_value_by_value(qib):
    def raw(rel: str) -> str:
        return (qib / QIB_PCI / rel).read_text().strip()

    (device,) = verbs.read_devices(HostRoot(qib))
    assert device.name == "qib0"
    assert device.node_type == "CA" and raw("infiniband/qib0/node_type") == "1: CA"
    assert device.node_guid == "0011:7500:0077:cfc8" == raw("infiniband/qib0/node_guid")
    assert device.board_id == "InfiniPath_QLE7340" == raw("infiniband/qib0/board_id")
    assert device.hca_type == "InfiniPath_QLE7340"
    assert device.fw_ver == ""  # qib predates fw_ver (v4.10)
    assert device.pci == "0000:43:00.0"
    assert device.driver == "ib_qib" and "DRIVER=ib_qib" in raw("uevent")
    assert device.numa_node == 2 == int(raw("numa_node"))
    assert device.local_cpulist == "0-39" == raw("local_cpulist")
    assert device.netdevs == ("ib0",)
    assert device.provider == "ipathverbs"
    (port,) = device.ports
    assert (port.number, port.state, port.phys_state, port.link_layer, port.rate, port.lid) == \
        (1, "ACTIVE", "LinkUp", "InfiniBand", "40 Gb/sec (4X QDR)", "0x12a")
    assert raw("infiniband/qib0/ports/1/state") == "4: ACTIVE"
    # slots 1-4 hold the bare fe80:: prefix: unassigned, so only the port GID is reported
    assert [(g.index, g.gid, g.type, g.ndev) for g in port.gids] == \
        [(0, "fe80:0000:0000:0000:0011:7500:0077:cfc8", "", "")]


def test_capture_char_devices_from_sysfs(qib):
    (device,) = verbs.read_devices(HostRoot(qib))
    assert [(n.name, n.major, n.minor) for n in device.uverbs] == [("uverbs0", 231, 192)]
    assert (qib / QIB_PCI / "infiniband_verbs/uverbs0/dev").read_text().strip() == "231:192"
    assert [(n.name, n.major, n.minor, n.port) for n in device.mad] == \
        [("issm0", 231, 64, 1), ("umad0", 231, 0, 1)]
    # the capture has no /sys/class/infiniband_verbs: the nodes were found under the device
    assert not (qib / "sys/class/infiniband_verbs").exists()


def test_capture_numbers_fall_back_to_uevent(qib, tmp_path):
    node = tmp_path / "sys/class/infiniband_verbs/uverbs0"
    node.mkdir(parents=True)
    shutil.copy(qib / QIB_PCI / "infiniband_verbs/uverbs0/uevent", node / "uevent")
    host = HostRoot(tmp_path)
    assert verbs.dev_numbers(host, "/sys/class/infiniband_verbs/uverbs0") == (231, 192)


def test_capture_plan(qib):
    plan = _plan(fabric.discover(HostRoot(qib), {}))
    assert [(d.path, d.type, d.major, d.minor, d.provider, d.rule) for d in plan.devices] == \
        [("/dev/infiniband/uverbs0", "c", 231, 192, "fabric.verbs", "uverbs")]
    assert {r.candidate for r in plan.rejected} == \
        {"/dev/infiniband/umad0", "/dev/infiniband/issm0"}
    assert _env(plan) == {"UCX_NET_DEVICES": (EnvAction.SET, "qib0:1"),
                          "NCCL_IB_HCA": (EnvAction.SET, "=qib0:1")}
    assert plan.mounts == ()  # the capture has no userspace: nothing to bind, and it says so
    checks = {(c.name, c.status) for c in plan.checks}
    assert ("verbs-provider", Status.WARN) in checks and ("rdma-devices", Status.OK) in checks
    assert not plan.failed
    facts = {(f.name, f.value) for f in plan.facts}
    assert ("port", "qib0:1 ACTIVE LinkUp InfiniBand 40 Gb/sec (4X QDR) lid=0x12a") in facts
    assert ("rdma-cm", "absent: no /sys/class/misc/rdma_cm (rdma_ucm not loaded, "
                       "or not captured)") in facts


def test_capture_hca_numa(qib):
    assert fabric.hca_numa(HostRoot(qib)) == {"qib0": 2}


# --- 8x mlx5 InfiniBand -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ib8(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlx5-ib")
    build_mlx5_node(root, 8, down=(7,), fabric_dl_providers=("psm3",))
    return root


def test_mlx5_devices_numa_and_nodes(ib8):
    devices = verbs.read_devices(HostRoot(ib8))
    assert tuple(d.name for d in devices) == ALL_IB
    assert [d.numa_node for d in devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [d.local_cpulist for d in devices] == ["0-31"] * 4 + ["32-63"] * 4
    assert [d.node_guid for d in devices] == [mlx5_guid(i) for i in range(8)]
    assert {(d.driver, d.provider, d.board_id, d.fw_ver) for d in devices} == \
        {("mlx5_core", "mlx5", "MT_0000000223", "20.39.1002")}
    assert [d.netdevs for d in devices] == [(f"ib{i}",) for i in range(8)]
    assert [[(n.name, n.major, n.minor) for n in d.uverbs] for d in devices] == \
        [[(f"uverbs{i}", UVERBS_MAJOR, UVERBS_BASE_MINOR + i)] for i in range(8)]
    assert [[n.name for n in d.mad] for d in devices] == \
        [[f"issm{i}", f"umad{i}"] for i in range(8)]
    assert fabric.hca_numa(HostRoot(ib8)) == {f"mlx5_{i}": i // 4 for i in range(8)}
    proc_devices = (ib8 / "proc/devices").read_text()
    assert f"{UVERBS_MAJOR} infiniband_verbs" in proc_devices
    assert f"{UMAD_MAJOR} infiniband_mad" in proc_devices


def test_mlx5_ports(ib8):
    ports = [(d.name, p) for d in verbs.read_devices(HostRoot(ib8)) for p in d.ports]
    assert [(n, p.number, p.state, p.link_layer) for n, p in ports] == \
        [(f"mlx5_{i}", 1, "DOWN" if i == 7 else "ACTIVE", "InfiniBand") for i in range(8)]
    assert all(p.rate == "200 Gb/sec (4X HDR)" for n, p in ports if p.active)
    assert [g.gid for g in ports[0][1].gids] == [f"fe80:0000:0000:0000:{mlx5_guid(0)}"]


def test_mlx5_plan_devices_and_env(ib8):
    plan = _plan(fabric.discover(HostRoot(ib8), {}))
    assert [(d.path, d.major, d.minor) for d in plan.devices] == \
        [("/dev/infiniband/rdma_cm", *RDMA_CM)] + \
        [(f"/dev/infiniband/uverbs{i}", UVERBS_MAJOR, UVERBS_BASE_MINOR + i) for i in range(8)]
    active = ",".join(f"mlx5_{i}:1" for i in range(7))  # mlx5_7 is down
    env = _env(plan)
    assert env["UCX_NET_DEVICES"] == (EnvAction.SET, active)
    assert env["NCCL_IB_HCA"] == (EnvAction.SET, "=" + active)
    assert env["LD_LIBRARY_PATH"] == (EnvAction.APPEND, CONTAINER_LIBDIR)
    assert env["FI_PROVIDER_PATH"] == (EnvAction.SET, f"{CONTAINER_LIBDIR}/libfabric")
    assert "OMPI_MCA_btl_openib_if_include" not in env
    down = [(c.status, c.message) for c in plan.checks if c.name == "ib-port-state"]
    assert down == [(Status.WARN, "mlx5_7 port 1 is DOWN (Disabled)")]
    assert not plan.failed
    assert {r.candidate for r in plan.rejected} == UMAD_ISSM


def test_mlx5_plan_libraries(ib8):
    plan = _plan(fabric.discover(HostRoot(ib8), {}))
    libs = {m.destination.removeprefix(CONTAINER_LIBDIR + "/"): m
            for m in plan.mounts if m.kind == "lib"}
    assert set(libs) == {"libibverbs.so.1.14.44.0", "libmlx5.so.1.24.44.0", "librdmacm.so.1.3.44.0",
                         "libucp.so.0.0.0", "libuct.so.0.0.0", "libucs.so.0.0.0", "libucm.so.0.0.0",
                         "libfabric.so.1.22.0", "libnl-3.so.200.26.0", "libnl-route-3.so.200.26.0",
                         "libnuma.so.1.0.0"}
    # libucs needs libm.so.6 too: the image's own, never the host's
    assert {n for n, m in libs.items() if m.rule == "dependency"} == \
        {"libnl-3.so.200.26.0", "libnl-route-3.so.200.26.0", "libnuma.so.1.0.0"}
    for name, mount in libs.items():  # provenance is what the file itself says
        info = elf_info(ib8 / mount.source.lstrip("/"))
        assert mount.source == f"{DEBIAN_LIBDIR}/{name}"
        assert (mount.provenance.soname, mount.provenance.elf_class, mount.provenance.machine) == \
            (info.soname, "ELFCLASS64", "EM_X86_64")
        assert mount.options == ("ro", "nosuid", "nodev")
    assert libs["libmlx5.so.1.24.44.0"].provenance.needs == \
        ("GLIBC_2.2.5", "IBVERBS_1.1", "IBVERBS_PRIVATE_34")
    links = {ln.path.removeprefix(CONTAINER_LIBDIR + "/"): ln.target for ln in plan.links}
    assert links["libmlx5-rdmav34.so"] == links["libmlx5.so.1"] == "libmlx5.so.1.24.44.0"
    assert links["libibverbs.so.1"] == "libibverbs.so.1.14.44.0"
    assert set(links.values()) <= set(libs)  # every link lands on a bound file
    others = {(m.source, m.destination, m.kind, m.rule) for m in plan.mounts if m.kind != "lib"}
    assert others == {
        ("/etc/libibverbs.d", "/etc/libibverbs.d", "config", "verbs-config"),
        ("/etc/ucx/ucx.conf", "/etc/ucx/ucx.conf", "config", "ucx-config"),
        (f"{DEBIAN_LIBDIR}/ucx", f"{CONTAINER_LIBDIR}/ucx", "dir", "ucx-modules"),
        (f"{DEBIAN_LIBDIR}/libfabric", f"{CONTAINER_LIBDIR}/libfabric", "dir",
         "libfabric-providers"),
    }
    (abi,) = [c for c in plan.checks if c.name == "verbs-provider-abi"]
    assert abi.status is Status.OK and "IBVERBS_PRIVATE_34" in abi.message


def test_unreadable_library_is_rejected(tmp_path):
    build_mlx5_node(tmp_path, 1)
    (tmp_path / DEBIAN_LIBDIR.lstrip("/") / "libucm.so.0.0.0").write_bytes(b"\x7fELF garbage")
    plan = _plan(fabric.discover(HostRoot(tmp_path), {}))
    assert (f"{DEBIAN_LIBDIR}/libucm.so.0", "not a readable ELF shared library") in _rejected(plan)
    assert not any(m.destination.endswith("libucm.so.0.0.0") for m in plan.mounts)


def test_provider_named_by_absolute_path_is_not_bound(tmp_path):
    build_mlx5_node(tmp_path, 1)
    vendor = tmp_path / "opt/vendor/lib64"
    vendor.mkdir(parents=True)
    shutil.copy(tmp_path / DEBIAN_LIBDIR.lstrip("/") / "libmlx5.so.1.24.44.0",
                vendor / "libmlx5-rdmav34.so")
    (tmp_path / "etc/libibverbs.d/vendor.driver").write_text("driver /opt/vendor/lib64/libmlx5\n")
    plan = _plan(fabric.discover(HostRoot(tmp_path), {}))
    assert ("/opt/vendor/lib64/libmlx5-rdmav34.so",
            "named by absolute path in /etc/libibverbs.d/vendor.driver; "
            "bind it at that path with --bind") in _rejected(plan)
    assert not any(m.source.startswith("/opt/vendor") for m in plan.mounts)
    # the regular provider is still there
    assert f"{CONTAINER_LIBDIR}/libmlx5-rdmav34.so" in {ln.path for ln in plan.links}


def test_missing_device_node_warns(tmp_path):
    build_mlx5_node(tmp_path, 2)
    (tmp_path / "dev/infiniband").mkdir(parents=True)
    for name in ("rdma_cm", "uverbs0"):  # a live /dev where udev made only some nodes
        (tmp_path / "dev/infiniband" / name).touch()
    (check,) = [c for c in fabric.discover(HostRoot(tmp_path), {}).checks
                if c.name == "ib-device-nodes"]
    assert (check.status, check.message) == \
        (Status.WARN, "sysfs has uverbs1 but /dev/infiniband does not")


def test_software_device_has_no_pci_parent(tmp_path):
    """Soft-RoCE: the kernel puts rxe0 under /sys/devices/virtual, with no PCI function."""
    base = tmp_path / "sys/devices/virtual/infiniband/rxe0"
    (base / "ports/1").mkdir(parents=True)
    (base / "node_type").write_text("1: CA\n")
    for name, value in (("state", "4: ACTIVE"), ("phys_state", "5: LinkUp"),
                        ("link_layer", "Ethernet")):
        (base / "ports/1" / name).write_text(value + "\n")
    (tmp_path / "sys/class/infiniband").mkdir(parents=True)
    (tmp_path / "sys/class/infiniband/rxe0").symlink_to("../../devices/virtual/infiniband/rxe0")
    (device,) = verbs.read_devices(HostRoot(tmp_path))
    assert (device.pci, device.driver, device.numa_node, device.provider) == ("", "", -1, "rxe")
    assert device.ports[0].active and device.uverbs == ()


# --- selection ----------------------------------------------------------------------------------


def test_selection_with_ucx_net_devices(ib8):
    plan = _plan(fabric.discover(HostRoot(ib8), {"UCX_NET_DEVICES": "mlx5_0:1,mlx5_4:1"}))
    assert [d.path for d in plan.devices] == \
        ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0", "/dev/infiniband/uverbs4"]
    not_chosen = {r.candidate: r.reason for r in plan.rejected if r.candidate.startswith("mlx5_")}
    assert not_chosen == {f"mlx5_{i}": "not selected by UCX_NET_DEVICES=mlx5_0:1,mlx5_4:1"
                          for i in (1, 2, 3, 5, 6, 7)}
    env = _env(plan)
    assert env["UCX_NET_DEVICES"] == (EnvAction.PASS, "")  # the user's value stays as it is
    assert env["NCCL_IB_HCA"] == (EnvAction.SET, "=mlx5_0:1,mlx5_4:1")


def test_selection_with_hpcbind_hca_wins(ib8):
    env = {"HPCBIND_HCA": "mlx5_2,mlx5_3", "UCX_NET_DEVICES": "mlx5_0:1"}
    plan = _plan(fabric.discover(HostRoot(ib8), env))
    assert [d.path for d in plan.devices][1:] == \
        ["/dev/infiniband/uverbs2", "/dev/infiniband/uverbs3"]
    assert _env(plan)["NCCL_IB_HCA"] == (EnvAction.SET, "=mlx5_2:1,mlx5_3:1")


def test_selection_syntax(ib8):
    devices = verbs.read_devices(HostRoot(ib8))
    assert verbs.select(devices, {}).devices == ALL_IB
    assert verbs.select(devices, {"UCX_NET_DEVICES": "all"}).devices == ALL_IB
    assert verbs.select(devices, {"UCX_NET_DEVICES": "^mlx5_0:1,mlx5_1"}).devices == ALL_IB[2:]
    # eth0 is UCX's TCP device, not an HCA: neither chosen nor unknown
    tcp_too = verbs.select(devices, {"UCX_NET_DEVICES": "mlx5_5:1,eth0"})
    assert (tcp_too.ports, tcp_too.unknown) == (("mlx5_5:1",), ())
    typo = verbs.select(devices, {"HPCBIND_HCA": "mlx5_1,mlx5_9"})
    assert (typo.devices, typo.unknown) == (("mlx5_1",), ("mlx5_9",))


def test_unknown_selection_warns(ib8):
    plan = _plan(fabric.discover(HostRoot(ib8), {"UCX_NET_DEVICES": "mlx5_0:1,mlx5_12:1"}))
    (check,) = [c for c in plan.checks if c.name == "hca-selection"]
    assert check.status is Status.WARN and "mlx5_12:1" in check.message


def test_nothing_active_selected(ib8):
    plan = _plan(fabric.discover(HostRoot(ib8), {"HPCBIND_HCA": "mlx5_7"}))  # the down one
    assert [d.path for d in plan.devices] == ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs7"]
    assert "UCX_NET_DEVICES" not in _env(plan)
    assert [c.status for c in plan.checks if c.name == "rdma-devices"] == [Status.WARN]


# --- RoCE ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roce(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlx5-roce")
    build_mlx5_node(root, 2, roce=True)
    return root


def test_roce_ports_gids_and_netdevs(roce):
    devices = verbs.read_devices(HostRoot(roce))
    for i, device in enumerate(devices):
        (port,) = device.ports
        assert (port.link_layer, port.lid, port.active) == ("Ethernet", "0x0", True)
        assert [(g.gid, g.type, g.ndev) for g in port.gids] == roce_gids(i, 2)
        assert [g.index for g in port.gids] == list(range(6))
        assert device.netdevs == (roce_netdev(i, 2),)
    assert [g.type for g in devices[0].ports[0].gids] == ["IB/RoCE v1", "RoCE v2"] * 3
    # 10.1.0.1 as a RoCE v2 GID of mlx5_1
    assert devices[1].ports[0].gids[3].gid == "0000:0000:0000:0000:0000:ffff:0a01:0001"


def test_roce_plan(roce):
    plan = _plan(fabric.discover(HostRoot(roce), {}))
    gid_facts = [f.value for f in plan.facts if f.name == "gid"]
    assert len(gid_facts) == 12
    assert (f"mlx5_1:1 [3] RoCE v2 0000:0000:0000:0000:0000:ffff:0a01:0001 {roce_netdev(1, 2)}"
            in gid_facts)
    assert _env(plan)["UCX_NET_DEVICES"] == (EnvAction.SET, "mlx5_0:1,mlx5_1:1")
    assert "/dev/infiniband/rdma_cm" in {d.path for d in plan.devices}
    assert not [c for c in plan.checks if c.status is not Status.OK]


def test_roce_without_rdma_cm_warns(tmp_path):
    build_mlx5_node(tmp_path, 1, roce=True)
    (tmp_path / "sys/class/misc/rdma_cm").unlink()
    plan = _plan(fabric.discover(HostRoot(tmp_path), {}))
    assert "/dev/infiniband/rdma_cm" not in {d.path for d in plan.devices}
    assert [c.status for c in plan.checks if c.name == "rdma-cm"] == [Status.WARN]


# --- provider ABI -------------------------------------------------------------------------------


def test_provider_abi_match_on_real_rdma_core():
    """Debian's rdma-core 44 on this machine: its libibverbs and every installed provider."""
    libibverbs = elf_info(Path(DEBIAN_LIBDIR, "libibverbs.so.1"))
    providers = sorted(Path(DEBIAN_LIBDIR, "libibverbs").glob("lib*-rdmav*.so"))
    if libibverbs is None or not providers:
        pytest.skip("rdma-core's libibverbs and providers are not installed here")
    pabi = verbs.provider_abi(libibverbs)
    assert {p.name.rsplit("-rdmav", 1)[1] for p in providers} == {f"{pabi}.so"}
    needs = {p.name: elf_info(p).version_needs["libibverbs.so.1"] for p in providers}
    assert all(f"IBVERBS_PRIVATE_{pabi}" in n for n in needs.values())
    check = verbs.provider_abi_check(libibverbs.version_defs, needs)
    assert check.status is Status.OK and check.name == "verbs-provider-abi"


def test_provider_abi_mismatch_fails(tmp_path, ib8):
    image = tmp_path / "image"
    path = build_libibverbs(image, pabi=41)  # an image built on a newer rdma-core
    image_defs = elf_info(image / path.lstrip("/")).version_defs
    assert "IBVERBS_PRIVATE_41" in image_defs and "IBVERBS_PRIVATE_34" not in image_defs
    host = HostRoot(ib8)
    providers = verbs.read_providers(host, libbind.host_loader(host))
    check = verbs.provider_abi_check(image_defs, {p.name: p.needs for p in providers})
    assert check.status is Status.FAIL
    assert check.message == ("the image's libibverbs.so.1 cannot load the host verbs providers: "
                             "mlx5 needs IBVERBS_PRIVATE_34, but it defines IBVERBS_PRIVATE_41")
    assert check.fix
    assert verbs.provider_abi_check(image_defs, {}).status is Status.OK


def test_provider_abi_mismatch_with_real_providers(tmp_path):
    """The real Debian providers (PABI 34) against a libibverbs of another rdma-core."""
    providers = sorted(Path(DEBIAN_LIBDIR, "libibverbs").glob("lib*-rdmav*.so"))
    if not providers:
        pytest.skip("rdma-core's providers are not installed here")
    path = build_libibverbs(tmp_path, pabi=41)
    defs = elf_info(tmp_path / path.lstrip("/")).version_defs
    needs = {p.name: elf_info(p).version_needs["libibverbs.so.1"] for p in providers}
    check = verbs.provider_abi_check(defs, needs)
    assert check.status is Status.FAIL
    assert all(name in check.message for name in needs)


def test_provider_config_parsing(tmp_path):
    config = tmp_path / "etc/libibverbs.d"
    config.mkdir(parents=True)
    (config / "mlx5.driver").write_text("# Mellanox\ndriver mlx5\n")
    (config / "odd.driver").write_text("driver   efa  # trailing comment\nunknown line\n")
    (config / "README").write_text("driver notme\n")
    assert verbs.read_provider_names(HostRoot(tmp_path)) == \
        (("mlx5", "/etc/libibverbs.d/mlx5.driver"), ("efa", "/etc/libibverbs.d/odd.driver"))


# --- this machine, and the command line ---------------------------------------------------------

live_without_rdma = pytest.mark.skipif(os.path.isdir("/sys/class/infiniband"),
                                       reason="this host has RDMA devices")
NOTHING = ("rdma-devices", Status.WARN, "no RDMA device found (no /sys/class/infiniband)")


@live_without_rdma
def test_live_host_has_nothing_and_says_so():
    plan = _plan(fabric.discover(HostRoot(), dict(os.environ)))
    assert [(c.name, c.status, c.message) for c in plan.checks] == [NOTHING]
    assert (plan.mounts, plan.devices, plan.env, plan.failed) == ((), (), (), ())
    assert fabric.hca_numa(HostRoot()) == {}


@live_without_rdma
def test_live_plan_command_exits_zero(capsys):
    assert main(["plan", "--ib", "--json"]) == 0
    plan = BindPlan.from_json(capsys.readouterr().out)
    assert [(c.name, c.status, c.message) for c in plan.checks] == [NOTHING]


def test_plan_command_on_fixture_and_its_capture(ib8, tmp_path, capsys, monkeypatch):
    for name in ("HPCBIND_HCA", "UCX_NET_DEVICES", "NCCL_IB_HCA", "FI_PROVIDER_PATH"):
        monkeypatch.delenv(name, raising=False)
    archive = tmp_path / "host.tar.gz"
    assert main(["plan", "--ib", "--json", "--sysroot", str(ib8), "--capture", str(archive)]) == 0
    made = json.loads(capsys.readouterr().out)
    assert [d["path"] for d in made["devices"]][1:] == \
        [f"/dev/infiniband/uverbs{i}" for i in range(8)]
    assert main(["plan", "--ib", "--json", "--sysroot", str(archive)]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["digest"] == made["digest"]  # the capture holds everything fabric read


def test_live_rdma_core_providers():
    """The real /etc/libibverbs.d: every configured provider resolved to an installed file
    that needs exactly the private ABI the host's libibverbs defines."""
    host = HostRoot()
    loader = libbind.host_loader(host)
    names = verbs.read_provider_names(host)
    if not names or "libibverbs.so.1" not in loader.paths:
        pytest.skip("rdma-core is not installed here")
    assert {name for name, config in names} == {Path(c).stem for _, c in names}
    pabi = verbs.provider_abi(elf_info(Path(loader.paths["libibverbs.so.1"])))
    providers = verbs.read_providers(host, loader)
    assert [p.name for p in providers] == [n for n, _ in names]
    for p in providers:
        assert p.library.endswith(f"/libibverbs/lib{p.name}-rdmav{pabi}.so")
        assert os.path.exists(p.library) and f"IBVERBS_PRIVATE_{pabi}" in p.needs


def test_empty_infiniband_class(tmp_path):
    (tmp_path / "sys/class/infiniband").mkdir(parents=True)
    (check,) = fabric.discover(HostRoot(tmp_path), {}).checks
    assert check.message == "no RDMA device found (/sys/class/infiniband is empty)"


def test_udev_agrees_with_sysfs_reader():
    pytest.importorskip("pyudev")
    check = verbs.cross_check_udev(HostRoot())
    assert check.status is Status.OK, check.message
    # and the comparison is not vacuous: this machine has netdevs, which both saw
    net = os.listdir("/sys/class/net")
    assert net and f"net {len(net)}" in check.message
    assert verbs.cross_check_udev(HostRoot(Path("/tmp"))).status is Status.WARN
