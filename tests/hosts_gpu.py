"""Fixture hosts with GPUs, built under a directory as the kernel and the drivers lay them out.

No capture covers an NVIDIA node with MIG or an AMD node, so these builders write what the
drivers write: ``/proc/driver/nvidia/...`` in the text the NVIDIA kernel module prints
(``nv-procfs.c``, ``nv-caps.c``), sysfs PCI/DRM/KFD trees as the kernel documents them, and
*real* ELF libraries compiled with gcc (sonames, ``GLIBC_*`` needs, 32-bit builds), indexed by
the real ``ldconfig -r ROOT``. The builders only add files under ``root``, so a plan test can
combine them with other builders (RDMA) into one node.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# A symbol of glibc/libstdc++ 2.36/12 whose *default* version is the key: referencing it pinned
# with .symver gives the library a real DT_VERNEED entry for that version.
_VERSIONED_SYMBOLS = {
    "GLIBC_2.2.5": "malloc",
    "GLIBC_2.14": "memcpy",
    "GLIBC_2.17": "clock_gettime",
    "GLIBC_2.34": "dlopen",
    "GLIBCXX_3.4.29": "_ZSt17__istream_extractRSiPcl",
}


@dataclass(frozen=True)
class SharedLib:
    """A tiny real shared library: its soname, the symbol versions it needs and defines.

    A 32-bit one (``bits=32``) needs no symbol versions: there is no 32-bit glibc to take
    them from (see _m32_flags).
    """

    soname: str
    needs: tuple[str, ...] = ("GLIBC_2.2.5",)
    defines: tuple[str, ...] = ()
    bits: int = 64


@functools.lru_cache(maxsize=None)
def compile_lib(lib: SharedLib) -> bytes:
    """The ELF bytes of ``lib``, built by gcc (cached: one build per distinct library)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "lib.c"
        source.write_text(_source(lib))
        out = work / "lib.so"
        cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(source), f"-Wl,-soname,{lib.soname}"]
        if lib.defines:
            script = work / "versions.map"
            script.write_text(_version_script(lib.defines))
            cmd.append(f"-Wl,--version-script={script}")
        if lib.bits == 32:
            cmd += _m32_flags(work)
        elif any(v.startswith("GLIBCXX_") for v in lib.needs):
            cmd.append("-lstdc++")
        subprocess.run(cmd, check=True, capture_output=True)
        return out.read_bytes()


def _source(lib: SharedLib) -> str:
    """C that references one symbol pinned to each needed version and defines one function
    for each version node of the version script."""
    lines = []
    needs = () if lib.bits == 32 else lib.needs
    for i, version in enumerate(needs):
        symbol = _VERSIONED_SYMBOLS[version]
        lines += [f'extern void ref{i}(void) __asm__("{symbol}");',
                  f'__asm__(".symver {symbol}, {symbol}@{version}");']
    if needs:
        refs = ", ".join(f"ref{i}" for i in range(len(needs)))
        lines.append(f"void (*const hpcbind_fixture_refs[])(void) = {{{refs}}};")
    lines += [f"void hpcbind_fixture_def{i}(void) {{}}" for i in range(max(1, len(lib.defines)))]
    return "\n".join(lines) + "\n"


def _version_script(defines: tuple[str, ...]) -> str:
    nodes, parent = [], ""
    for i, name in enumerate(defines):
        scope = "global: hpcbind_fixture_def%d;%s" % (i, " local: *;" if i == 0 else "")
        nodes.append(f"{name} {{ {scope} }} {parent};")
        parent = name
    return "\n".join(nodes) + "\n"


def _m32_flags(work: Path) -> list[str]:
    # Debian has gcc -m32 but no 32-bit libc to link against: link against a 32-bit stub with
    # libc's soname, so the library carries DT_NEEDED libc.so.6 and ldconfig files it as a
    # libc6 library, as it does a real 32-bit driver library.
    stub = work / "stub"
    stub.mkdir()
    (stub / "empty.c").write_text("void hpcbind_fixture_libc(void) {}\n")
    subprocess.run(["gcc", "-m32", "-shared", "-nostdlib", "-fPIC", "-Wl,-soname,libc.so.6",
                    "-o", str(stub / "libc.so.6"), str(stub / "empty.c")],
                   check=True, capture_output=True)
    return ["-m32", "-nostdlib", "-Wl,--no-as-needed", str(stub / "libc.so.6")]


