"""gpu.nvidia discovery on an 8-GPU A100 fixture node (MIG on two GPUs, real ELF libraries and
a real ld.so.cache), on the real POWER capture with six GPUs, and on this GPU-less machine."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from hosts_gpu import (
    NV_LIBDIR,
    NV_LIBDIR32,
    STALE_LIBDIR,
    build_nvidia_node,
    nvidia_bus_ids,
    nvidia_uuid,
    symlink,
    write,
)
from hpcbind.gpu import nvidia
from hpcbind.hostroot import HostRoot
from hpcbind.plan import BindPlan, Need, Status

CAPTURE = Path(__file__).resolve().parent / "data/hosts/nvidiagpunumanodes.tar.bz2"
DRIVER = "550.54.15"
LIB = "/.hpcbind/lib"
UUIDS = [nvidia_uuid(bus) for bus in nvidia_bus_ids(8)]


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("a100") / "root"
    build_nvidia_node(root)
    return root


@pytest.fixture
def fresh_node(tmp_path: Path) -> Path:
    """A node of its own, for tests that change it."""
    build_nvidia_node(tmp_path / "root")
    return tmp_path / "root"


def plan(root: Path, **env: str) -> BindPlan:
    return BindPlan.merge(("nv",), [nvidia.discover(HostRoot(root), {"PATH": "/usr/bin", **env})])


def destinations(p: BindPlan) -> list[str]:
    return [m.destination for m in p.mounts]


def devices(p: BindPlan) -> list[tuple[str, int, int]]:
    return [(d.path, d.major, d.minor) for d in p.devices]


def env(p: BindPlan) -> list[tuple[str, str, str]]:
    return [(e.name, e.action.value, e.value) for e in p.env]


def rejected(p: BindPlan) -> dict[str, str]:
    return {r.candidate: r.reason for r in p.rejected}


def lib_mounts(p: BindPlan, libdir: str = LIB) -> list[str]:
    return [m.destination.rsplit("/", 1)[1] for m in p.mounts
            if m.kind == "lib" and m.destination.rsplit("/", 1)[0] == libdir]


CTL_UVM = [("/dev/nvidia-uvm", 508, 0), ("/dev/nvidia-uvm-tools", 508, 1), ("/dev/nvidiactl", 195, 255)]
# GPU index 0 is /dev/nvidia1 (the fixture's minors are its probe order, neighbours swapped);
# its MIG caps are gpu1/gi{1,2}, GPU 1's (/dev/nvidia0) gpu0/gi{3,4,5}, per nv-caps.c's table
MIG_GPU0 = [147, 148, 149, 156, 157]
MIG_GPU1 = [30, 31, 39, 40, 48, 49]

COMPUTE_UTILITY_LIBS = [
    f"libcuda.so.{DRIVER}", f"libcudadebugger.so.{DRIVER}", f"libnvidia-allocator.so.{DRIVER}",
    f"libnvidia-cfg.so.{DRIVER}", f"libnvidia-gpucomp.so.{DRIVER}", f"libnvidia-ml.so.{DRIVER}",
    f"libnvidia-nscq.so.{DRIVER}", f"libnvidia-nvvm.so.{DRIVER}", "libnvidia-nvvm70.so.4",
    f"libnvidia-opencl.so.{DRIVER}", f"libnvidia-pkcs11-openssl3.so.{DRIVER}",
    f"libnvidia-ptxjitcompiler.so.{DRIVER}", f"libnvidia-sandboxutils.so.{DRIVER}",
    f"libnvidia-vksc-core.so.{DRIVER}",
]


def test_default_plan_entry_by_entry(node: Path) -> None:
    p = plan(node)
    assert destinations(p) == [
        "/.hpcbind/bin/nvidia-cuda-mps-control", "/.hpcbind/bin/nvidia-cuda-mps-server",
        "/.hpcbind/bin/nvidia-debugdump", "/.hpcbind/bin/nvidia-persistenced",
        "/.hpcbind/bin/nvidia-smi",
        *(f"{LIB}/{name}" for name in COMPUTE_UTILITY_LIBS),
        f"/lib/firmware/nvidia/{DRIVER}/gsp_ga10x.bin", f"/lib/firmware/nvidia/{DRIVER}/gsp_tu10x.bin",
        "/tmp/nvidia-mps", "/var/run/nvidia-persistenced/socket",
    ]
    assert devices(p) == sorted(
        [(f"/dev/nvidia-caps/nvidia-cap{m}", 236, m) for m in MIG_GPU0 + MIG_GPU1]
        + CTL_UVM + [(f"/dev/nvidia{i}", 195, i) for i in range(8)])
    assert env(p) == [
        ("LD_LIBRARY_PATH", "append", LIB),
        ("PATH", "append", "/.hpcbind/bin"),
        ("NVIDIA_VISIBLE_DEVICES", "set", "all"),
        ("NVIDIA_DRIVER_CAPABILITIES", "set", "compute,utility"),
    ]
    assert [(ln.path, ln.target) for ln in p.links] == [
        (f"{LIB}/gbm/nvidia-drm_gbm.so", "../libnvidia-allocator.so.1"),
        (f"{LIB}/libcuda.so", "libcuda.so.1"),
        (f"{LIB}/libcuda.so.1", f"libcuda.so.{DRIVER}"),
        (f"{LIB}/libcudadebugger.so.1", f"libcudadebugger.so.{DRIVER}"),
        (f"{LIB}/libnvidia-allocator.so.1", f"libnvidia-allocator.so.{DRIVER}"),
        (f"{LIB}/libnvidia-cfg.so.1", f"libnvidia-cfg.so.{DRIVER}"),
        (f"{LIB}/libnvidia-ml.so", "libnvidia-ml.so.1"),
        (f"{LIB}/libnvidia-ml.so.1", f"libnvidia-ml.so.{DRIVER}"),
        (f"{LIB}/libnvidia-nscq.so.2", f"libnvidia-nscq.so.{DRIVER}"),
        (f"{LIB}/libnvidia-nvvm.so.4", f"libnvidia-nvvm.so.{DRIVER}"),
        (f"{LIB}/libnvidia-opencl.so.1", f"libnvidia-opencl.so.{DRIVER}"),
        (f"{LIB}/libnvidia-ptxjitcompiler.so.1", f"libnvidia-ptxjitcompiler.so.{DRIVER}"),
        (f"{LIB}/libnvidia-sandboxutils.so.1", f"libnvidia-sandboxutils.so.{DRIVER}"),
    ]
    assert [(c.name, c.status, c.message) for c in p.checks] == [
        ("nvidia-driver", Status.OK, f"NVIDIA driver {DRIVER}, 8 GPUs")]
    graphics = "capability graphics not requested (NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
    video = "capability video not requested (NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
    stale = ("not from the running driver 550.54.15 (a stale library of another driver version; "
             "remove it and rerun ldconfig)")
    compat = "32-bit library (ELFCLASS32 EM_386); add compat32 to NVIDIA_DRIVER_CAPABILITIES to bind it"
    assert rejected(p) == {
        f"{NV_LIBDIR32}/libcuda.so.{DRIVER}": compat,
        f"{NV_LIBDIR32}/libnvidia-ml.so.{DRIVER}": compat,
        f"{NV_LIBDIR}/libEGL_nvidia.so.{DRIVER}": graphics,
        f"{NV_LIBDIR}/libGLX_nvidia.so.{DRIVER}": graphics,
        f"{NV_LIBDIR}/libnvcuvid.so.{DRIVER}": video,
        f"{NV_LIBDIR}/libnvidia-egl-gbm.so.1.1.1": graphics,
        f"{NV_LIBDIR}/libnvidia-egl-wayland.so.1.1.13": graphics,
        f"{NV_LIBDIR}/libnvidia-eglcore.so.{DRIVER}": graphics,
        f"{NV_LIBDIR}/libnvidia-encode.so.{DRIVER}": video,
        f"{NV_LIBDIR}/libnvidia-glcore.so.{DRIVER}": graphics,
        f"{NV_LIBDIR}/libnvidia-ngx.so.{DRIVER}": "capability ngx not requested "
                                                  "(NVIDIA_DRIVER_CAPABILITIES=compute,utility)",
        f"{NV_LIBDIR}/libnvidia-opticalflow.so.{DRIVER}": video,
        f"{NV_LIBDIR}/libnvoptix.so.{DRIVER}": graphics,
        f"{STALE_LIBDIR}/libnvidia-fatbinaryloader.so.390.157": stale,
        f"{STALE_LIBDIR}/libnvidia-ml.so.535.104.05": stale,
        "/var/run/nvidia-fabricmanager/socket": "no nv-fabricmanager's socket on the host now",
    }


def test_glvnd_and_unrelated_libraries_are_never_candidates(node: Path) -> None:
    p = plan(node, NVIDIA_DRIVER_CAPABILITIES="all")
    considered = {m.source for m in p.mounts} | set(rejected(p))
    assert not {c for c in considered if "/libGL.so" in c or "/libEGL.so" in c or "libz.so" in c}


def test_library_provenance_and_rules(node: Path) -> None:
    mounts = {m.destination: m for m in plan(node).mounts}
    cuda = mounts[f"{LIB}/libcuda.so.{DRIVER}"]
    assert cuda.source == f"{NV_LIBDIR}/libcuda.so.{DRIVER}"
    assert (cuda.kind, cuda.rule, cuda.options, cuda.need) == ("lib", "capability:compute",
                                                               ("ro", "nosuid", "nodev"), Need.REQUIRED)
    prov = cuda.provenance
    assert (prov.realpath, prov.soname, prov.elf_class, prov.machine, prov.needs, prov.version) == (
        f"{NV_LIBDIR}/libcuda.so.{DRIVER}", "libcuda.so.1", "ELFCLASS64", "EM_X86_64",
        ("GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.17"), DRIVER)
    assert mounts[f"{LIB}/libnvidia-nscq.so.{DRIVER}"].provenance.needs == ("GLIBCXX_3.4.29",)
    nvvm70 = mounts[f"{LIB}/libnvidia-nvvm70.so.4"]
    assert (nvvm70.rule, nvvm70.provenance.version) == ("capability:compute", "")
    new = mounts[f"{LIB}/libnvidia-vksc-core.so.{DRIVER}"]
    assert new.rule == "driver-suffix" and "in no capability list" in new.reason
    smi = mounts["/.hpcbind/bin/nvidia-smi"]
    assert (smi.source, smi.kind, smi.rule, smi.provenance.machine) == (
        "/usr/bin/nvidia-smi", "bin", "capability:utility", "EM_X86_64")
    mps = mounts["/tmp/nvidia-mps"]
    assert (mps.kind, mps.options, mps.need) == ("dir", ("nosuid", "nodev"), Need.OPTIONAL)
    sock = mounts["/var/run/nvidia-persistenced/socket"]
    assert (sock.kind, sock.need, "ro" in sock.options) == ("socket", Need.OPTIONAL, True)


def test_tool_behind_alternatives_keeps_its_name(fresh_node: Path) -> None:
    real = fresh_node / "usr/lib/nvidia/current/nvidia-smi.550"
    real.parent.mkdir(parents=True)
    (fresh_node / "usr/bin/nvidia-smi").rename(real)
    # absolute links, as update-alternatives makes them: followed inside the root
    symlink(fresh_node, "/etc/alternatives/nvidia--nvidia-smi", "/usr/lib/nvidia/current/nvidia-smi.550")
    symlink(fresh_node, "/usr/bin/nvidia-smi", "/etc/alternatives/nvidia--nvidia-smi")
    smi = {m.destination: m for m in plan(fresh_node).mounts}["/.hpcbind/bin/nvidia-smi"]
    assert smi.source == "/usr/lib/nvidia/current/nvidia-smi.550"


def test_facts_of_every_gpu(node: Path) -> None:
    p = plan(node)
    facts = [f.value for f in p.facts if f.name == "gpu"]
    numa = [3, 3, 1, 1, 7, 7, 5, 5]
    minors = [1, 0, 3, 2, 5, 4, 7, 6]
    mig = [3, 3, 0, 0, 0, 0, 0, 0]
    assert facts == [
        f"index={i} bus={bus} minor={minors[i]} uuid={UUIDS[i]} numa={numa[i]} memory-numa=? "
        f"mig={mig[i]} model=NVIDIA A100-SXM4-80GB" for i, bus in enumerate(nvidia_bus_ids(8))]
    assert {f.name: f.value for f in p.facts if f.name != "gpu"} == {
        "capabilities": "compute,utility", "driver-version": DRIVER}


def gpu_nodes(p: BindPlan) -> list[str]:
    return [d.path for d in p.devices if d.path.startswith("/dev/nvidia") and d.path[11:].isdigit()]


@pytest.mark.parametrize(("name", "value"), [
    ("CUDA_VISIBLE_DEVICES", "3,1,5"),
    ("NVIDIA_VISIBLE_DEVICES", "3,1,5"),
    ("CUDA_VISIBLE_DEVICES", f"{UUIDS[3]},{UUIDS[1][:12]},{UUIDS[5][4:]}"),  # full, prefix, no "GPU-"
    ("CUDA_VISIBLE_DEVICES", "0000:4e:00.0,00000000:0F:00.0,90:00.0"),  # bus ids as sysfs/smi/short
    ("SLURM_STEP_GPUS", "2,0,4"),  # Slurm's GPU ids are device minors
])
def test_selection_renumbers_the_container_view(node: Path, name: str, value: str) -> None:
    p = plan(node, **{name: value})
    # host GPUs 3, 1, 5 are /dev/nvidia2, 0, 4; GPU 1 brings its MIG instances
    assert gpu_nodes(p) == ["/dev/nvidia0", "/dev/nvidia2", "/dev/nvidia4"]
    assert [d[0] for d in devices(p) if "caps" in d[0]] == sorted(
        f"/dev/nvidia-caps/nvidia-cap{m}" for m in MIG_GPU1)
    values = {n: v for n, _, v in env(p)}
    assert values["CUDA_VISIBLE_DEVICES"] == "1,0,2"
    assert values["NVIDIA_VISIBLE_DEVICES"] == f"{UUIDS[3]},{UUIDS[1]},{UUIDS[5]}"
    reasons = rejected(p)
    for index, minor in ((0, 1), (2, 3), (4, 5), (6, 7), (7, 6)):
        assert reasons[f"/dev/nvidia{minor}"] == f"GPU {index} not in {name}={value}"
    assert all(c.status is Status.OK for c in p.checks)


def test_slurm_allocation_outranks_cuda_visible_devices(node: Path) -> None:
    p = plan(node, SLURM_STEP_GPUS="6", CUDA_VISIBLE_DEVICES="0")
    assert gpu_nodes(p) == ["/dev/nvidia6"]  # minor 6 is GPU 7
    assert ("CUDA_VISIBLE_DEVICES", "set", "0") in env(p)
    assert rejected(p)["/dev/nvidia1"] == "GPU 0 not in SLURM_STEP_GPUS=6"


def test_container_indices() -> None:
    assert nvidia.container_indices([3, 1, 5]) == (1, 0, 2)
    assert nvidia.container_indices([7]) == (0,)
    assert nvidia.container_indices([0, 1, 2]) == (0, 1, 2)


def test_one_mig_instance(node: Path) -> None:
    token = f"MIG-{UUIDS[0]}/1/1"
    p = plan(node, CUDA_VISIBLE_DEVICES=token)
    assert gpu_nodes(p) == ["/dev/nvidia1"]
    assert [d for d in devices(p) if "caps" in d[0]] == [
        ("/dev/nvidia-caps/nvidia-cap147", 236, 147), ("/dev/nvidia-caps/nvidia-cap149", 236, 149)]
    values = {n: v for n, _, v in env(p)}
    assert values["CUDA_VISIBLE_DEVICES"] == token
    assert values["NVIDIA_VISIBLE_DEVICES"] == token
    reasons = rejected(p)
    assert reasons["MIG 0:gi1/ci0"] == f"MIG 0:gi1/ci0 not in CUDA_VISIBLE_DEVICES={token}"
    assert reasons["MIG 0:gi2/ci0"] == f"MIG 0:gi2/ci0 not in CUDA_VISIBLE_DEVICES={token}"


def test_mig_instance_and_its_whole_gpu(node: Path) -> None:
    p = plan(node, CUDA_VISIBLE_DEVICES=f"MIG-{UUIDS[0]}/1/1,0")
    assert [d[2] for d in devices(p) if "caps" in d[0]] == MIG_GPU0


@pytest.mark.parametrize(("value", "why"), [
    ("9", "no GPU with index 9 on this host"),
    ("GPU-", "GPU- matches 8 GPU UUIDs on this host"),
    ("0000:99:00.0", "no GPU at PCI bus id 0000:99:00.0 on this host"),
    (f"MIG-{UUIDS[2]}/1/0", f"no MIG instance MIG-{UUIDS[2]}/1/0 on this host"),
    ("MIG-3b7ea5d3-0c7e-5b0b-9e2f-7f7f3c1c2d4e",
     "MIG-3b7ea5d3-0c7e-5b0b-9e2f-7f7f3c1c2d4e: MIG UUIDs are known only to NVML, not to procfs; "
     "select the MIG device as MIG-GPU-<gpu uuid>/<gi>/<ci> or select its GPU"),
])
def test_unknown_gpu_is_a_failed_check(node: Path, value: str, why: str) -> None:
    p = plan(node, CUDA_VISIBLE_DEVICES=f"{value},2")
    assert [(c.name, c.status, c.message) for c in p.failed] == [
        ("nvidia-visible-devices", Status.FAIL, f"CUDA_VISIBLE_DEVICES={value},2: {why}")]
    assert gpu_nodes(p) == ["/dev/nvidia3"]  # what could be resolved still is
    assert ("CUDA_VISIBLE_DEVICES", "set", "0") in env(p)


def test_none_binds_the_driver_without_gpus(node: Path) -> None:
    p = plan(node, NVIDIA_VISIBLE_DEVICES="none")
    assert devices(p) == CTL_UVM
    assert f"{LIB}/libcuda.so.{DRIVER}" in destinations(p)
    assert ("NVIDIA_VISIBLE_DEVICES", "set", "none") in env(p)
    assert "CUDA_VISIBLE_DEVICES" not in {n for n, _, _ in env(p)}
    assert rejected(p)["/dev/nvidia0"] == "NVIDIA_VISIBLE_DEVICES=none: driver only"


@pytest.mark.parametrize("value", ["void", ""])
def test_void_binds_nothing(node: Path, value: str) -> None:
    p = plan(node, NVIDIA_VISIBLE_DEVICES=value)
    assert (p.mounts, p.devices, p.env, p.links) == ((), (), (), ())
    assert [(c.status, c.message) for c in p.checks] == [
        (Status.OK, f"NVIDIA_VISIBLE_DEVICES={value}: no GPU support requested")]


def test_all_capabilities(node: Path) -> None:
    p = plan(node, NVIDIA_DRIVER_CAPABILITIES="all")
    assert lib_mounts(p) == sorted(COMPUTE_UTILITY_LIBS + [
        f"libEGL_nvidia.so.{DRIVER}", f"libGLX_nvidia.so.{DRIVER}", f"libnvcuvid.so.{DRIVER}",
        "libnvidia-egl-gbm.so.1.1.1", "libnvidia-egl-wayland.so.1.1.13", f"libnvidia-eglcore.so.{DRIVER}",
        f"libnvidia-encode.so.{DRIVER}", f"libnvidia-glcore.so.{DRIVER}", f"libnvidia-ngx.so.{DRIVER}",
        f"libnvidia-opticalflow.so.{DRIVER}", f"libnvoptix.so.{DRIVER}"])
    assert lib_mounts(p, LIB + "32") == [f"libcuda.so.{DRIVER}", f"libnvidia-ml.so.{DRIVER}"]
    assert [m.destination for m in p.mounts if m.kind == "config"] == [
        "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
        "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
        "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        "/usr/share/vulkan/icd.d/nvidia_icd.json",
    ]
    assert ("/dev/nvidia-modeset", 195, 254) in devices(p)
    assert [v for n, a, v in env(p) if n == "LD_LIBRARY_PATH"] == [LIB, LIB + "32"]
    assert ("NVIDIA_DRIVER_CAPABILITIES", "set",
            "compat32,compute,display,graphics,ngx,utility,video") in env(p)
    links = {ln.path: ln.target for ln in p.links}
    assert links[f"{LIB}/libGLX_indirect.so.0"] == "libGLX_nvidia.so.0"
    assert links[f"{LIB}/libnvidia-opticalflow.so"] == "libnvidia-opticalflow.so.1"
    assert links[f"{LIB}32/libcuda.so"] == "libcuda.so.1"
    assert links[f"{LIB}/libnvidia-egl-wayland.so.1"] == "libnvidia-egl-wayland.so.1.1.13"


@pytest.mark.parametrize(("caps", "effective"), [
    ("video", "compute,video"),
    ("display", "display,graphics"),
    ("utility", "utility"),
    ("compute,utility,compat32", "compat32,compute,utility"),
])
def test_capabilities_filter(node: Path, caps: str, effective: str) -> None:
    p = plan(node, NVIDIA_DRIVER_CAPABILITIES=caps)
    assert ("NVIDIA_DRIVER_CAPABILITIES", "set", effective) in env(p)
    wanted = set(effective.split(","))
    libs = set(lib_mounts(p))
    assert (f"libcuda.so.{DRIVER}" in libs) == ("compute" in wanted)
    assert (f"libnvcuvid.so.{DRIVER}" in libs) == ("video" in wanted)
    assert (f"libGLX_nvidia.so.{DRIVER}" in libs) == ("graphics" in wanted)
    assert (f"libnvidia-ml.so.{DRIVER}" in libs) == ("utility" in wanted)
    assert bool(lib_mounts(p, LIB + "32")) == ("compat32" in wanted)
    assert (("/dev/nvidia-uvm", 508, 0) in devices(p)) == ("compute" in wanted)
    assert (("/dev/nvidia-modeset", 195, 254) in devices(p)) == ("display" in wanted)
    assert ("/.hpcbind/bin/nvidia-cuda-mps-control" in destinations(p)) == ("compute" in wanted)
    assert ("/.hpcbind/bin/nvidia-smi" in destinations(p)) == ("utility" in wanted)


def test_unknown_capability_is_a_warning(node: Path) -> None:
    p = plan(node, NVIDIA_DRIVER_CAPABILITIES="compute,gaming")
    assert [(c.name, c.status) for c in p.checks if c.name == "nvidia-capabilities"] == [
        ("nvidia-capabilities", Status.WARN)]
    assert ("NVIDIA_DRIVER_CAPABILITIES", "set", "compute") in env(p)


def test_mps_pipe_directory_from_the_environment(node: Path) -> None:
    p = plan(node, CUDA_MPS_PIPE_DIRECTORY="/var/mps")
    assert "/tmp/nvidia-mps" not in destinations(p)
    assert rejected(p)["/var/mps"] == "no MPS control pipes (read-write) on the host now"


def test_missing_uvm_is_a_failed_check_with_the_fix(fresh_node: Path) -> None:
    devices_file = fresh_node / "proc/devices"
    devices_file.write_text(devices_file.read_text().replace("508 nvidia-uvm\n", ""))
    p = plan(fresh_node)
    assert [(c.name, c.status, c.message, c.fix) for c in p.failed] == [(
        "nvidia-uvm", Status.FAIL,
        "nvidia-uvm is not loaded (no nvidia-uvm in /proc/devices): CUDA cannot start without /dev/nvidia-uvm",
        "ask the administrator to load it at boot: 'nvidia-modprobe -u -c=0' or 'modprobe nvidia-uvm'")]
    assert "/dev/nvidia-uvm" not in [d[0] for d in devices(p)]
    assert plan(fresh_node, NVIDIA_DRIVER_CAPABILITIES="utility").failed == ()  # nvidia-smi needs no uvm


def test_open_kernel_module_and_sysfs_versions(fresh_node: Path) -> None:
    version = fresh_node / "proc/driver/nvidia/version"
    version.write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build  "
                       "(dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:23:56 UTC 2024\nGCC version:  gcc 12\n")
    assert nvidia.driver_version(HostRoot(fresh_node)) == DRIVER
    version.unlink()
    assert nvidia.driver_version(HostRoot(fresh_node)) == DRIVER  # /sys/module/nvidia/version


def test_a_newer_driver_makes_every_library_stale(fresh_node: Path) -> None:
    (fresh_node / "sys/module/nvidia/version").write_text("560.35.03\n")
    (fresh_node / "proc/driver/nvidia/version").unlink()
    p = plan(fresh_node)
    assert lib_mounts(p) == ["libnvidia-nvvm70.so.4"]  # versioned on its own: cannot tell
    assert rejected(p)[f"{NV_LIBDIR}/libcuda.so.{DRIVER}"].startswith("not from the running driver 560.35.03")
    assert [m for m in p.mounts if m.kind == "firmware"] == []


def test_no_driver(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert (p.mounts, p.devices, p.env, p.rejected, p.facts) == ((), (), (), (), ())
    assert [(c.name, c.status, c.message) for c in p.checks] == [
        ("nvidia-driver", Status.WARN, "no NVIDIA driver found (no /proc/driver/nvidia/version)")]


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this host has an NVIDIA driver")
def test_no_driver_on_this_machine() -> None:
    part = nvidia.discover(HostRoot(), {})
    assert [c.status for c in part.checks] == [Status.WARN]
    assert nvidia.nvml_cross_check(HostRoot()).status is Status.WARN  # NVML: library not found


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("capture")
    wanted = ("proc/driver/", "sys/bus/pci/", "sys/devices/system/node/")
    with tarfile.open(CAPTURE) as tar:
        # hwloc's own test data (Python 3.11.2 has no extraction filter); only what GPU
        # discovery reads: the rest is thousands of CPU files
        tar.extractall(out, [m for m in tar.getmembers()
                             if m.name.partition("/")[2].startswith(wanted)])
    return out / "nvidiagpunumanodes"


def test_real_power_capture_with_six_gpus(capture: Path) -> None:
    gpus = nvidia.read_gpus(HostRoot(capture))
    assert [(g.index, g.bus_id, g.numa_node, g.memory_numa_node) for g in gpus] == [
        (0, "0004:05:00.0", 0, 255),
        (1, "0004:06:00.0", 0, 254),
        (2, "0006:00:00.0", 0, 253),
        (3, "0007:00:00.0", 8, 252),
        (4, "0035:04:00.0", 8, 251),
        (5, "0035:05:00.0", 8, 250),
    ]
    part = nvidia.discover(HostRoot(capture), {})
    assert len([f for f in part.facts if f.name == "gpu"]) == 6
    assert (part.mounts, part.devices) == ([], [])
    assert [(c.status, c.message) for c in part.checks] == [(
        Status.WARN, "NVIDIA driver version unknown (no /proc/driver/nvidia/version nor "
                     "/sys/module/nvidia/version) with 6 GPUs: nothing bound")]
    assert nvidia.nvml_cross_check(HostRoot(capture)).status is Status.OK  # skipped off-host


def test_capture_with_a_driver_version_gets_its_gpus_without_minors(capture: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    shutil.copytree(capture, root, symlinks=True)
    write(root, "/sys/module/nvidia/version", "418.40.04\n")
    p = plan(root, CUDA_VISIBLE_DEVICES="4")
    assert gpu_nodes(p) == []
    assert rejected(p)["GPU 4 (0035:04:00.0)"] == ("no Device Minor in "
                                                   "/proc/driver/nvidia/gpus/0035:04:00.0/information")
    assert rejected(p)["GPU 0 (0004:05:00.0)"] == "GPU 0 not in CUDA_VISIBLE_DEVICES=4"
    assert [c.name for c in p.failed] == ["nvidia-libraries", "nvidia-uvm"]  # no ld.so.cache, no /proc/devices


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/proc/driver/nvidia/version").exists(), reason="no NVIDIA driver here")
def test_live_gpus_agree_with_nvml() -> None:
    check = nvidia.nvml_cross_check(HostRoot())
    assert check.status is Status.OK, check.message
    p = BindPlan.merge(("nv",), [nvidia.discover(HostRoot(), {})])
    assert f"{LIB}/libcuda.so.{nvidia.driver_version(HostRoot())}" in destinations(p)
    assert p.failed == ()
