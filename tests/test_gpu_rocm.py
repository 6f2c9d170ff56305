"""gpu.rocm discovery on a 4-GCD MI250X fixture node (KFD topology in probe order, DRM nodes
shifted by a BMC's VGA, ROCm 6.0.2 libraries in a real ld.so.cache), and on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hosts_gpu import (
    AMDGPU_VERSION,
    KFD_MAJOR,
    MI250_BUSES,
    RENDER_GID,
    ROCM_VERSION,
    VIDEO_GID,
    amd_uuid,
    build_amd_node,
    build_nvidia_node,
)
from hpcbind.gpu import nvidia, rocm
from hpcbind.host.ldcache import read_ldcache
from hpcbind.hostroot import HostRoot
from hpcbind.plan import BindPlan, Status

LIB = "/.hpcbind/lib"
# ROCr's order is the KFD nodes': the fixture probed the second pair of GCDs first
ORDER = ["0000:c9:00.0", "0000:ce:00.0", "0000:c1:00.0", "0000:c6:00.0"]
UUID = [amd_uuid(bus) for bus in ORDER]
# DRM minors by PCI order: card0 is the BMC, so GCD k (PCI order) is card(k+1), renderD(128+k)
CARD = {bus: k + 1 for k, bus in enumerate(MI250_BUSES[:4])}


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mi250") / "root"
    build_amd_node(root)
    return root


def plan(root: Path, **env: str) -> BindPlan:
    return BindPlan.merge(("rocm",), [rocm.discover(HostRoot(root), {"PATH": "/usr/bin", **env})])


def nodes_of(*buses: str) -> list[tuple[str, int, int]]:
    return sorted([(f"/dev/dri/card{CARD[b]}", 226, CARD[b]) for b in buses]
                  + [(f"/dev/dri/renderD{127 + CARD[b]}", 226, 127 + CARD[b]) for b in buses]
                  + [("/dev/kfd", KFD_MAJOR, 0)])


def devices(p: BindPlan) -> list[tuple[str, int, int]]:
    return [(d.path, d.major, d.minor) for d in p.devices]


def env(p: BindPlan) -> list[tuple[str, str, str]]:
    return [(e.name, e.action.value, e.value) for e in p.env]


def test_gpus_in_kfd_order_matched_to_drm_by_bus_id(node: Path) -> None:
    gpus = rocm.read_gpus(HostRoot(node))
    assert [(g.index, g.node, g.bus_id, g.uuid, g.gfx_target, g.numa_node, g.card.path, g.render.path)
            for g in gpus] == [
        (0, 1, "0000:c9:00.0", UUID[0], "gfx90a", 1, "/dev/dri/card3", "/dev/dri/renderD130"),
        (1, 2, "0000:ce:00.0", UUID[1], "gfx90a", 1, "/dev/dri/card4", "/dev/dri/renderD131"),
        (2, 3, "0000:c1:00.0", UUID[2], "gfx90a", 3, "/dev/dri/card1", "/dev/dri/renderD128"),
        (3, 4, "0000:c6:00.0", UUID[3], "gfx90a", 3, "/dev/dri/card2", "/dev/dri/renderD129"),
    ]
    assert gpus[0].gpu_id == 41111


def test_default_plan_entry_by_entry(node: Path) -> None:
    p = plan(node)
    assert devices(p) == nodes_of(*ORDER)
    assert [(m.source, m.destination, m.kind, m.rule) for m in p.mounts] == [
        ("/opt/rocm-6.0.2/bin/rocminfo", "/.hpcbind/bin/rocminfo", "bin", "rocm-tool"),
        ("/opt/rocm-6.0.2/lib/libamdocl64.so", f"{LIB}/libamdocl64.so", "lib", "rocmliblist"),
        ("/usr/lib/x86_64-linux-gnu/libdrm.so.2.4.0", f"{LIB}/libdrm.so.2.4.0", "lib", "rocmliblist"),
        ("/usr/lib/x86_64-linux-gnu/libdrm_amdgpu.so.1.0.0", f"{LIB}/libdrm_amdgpu.so.1.0.0", "lib",
         "rocmliblist"),
        ("/usr/lib/x86_64-linux-gnu/libnuma.so.1.0.0", f"{LIB}/libnuma.so.1.0.0", "lib", "rocmliblist"),
    ]
    amdocl = p.mounts[1].provenance
    assert (amdocl.soname, amdocl.elf_class, amdocl.needs) == ("libamdocl64.so", "ELFCLASS64",
                                                               ("GLIBC_2.2.5", "GLIBC_2.34"))
    assert [(ln.path, ln.target) for ln in p.links] == [
        (f"{LIB}/libdrm.so.2", "libdrm.so.2.4.0"),
        (f"{LIB}/libdrm_amdgpu.so.1", "libdrm_amdgpu.so.1.0.0"),
        (f"{LIB}/libnuma.so.1", "libnuma.so.1.0.0"),
    ]
    assert env(p) == [("LD_LIBRARY_PATH", "append", LIB), ("PATH", "append", "/.hpcbind/bin")]
    runtime = ("ROCm runtime library: the image's own ROCm must provide it (a host copy breaks "
               "the image's rocBLAS/MIOpen, apptainer#1621)")
    assert {r.candidate: r.reason for r in p.rejected} == {
        "/opt/rocm-6.0.2/bin/rocm-smi": "not an ELF executable: a script would run without the "
                                        "host files it needs; use the image's own",
        "/opt/rocm-6.0.2/lib/libamd_comgr.so.2.6.60002": runtime,
        "/opt/rocm-6.0.2/lib/libhsa-runtime64.so.1.12.60002": runtime,
        "/opt/rocm-6.0.2/lib/librocblas.so.4.0.60002": runtime,
        "/usr/lib/x86_64-linux-gnu/libOpenCL.so.1.0.0": "vendor-neutral OpenCL ICD loader: the image owns it",
    }
    assert [(c.name, c.status, c.message) for c in p.checks] == [
        ("amdgpu-driver", Status.OK, f"amdgpu {AMDGPU_VERSION}, 4 GPUs")]
    facts = [(f.name, f.value) for f in p.facts]
    assert ("amdgpu-version", AMDGPU_VERSION) in facts
    assert ("rocm-version", ROCM_VERSION) in facts
    assert ("group", f"render={RENDER_GID}") in facts and ("group", f"video={VIDEO_GID}") in facts
    assert ("gpu", f"index=0 node=1 gpu_id=41111 bus=0000:c9:00.0 uuid={UUID[0]} gfx90a numa=1 "
                   f"card=card3 render=renderD130") in facts


@pytest.mark.parametrize(("variables", "picked", "renumbered"), [
    ({"ROCR_VISIBLE_DEVICES": "3,1"}, [3, 1], "1,0"),
    ({"ROCR_VISIBLE_DEVICES": f"{UUID[3]},{UUID[1][4:]}"}, [3, 1], "1,0"),  # with and without "GPU-"
    ({"HIP_VISIBLE_DEVICES": "2"}, [2], "0"),
    ({"ROCR_VISIBLE_DEVICES": "3,1,0", "HIP_VISIBLE_DEVICES": "2,0"}, [0, 3], "0,1"),  # HIP indexes ROCR's
])
def test_selection(node: Path, variables: dict[str, str], picked: list[int], renumbered: str) -> None:
    p = plan(node, **variables)
    assert devices(p) == nodes_of(*(ORDER[i] for i in picked))
    values = [(n, a, v) for n, a, v in env(p) if n.endswith("VISIBLE_DEVICES")]
    assert values[0] == ("ROCR_VISIBLE_DEVICES", "set", renumbered)
    assert (("HIP_VISIBLE_DEVICES", "unset", "") in values) == ("HIP_VISIBLE_DEVICES" in variables)
    why = " and ".join(f"{k}={v}" for k, v in variables.items())
    not_picked = [i for i in range(4) if i not in picked]
    rejected = {r.candidate: r.reason for r in p.rejected if r.candidate.startswith("/dev/")}
    assert rejected == {f"/dev/dri/{kind}{CARD[ORDER[i]] + offset}": f"GPU {i} not in {why}"
                        for i in not_picked for kind, offset in (("card", 0), ("renderD", 127))}


@pytest.mark.parametrize(("value", "why"), [
    ("7", "no GPU 7 among 4"),
    ("GPU-ffffffffffffffff", "GPU-ffffffffffffffff is not an index or UUID of a GPU"),
    ("GPU-", "GPU- matches 4 GPU UUIDs"),
])
def test_unknown_gpu_is_a_failed_check(node: Path, value: str, why: str) -> None:
    p = plan(node, ROCR_VISIBLE_DEVICES=f"{value},0")
    assert [(c.name, c.message) for c in p.failed] == [
        ("rocr-visible-devices", f"ROCR_VISIBLE_DEVICES={value},0: {why}")]
    assert devices(p) == nodes_of(ORDER[0])


def test_builders_compose_into_one_node(tmp_path: Path) -> None:
    # an AMD + NVIDIA node: each builder's ld.so.conf.d entry survives the other's ldconfig
    build_amd_node(tmp_path)
    build_nvidia_node(tmp_path, gpus=2)
    paths = {e.path for e in read_ldcache(HostRoot(tmp_path))}
    assert {"/opt/rocm/lib/libamdocl64.so", "/usr/lib64/libnvidia-ml.so.1",
            "/usr/lib/i386-linux-gnu/libcuda.so.1"} <= paths
    assert devices(plan(tmp_path)) == nodes_of(*ORDER)
    assert len(nvidia.read_gpus(HostRoot(tmp_path))) == 2


def test_missing_kfd_and_render_node(tmp_path: Path) -> None:
    root = tmp_path / "root"
    build_amd_node(root, gpus=2)  # two GCDs: KFD order is PCI order
    (root / "proc/devices").write_text("Character devices:\n226 drm\n")
    (root / "sys/class/drm/renderD129").unlink()
    p = plan(root)
    assert [(c.name, c.status, c.message) for c in p.failed] == [
        ("amdgpu-kfd", Status.FAIL, "no kfd in /proc/devices: ROCm cannot start without /dev/kfd"),
        ("amdgpu-render", Status.FAIL, "GPU 1 (0000:c6:00.0) has no render node in /sys/class/drm"),
    ]
    assert devices(p) == [("/dev/dri/card1", 226, 1), ("/dev/dri/card2", 226, 2),
                          ("/dev/dri/renderD128", 226, 128)]


def test_no_amd_gpu(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert (p.mounts, p.devices, p.env, p.facts) == ((), (), (), ())
    assert [(c.name, c.status, c.message) for c in p.checks] == [
        ("amdgpu-driver", Status.WARN, "no AMD GPU found (no GPU node in /sys/class/kfd/kfd/topology/nodes)")]


@pytest.mark.skipif(Path("/sys/class/kfd").exists(), reason="this host has AMD GPUs")
def test_no_amd_gpu_on_this_machine() -> None:
    assert [c.status for c in rocm.discover(HostRoot(), {}).checks] == [Status.WARN]


def test_group_ids() -> None:
    assert rocm.group_ids("root:x:0:\nvideo:x:44:alice\nrender:x:109:\nbroken\nbad:x:y:\n") == {
        "root": 0, "video": 44, "render": 109}


def test_live_group_membership_is_checked() -> None:
    gids = rocm.group_ids(Path("/etc/group").read_text())
    part = rocm.group_checks(HostRoot())
    mine = set(os.getgroups()) | {os.getgid()}
    missing = [name for name in rocm.GROUPS if name in gids and gids[name] not in mine]
    assert [c.name for c in part.checks] == [f"group-{name}" for name in missing]
    assert all(c.status is Status.WARN and c.fix for c in part.checks)
    assert [f.value for f in part.facts] == [f"{n}={gids[n]}" for n in rocm.GROUPS if n in gids]


def test_groups_of_a_capture_are_not_checked_against_this_user(node: Path) -> None:
    assert rocm.group_checks(HostRoot(node)).checks == []


def test_host_rocm_version(node: Path, tmp_path: Path) -> None:
    assert rocm.host_rocm_version(HostRoot(node)) == ROCM_VERSION
    assert rocm.host_rocm_version(HostRoot(tmp_path)) == ""


@pytest.mark.parametrize(("host", "image", "status"), [
    ("6.0.2", "6.0.0", Status.OK),
    ("6.0.2-115", "6.0.2", Status.OK),
    ("6.0.2", "5.7.1", Status.WARN),
    ("6.1", "6.0.2", Status.WARN),
    ("", "6.0.2", Status.WARN),
])
def test_rocm_version_check(host: str, image: str, status: Status) -> None:
    check = rocm.rocm_version_check(host, image)
    assert (check.name, check.status, check.provider) == ("rocm-version", status, "gpu.rocm")
    if status is Status.WARN:
        assert check.fix