def compile_all(libs: Iterable[SharedLib]) -> None:
    """Build libraries in parallel ahead of install_lib (gcc takes ~0.1 s a library)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(compile_lib, set(libs)))


def install_lib(root: Path, path: str, lib: SharedLib) -> Path:
    """Write ``lib`` at host path ``path`` under ``root`` (mode 0755, as installers do)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(compile_lib(lib))
    target.chmod(0o755)
    return target


def run_ldconfig(root: Path, dirs: Iterable[str], cache_format: str = "new",
                 cache: str = "/etc/ld.so.cache", name: str = "hpcbind-fixture") -> None:
    """The real ldconfig: soname links in ``dirs`` and the cache, all under root.

    The configuration is Debian's (ld.so.conf includes ld.so.conf.d/*.conf, ``dirs`` go in
    ``name``.conf), so builders that each add their directories compose in any order.
    """
    write(root, "/etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
    write(root, f"/etc/ld.so.conf.d/{name}.conf", "".join(f"{d}\n" for d in dirs))
    subprocess.run(["ldconfig", "-c", cache_format, "-r", str(root),
                    "-C", cache, "-f", "/etc/ld.so.conf"],
                   check=True, capture_output=True)


def add_devices(root: Path, character: str, block: str = "") -> None:
    """Add ``"major name"`` lines to the root's /proc/devices, keeping what other builders
    wrote; each section sorted by major, as the kernel prints it."""
    sections: dict[str, set[tuple[int, str]]] = {"Character devices:": _majors(character),
                                                 "Block devices:": _majors(block)}
    path, current = root / "proc/devices", None
    for line in path.read_text().splitlines() if path.exists() else []:
        if line in sections:
            current = line
        elif current:
            sections[current] |= _majors(line)
    write(root, "/proc/devices", "\n".join(
        title + "\n" + "".join(f"{major:3d} {name}\n" for major, name in sorted(lines))
        for title, lines in sections.items()))


def _majors(text: str) -> set[tuple[int, str]]:
    return {(int(major), name) for major, name in (line.split(None, 1) for line in text.splitlines()
                                                   if line.strip())}


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def symlink(root: Path, path: str, target: str) -> None:
    """A symlink at host path ``path``; one already there to ``target`` is fine (builders
    combine into one root)."""
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and os.readlink(link) == target):
        link.symlink_to(target)


def unix_socket(root: Path, path: str) -> None:
    """A real unix socket file, as a daemon leaves it (bound, then the fixture lets go)."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as sock:
        # bind() takes at most 107 bytes of path: bind from inside the directory
        cwd = os.getcwd()
        os.chdir(target.parent)
        try:
            sock.bind(target.name)
        finally:
            os.chdir(cwd)


@functools.lru_cache(maxsize=None)
def _executable() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "main.c", Path(tmp) / "main"
        source.write_text("int main(void) { return 0; }\n")
        subprocess.run(["gcc", "-o", str(out), str(source)], check=True, capture_output=True)
        return out.read_bytes()


def install_executable(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_executable())
    target.chmod(0o755)


# --- an NVIDIA node ---------------------------------------------------------------------------

NV_LIBDIR = "/usr/lib/x86_64-linux-gnu"
NV_LIBDIR32 = "/usr/lib/i386-linux-gnu"
STALE_LIBDIR = "/usr/lib64"  # an old driver's leftovers, still in ld.so.conf
STALE_DRIVER = "535.104.05"

# DGX A100: PCI bus of each GPU and its NUMA node (NPS4 on two EPYC sockets)
A100_BUSES = ("0000:07:00.0", "0000:0f:00.0", "0000:47:00.0", "0000:4e:00.0",
              "0000:87:00.0", "0000:90:00.0", "0000:b7:00.0", "0000:bd:00.0")
A100_NUMA = (3, 3, 1, 1, 7, 7, 5, 5)

# MIG layout of the first and second MIG GPU: GPU instance id -> compute instance ids
# (A100 profile placement: 3g.40gb in GIs 1-2, 2g.20gb in GIs 3-6)
MIG_LAYOUTS = ({1: (0, 1), 2: (0,)}, {3: (0,), 4: (0,), 5: (0,)})

# nv-caps.c: minors are handed out in table order: nvlink "fabric-mgmt" 0, mig "config" 1 and
# "monitor" 2, then 32 GPUs x 15 GPU instances x (access + 8 compute instances)
MIG_GPUS, MIG_GIS, MIG_CIS = 32, 15, 8
MIG_FIRST = 3


def mig_minor(gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """The nvidia-caps minor the driver gives gpuN/giX/access (ci None) or .../ciY/access."""
    return (MIG_FIRST + gpu_minor * MIG_GIS * (1 + MIG_CIS) + gi * (1 + MIG_CIS)
            + (0 if ci is None else 1 + ci))


def nvidia_bus_ids(gpus: int) -> tuple[str, ...]:
    return tuple(A100_BUSES[i] if i < len(A100_BUSES) else f"0001:{i:02x}:00.0" for i in range(gpus))


def nvidia_minor(index: int, gpus: int) -> int:
    """Device minors are the probe order, which need not be nvidia-smi's PCI order; the fixture
    swaps neighbours (index 0 is /dev/nvidia1) so that tests tell the two apart."""
    return index ^ 1 if index ^ 1 < gpus else index


def nvidia_uuid(bus: str) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"hpcbind-fixture/{bus}"))


def nvidia_libraries(driver: str) -> dict[str, SharedLib]:
    """File name -> library: what NVIDIA's 550 installer puts in the multiarch directory,
    next to GLVND's and a distribution library."""
    own = {
        "libnvidia-nvvm70.so.4": SharedLib("libnvidia-nvvm70.so.4"),
        "libnvidia-egl-wayland.so.1.1.13": SharedLib("libnvidia-egl-wayland.so.1"),
        "libnvidia-egl-gbm.so.1.1.1": SharedLib("libnvidia-egl-gbm.so.1"),
        # GLVND, the vendor-neutral dispatch the image owns
        "libGL.so.1.7.0": SharedLib("libGL.so.1"),
        "libEGL.so.1.1.0": SharedLib("libEGL.so.1"),
        "libz.so.1.2.13": SharedLib("libz.so.1"),
    }
    by_soname = {
        "libcuda": ("libcuda.so.1", ("GLIBC_2.2.5", "GLIBC_2.14", "GLIBC_2.17")),
        "libcudadebugger": ("libcudadebugger.so.1", ()),
        "libnvidia-ptxjitcompiler": ("libnvidia-ptxjitcompiler.so.1", ()),
        "libnvidia-nvvm": ("libnvidia-nvvm.so.4", ()),
        "libnvidia-gpucomp": (f"libnvidia-gpucomp.so.{driver}", ()),
        "libnvidia-allocator": ("libnvidia-allocator.so.1", ()),
        "libnvidia-pkcs11-openssl3": (f"libnvidia-pkcs11-openssl3.so.{driver}", ("GLIBC_2.34",)),
        "libnvidia-opencl": ("libnvidia-opencl.so.1", ()),
        "libnvidia-ml": ("libnvidia-ml.so.1", ("GLIBC_2.2.5", "GLIBC_2.17")),
        "libnvidia-cfg": ("libnvidia-cfg.so.1", ()),
        "libnvidia-nscq": ("libnvidia-nscq.so.2", ("GLIBCXX_3.4.29",)),
        "libnvidia-sandboxutils": ("libnvidia-sandboxutils.so.1", ()),
        "libnvcuvid": ("libnvcuvid.so.1", ()),
        "libnvidia-encode": ("libnvidia-encode.so.1", ()),
        "libnvidia-opticalflow": ("libnvidia-opticalflow.so.1", ()),
        "libGLX_nvidia": ("libGLX_nvidia.so.0", ()),
        "libEGL_nvidia": ("libEGL_nvidia.so.0", ()),
        "libnvidia-eglcore": (f"libnvidia-eglcore.so.{driver}", ()),
        "libnvidia-glcore": (f"libnvidia-glcore.so.{driver}", ()),
        "libnvoptix": ("libnvoptix.so.1", ()),
        "libnvidia-ngx": ("libnvidia-ngx.so.1", ()),
        # in no list of any peer: only the driver-version rule finds it
        "libnvidia-vksc-core": (f"libnvidia-vksc-core.so.{driver}", ()),
    }
    versioned = {f"{base}.so.{driver}": SharedLib(soname, needs or ("GLIBC_2.2.5",))
                 for base, (soname, needs) in by_soname.items()}
    return {**versioned, **own}


def build_nvidia_node(root: Path, gpus: int = 8, mig: tuple[int, ...] = (0, 1),
                      driver: str = "550.54.15") -> None:
    """An A100 node: ``gpus`` GPUs (GPU indices in ``mig`` with MIG instances), driver
    ``driver``'s procfs, sysfs, libraries (indexed by the real ldconfig), tools, firmware,
    graphics configuration, daemons' sockets and the MPS pipe directory."""
    buses = nvidia_bus_ids(gpus)
    write(root, "/proc/driver/nvidia/version",
          f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  Tue Mar  5 22:23:56 UTC 2024\n"
          "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14) \n")
    write(root, "/sys/module/nvidia/version", f"{driver}\n")
    add_devices(root, NVIDIA_CHAR_DEVICES, "509 nvidia-uvm")
    for index, bus in enumerate(buses):
        _nvidia_gpu(root, index, bus, nvidia_minor(index, gpus), driver)
    _mig(root, [nvidia_minor(i, gpus) for i in mig])
    libraries = nvidia_libraries(driver)
    compile_all([*libraries.values(), SharedLib("libnvidia-ml.so.1"),
                 SharedLib("libnvidia-fatbinaryloader.so.390.157"),
                 SharedLib("libcuda.so.1", bits=32), SharedLib("libnvidia-ml.so.1", bits=32)])
    for name, lib in libraries.items():
        install_lib(root, f"{NV_LIBDIR}/{name}", lib)
    for name in ("libcuda", "libnvidia-ml"):
        install_lib(root, f"{NV_LIBDIR32}/{name}.so.{driver}", SharedLib(f"{name}.so.1", bits=32))
    install_lib(root, f"{STALE_LIBDIR}/libnvidia-ml.so.{STALE_DRIVER}", SharedLib("libnvidia-ml.so.1"))
    install_lib(root, f"{STALE_LIBDIR}/libnvidia-fatbinaryloader.so.390.157",
                SharedLib("libnvidia-fatbinaryloader.so.390.157"))
    run_ldconfig(root, (NV_LIBDIR, NV_LIBDIR32, STALE_LIBDIR), name="nvidia")
    for tool in ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
                 "nvidia-cuda-mps-server"):
        install_executable(root, f"/usr/bin/{tool}")
    for name, text in GRAPHICS_CONFIG.items():
        write(root, name, text)
    for name in ("gsp_ga10x.bin", "gsp_tu10x.bin"):
        (root / f"lib/firmware/nvidia/{driver}").mkdir(parents=True, exist_ok=True)
        (root / f"lib/firmware/nvidia/{driver}/{name}").write_bytes(b"\x7fGSP" + name.encode())
    write(root, f"/lib/firmware/nvidia/{STALE_DRIVER}/gsp_ga10x.bin", "old")
    symlink(root, "/var/run", "/run")  # absolute, as on Debian: must resolve inside the root
    unix_socket(root, "/run/nvidia-persistenced/socket")
    (root / "tmp/nvidia-mps").mkdir(parents=True, exist_ok=True)
    if not (root / "tmp/nvidia-mps/control").exists():
        os.mkfifo(root / "tmp/nvidia-mps/control")


def _nvidia_gpu(root: Path, index: int, bus: str, minor: int, driver: str) -> None:
    # nv-procfs.c nv_procfs_read_gpu_info(), driver 550
    write(root, f"/proc/driver/nvidia/gpus/{bus}/information",
          "Model: \t\t NVIDIA A100-SXM4-80GB\n"
          "IRQ:   \t\t 0\n"
          f"GPU UUID: \t {nvidia_uuid(bus)}\n"
          "Video BIOS: \t 92.00.45.00.03\n"
          "Bus Type: \t PCIe\n"
          "DMA Size: \t 47 bits\n"
          "DMA Mask: \t 0x7fffffffffff\n"
          f"Bus Location: \t {bus}\n"
          f"Device Minor: \t {minor}\n"
          f"GPU Firmware: \t {driver}\n"
          "GPU Excluded:\t No\n")
    numa = A100_NUMA[index] if index < len(A100_NUMA) else index % 8
    # sysfs: /sys/bus/pci/devices/<bus> links to the device under its root port
    device = f"/sys/devices/pci{bus[:4]}:{bus[5:7]}/{bus}"
    for name, value in (("vendor", "0x10de"), ("device", "0x20b2"), ("class", "0x030200"),
                        ("numa_node", str(numa))):
        write(root, f"{device}/{name}", f"{value}\n")
    symlink(root, f"/sys/bus/pci/devices/{bus}", f"../../..{device[4:]}")


def _mig(root: Path, gpu_minors: list[int]) -> None:
    lines = ["config 1", "monitor 2"]
    for gpu in range(MIG_GPUS):
        for gi in range(MIG_GIS):
            lines.append(f"gpu{gpu}/gi{gi}/access {mig_minor(gpu, gi)}")
            lines += [f"gpu{gpu}/gi{gi}/ci{ci}/access {mig_minor(gpu, gi, ci)}" for ci in range(MIG_CIS)]
    write(root, "/proc/driver/nvidia-caps/mig-minors", "\n".join(lines) + "\n")
    write(root, "/proc/driver/nvidia-caps/nvlink-minors", "fabric-mgmt 0\n")
    caps = "/proc/driver/nvidia/capabilities"
    write(root, f"{caps}/mig/config", _capability(1, 0o400))
    write(root, f"{caps}/mig/monitor", _capability(2, 0o444))
    for gpu_minor, layout in zip(gpu_minors, MIG_LAYOUTS):
        for gi, cis in layout.items():
            write(root, f"{caps}/gpu{gpu_minor}/mig/gi{gi}/access",
                  _capability(mig_minor(gpu_minor, gi), 0o444))
            for ci in cis:
                write(root, f"{caps}/gpu{gpu_minor}/mig/gi{gi}/ci{ci}/access",
                      _capability(mig_minor(gpu_minor, gi, ci), 0o444))


def _capability(minor: int, mode: int) -> str:
    # nv-caps.c nv_cap_procfs_read()
    return f"DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"


# /proc/devices lines of a 550 driver host: nvidia, nvidiactl and nvidia-modeset share the
# fixed major 195; nvidia-uvm and nvidia-caps are dynamic. The block section gets a name clash
# on purpose: only the character section counts.
NVIDIA_CHAR_DEVICES = """  1 mem
  4 /dev/vc/0
  4 tty
  5 /dev/tty
 10 misc
195 nvidia
195 nvidia-modeset
195 nvidiactl
226 drm
234 nvidia-caps-imex-channels
236 nvidia-caps
237 nvidia-nvswitch
238 nvidia-nvlink
508 nvidia-uvm"""

GRAPHICS_CONFIG = {
    "/usr/share/glvnd/egl_vendor.d/10_nvidia.json":
        '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}\n',
    "/usr/share/vulkan/icd.d/nvidia_icd.json":
        '{"file_format_version": "1.0.0", "ICD": {"library_path": "libGLX_nvidia.so.0", '
        '"api_version": "1.3.277"}}\n',
    "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json":
        '{"file_format_version": "1.0.0", "ICD": {"library_path": "libnvidia-egl-gbm.so.1"}}\n',
    "/etc/vulkan/implicit_layer.d/nvidia_layers.json":
        '{"file_format_version": "1.0.0", "layer": {"name": "VK_LAYER_NV_optimus"}}\n',
}


# --- an AMD node ------------------------------------------------------------------------------

ROCM_VERSION = "6.0.2"
ROCM_BUILD = "115"
AMDGPU_VERSION = "6.3.6"  # the amdgpu-dkms module of ROCm 6.0.2
KFD_MAJOR = 235
RENDER_GID, VIDEO_GID = 109, 44

# MI250X GCDs as on an HPE Cray EX node, and their NUMA nodes
MI250_BUSES = ("0000:c1:00.0", "0000:c6:00.0", "0000:c9:00.0", "0000:ce:00.0",
               "0000:d1:00.0", "0000:d6:00.0", "0000:d9:00.0", "0000:de:00.0")
MI250_NUMA = (3, 3, 1, 1, 0, 0, 2, 2)
BMC_BUS = "0000:02:00.0"  # the ASPEED BMC's VGA: DRM card0, with no render node


def amd_kfd_order(gpus: int) -> tuple[int, ...]:
    """KFD topology nodes are numbered in amdgpu's probe order, which ROCr's indices follow
    and which need not be PCI order: the fixture probes the GPUs in pairs, second pair first."""
    order = [i ^ 2 if i ^ 2 < gpus else i for i in range(gpus)]
    return tuple(order)


def amd_unique_id(bus: str) -> int:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"hpcbind-fixture/amd/{bus}").int >> 64


def amd_uuid(bus: str) -> str:
    """As rocminfo and ROCR_VISIBLE_DEVICES spell it: "GPU-" and the unique_id in hex."""
    return f"GPU-{amd_unique_id(bus):016x}"


def build_amd_node(root: Path, gpus: int = 4) -> None:
    """An MI250X node: ``gpus`` GCDs behind amdgpu (DRM card/render nodes, KFD topology), a BMC
    VGA taking card0, ROCm 6.0.2 in /opt/rocm with its libraries in the ld.so.cache, and the
    render and video groups."""
    buses = MI250_BUSES[:gpus]
    write(root, "/sys/module/amdgpu/version", f"{AMDGPU_VERSION}\n")
    add_devices(root, f"  1 mem\n  4 tty\n 10 misc\n226 drm\n{KFD_MAJOR} kfd", "  8 sd")
    write(root, "/etc/group", f"root:x:0:\nvideo:x:{VIDEO_GID}:alice\nrender:x:{RENDER_GID}:alice,bob\n"
                              "users:x:100:\n")
    _drm_device(root, BMC_BUS, card=0, render=None, vendor="0x1a03", numa=0)
    for i, bus in enumerate(buses):
        _drm_device(root, bus, card=i + 1, render=128 + i, vendor="0x1002", numa=MI250_NUMA[i])
    _kfd_node(root, 0, 0, _CPU_PROPERTIES)
    for node, index in enumerate(amd_kfd_order(gpus), start=1):
        bus = buses[index]
        _kfd_node(root, node, 40000 + 1111 * node, _gpu_properties(bus, 128 + index))
    symlink(root, "/opt/rocm", f"rocm-{ROCM_VERSION}")
    write(root, f"/opt/rocm-{ROCM_VERSION}/.info/version", f"{ROCM_VERSION}-{ROCM_BUILD}\n")
    libraries = {
        f"{NV_LIBDIR}/libdrm.so.2.4.0": SharedLib("libdrm.so.2"),
        f"{NV_LIBDIR}/libdrm_amdgpu.so.1.0.0": SharedLib("libdrm_amdgpu.so.1"),
        f"{NV_LIBDIR}/libnuma.so.1.0.0": SharedLib("libnuma.so.1"),
        f"{NV_LIBDIR}/libOpenCL.so.1.0.0": SharedLib("libOpenCL.so.1"),
        f"/opt/rocm-{ROCM_VERSION}/lib/libamdocl64.so": SharedLib("libamdocl64.so", ("GLIBC_2.34",)),
        f"/opt/rocm-{ROCM_VERSION}/lib/libhsa-runtime64.so.1.12.60002": SharedLib("libhsa-runtime64.so.1"),
        f"/opt/rocm-{ROCM_VERSION}/lib/librocblas.so.4.0.60002": SharedLib("librocblas.so.4"),
        f"/opt/rocm-{ROCM_VERSION}/lib/libamd_comgr.so.2.6.60002": SharedLib("libamd_comgr.so.2"),
    }
    compile_all(libraries.values())
    for path, lib in libraries.items():
        install_lib(root, path, lib)
    run_ldconfig(root, (NV_LIBDIR, "/opt/rocm/lib"), name="rocm")
    install_executable(root, f"/opt/rocm-{ROCM_VERSION}/bin/rocminfo")
    write(root, f"/opt/rocm-{ROCM_VERSION}/bin/rocm-smi",
          "#!/usr/bin/env python3\nimport rocm_smi\n").chmod(0o755)


def _drm_device(root: Path, bus: str, card: int, render: int | None, vendor: str, numa: int) -> None:
    # the kernel's layout: the PCI device's drm/ directory holds its DRM minors; the class
    # links point at them, and each minor's "device" links back to the PCI device
    device = f"/sys/devices/pci{bus[:4]}:{bus[5:7]}/{bus[:8]}01.1/{bus}"
    for name, value in (("vendor", vendor), ("class", "0x038000" if vendor == "0x1002" else "0x030000"),
                        ("numa_node", str(numa))):
        write(root, f"{device}/{name}", f"{value}\n")
    symlink(root, f"/sys/bus/pci/devices/{bus}", f"../../..{device[4:]}")
    for name, minor in ((f"card{card}", card), (f"renderD{render}", render)):
        if minor is None:
            continue
        write(root, f"{device}/drm/{name}/dev", f"226:{minor}\n")
        write(root, f"{device}/drm/{name}/uevent", f"MAJOR=226\nMINOR={minor}\nDEVNAME=dri/{name}\n")
        symlink(root, f"{device}/drm/{name}/device", "../../../" + bus)
        symlink(root, f"/sys/class/drm/{name}", f"../..{device[4:]}/drm/{name}")


def _kfd_node(root: Path, node: int, gpu_id: int, properties: str) -> None:
    base = f"/sys/devices/virtual/kfd/kfd/topology/nodes/{node}"
    write(root, f"{base}/gpu_id", f"{gpu_id}\n")
    write(root, f"{base}/name", "gfx90a\n" if gpu_id else "\n")
    write(root, f"{base}/properties", properties)
    if node == 0:
        symlink(root, "/sys/class/kfd/kfd", "../../devices/virtual/kfd/kfd")


def _gpu_properties(bus: str, render_minor: int) -> str:
    # kfd_topology.c node_show(): one "name value" pair a line
    domain, rest = bus.split(":", 1)
    pci_bus, devfn = rest.split(":")
    device, function = devfn.split(".")
    location = int(pci_bus, 16) << 8 | int(device, 16) << 3 | int(function)
    return (f"cpu_cores_count 0\nsimd_count 440\nmem_banks_count 1\ncaches_count 253\n"
            f"io_links_count 1\np2p_links_count 7\ncpu_core_id_base 0\nsimd_id_base 2147487744\n"
            f"max_waves_per_simd 8\nlds_size_in_kb 64\ngds_size_in_kb 0\nnum_gws 64\n"
            f"wave_front_size 64\narray_count 8\nsimd_arrays_per_engine 1\ncu_per_simd_array 16\n"
            f"simd_per_cu 4\nmax_slots_scratch_cu 32\ngfx_target_version 90010\nvendor_id 4098\n"
            f"device_id 29704\nlocation_id {location}\ndomain {int(domain, 16)}\n"
            f"drm_render_minor {render_minor}\nhive_id 15386436187470418962\nnum_sdma_engines 2\n"
            f"num_sdma_xgmi_engines 6\nnum_sdma_queues_per_engine 8\nnum_cp_queues 24\n"
            f"max_engine_clk_fcompute 1700\nlocal_mem_size 0\nfw_version 78\ncapability 746586752\n"
            f"debug_prop 1495\nsdma_fw_version 8\nunique_id {amd_unique_id(bus)}\nnum_xcc 1\n"
            f"max_engine_clk_ccompute 2250\n")


_CPU_PROPERTIES = ("cpu_cores_count 64\nsimd_count 0\nmem_banks_count 1\ncaches_count 0\n"
                   "io_links_count 4\np2p_links_count 0\ncpu_core_id_base 0\nsimd_id_base 0\n"
                   "gfx_target_version 0\nvendor_id 0\ndevice_id 0\nlocation_id 0\ndomain 0\n"
                   "drm_render_minor 0\nhive_id 0\nunique_id 0\nnum_xcc 0\n")
