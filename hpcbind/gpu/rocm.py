"""``--rocm``: the AMD GPUs and ROCm driver interface a container needs, read from sysfs.

GPUs are the KFD topology's nodes with a ``gpu_id`` (``/sys/class/kfd/kfd/topology/nodes/N/
properties``), in node order: the order ROCr numbers them in, which ROCR_VISIBLE_DEVICES
uses. Each is matched to its DRM nodes by PCI bus id (``/sys/class/drm/*/device``), not by
assuming renderD(128+N) as Sarus's hook does: a BMC's VGA or a second vendor shifts the card
numbers. Device numbers come from the ``dev`` files and ``/proc/devices``, never from /dev.

Where it goes beyond the peers (reference/gpu-passthrough.md): only the selected GPUs' nodes
(Apptainer binds all of /dev/dri), selection by index or UUID with the container's
ROCR_VISIBLE_DEVICES renumbered, the render/video gids recorded, and the host's ROCm runtime
libraries (rocBLAS, HIP, HSA, MIOpen...) considered but not bound: a host copy breaks the
image's own ROCm (apptainer#1621; Apptainer dropped them in 1.4.0, SingularityCE still binds
them). Only the kernel-interface libraries of Apptainer's rocmliblist are bound.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcbind.host.elf import ElfInfo, elf_info
from hpcbind.host.ldcache import LdEntry, native_abi, read_ldcache
from hpcbind.hostroot import HostRoot
from hpcbind.gpu.common import container_indices
from hpcbind.host.conventions import DEFAULT_PATH
from hpcbind.host.libbind import binary_mount, find_binary, library_base, library_entries
from hpcbind.host.sysfs import char_majors, normal_bus_id, parse_int, pci_numa_node
from hpcbind.plan import (
    CONTAINER_BINDIR,
    CONTAINER_LIBDIR,
    Check,
    Device,
    EnvAction,
    EnvOp,
    Fact,
    Mount,
    PlanPart,
    Rejected,
    Status,
)

PROVIDER = "gpu.rocm"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
ROCM_INFO = "/opt/rocm/.info/version"
ROCM_BIN = "/opt/rocm/bin"

# Apptainer's etc/rocmliblist.conf (v1.4+): the driver-interface libraries. libOpenCL is left
# out: it is the vendor-neutral ICD loader, which the image owns as it owns GLVND.
INTERFACE_LIBRARIES = (
    "libCXLActivityLogger", "libhc_am", "libmcwamp", "libmcwamp_cpu", "libmcwamp_hsa", "libdrm",
    "libdrm_amdgpu", "libnuma", "libpci", "librocr_debug_agent64", "libamdcomgr64",
    "libamdocl64", "libcltrace",
)
# SingularityCE's rocmliblist.conf adds the ROCm runtime and math libraries; they must come
# from the image (see the module docstring), so they are reported, not bound.
RUNTIME_LIBRARIES = (
    "libamd_comgr", "libcomgr", "libhipblas", "libhip_hcc", "libhiprand", "libhsakmt",
    "libhsa-runtime64", "libmiopengemm", "libMIOpen", "librccl", "librocblas", "librocfft",
    "librocfft-device", "librocrand", "libamdhip64",
)
ICD_LOADERS = ("libOpenCL",)
BINARIES = ("rocm-smi", "rocminfo", "amd-smi")
GROUPS = ("render", "video")

RUNTIME_REASON = ("ROCm runtime library: the image's own ROCm must provide it (a host copy "
                  "breaks the image's rocBLAS/MIOpen, apptainer#1621)")
ICD_REASON = "vendor-neutral OpenCL ICD loader: the image owns it"

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class DrmNode:
    path: str  # "/dev/dri/renderD128"
    major: int
    minor: int


@dataclass(frozen=True, slots=True)
class AmdGpu:
    index: int  # ROCr's: position among the KFD GPU nodes
    node: int  # KFD topology node number
    gpu_id: int
    bus_id: str
    uuid: str  # "GPU-<unique_id in hex>", as rocminfo prints it
    gfx_target: str  # "gfx90a"
    numa_node: int | None
    card: DrmNode | None
    render: DrmNode | None

    @property
    def fact(self) -> str:
        def name(node: DrmNode | None) -> str:
            return posixpath.basename(node.path) if node else "?"

        numa = "?" if self.numa_node is None else self.numa_node
        return (f"index={self.index} node={self.node} gpu_id={self.gpu_id} bus={self.bus_id} "
                f"uuid={self.uuid or '?'} {self.gfx_target} numa={numa} "
                f"card={name(self.card)} render={name(self.render)}")


def parse_properties(text: str) -> dict[str, str]:
    """``name value`` lines of a KFD topology properties file."""
    return dict(line.split(None, 1) for line in text.splitlines() if len(line.split(None, 1)) == 2)


def read_gpus(host: HostRoot) -> tuple[AmdGpu, ...]:
    """The GPUs of the KFD topology, in node order, with their DRM nodes."""
    drm = drm_nodes(host)
    gpus = []
    nodes = sorted((n for n in host.listdir(KFD_NODES) if n.isdigit()), key=int)
    for node in nodes:
        gpu_id = parse_int(host.read_value(f"{KFD_NODES}/{node}/gpu_id"))
        if not gpu_id:
            continue  # a CPU node
        props = parse_properties(host.read_text(f"{KFD_NODES}/{node}/properties") or "")
        bus = _bus_of(props)
        unique = parse_int(props.get("unique_id"))
        nodes_of_bus = drm.get(bus, {})
        gpus.append(AmdGpu(
            index=len(gpus), node=int(node), gpu_id=gpu_id, bus_id=bus,
            uuid=f"GPU-{unique:016x}" if unique else "",
            gfx_target=_gfx(props.get("gfx_target_version")),
            numa_node=pci_numa_node(host, bus),
            card=nodes_of_bus.get("card"), render=nodes_of_bus.get("render"),
        ))
    return tuple(gpus)


def _bus_of(props: Mapping[str, str]) -> str:
    # location_id is the PCI bus/devfn word: bus << 8 | device << 3 | function
    location, domain = parse_int(props.get("location_id")) or 0, parse_int(props.get("domain")) or 0
    return f"{domain:04x}:{location >> 8:02x}:{(location >> 3) & 0x1f:02x}.{location & 7:x}"


def _gfx(version: str | None) -> str:
    # gfx_target_version is major*10000 + minor*100 + stepping, stepping in hex in the name
    number = parse_int(version) or 0
    return f"gfx{number // 10000}{number // 100 % 100:x}{number % 100:x}" if number else "?"


def drm_nodes(host: HostRoot) -> dict[str, dict[str, DrmNode]]:
    """PCI bus id -> {"card": ..., "render": ...} from /sys/class/drm."""
    found: dict[str, dict[str, DrmNode]] = {}
    for name in host.listdir("/sys/class/drm"):
        kind = "card" if re.fullmatch(r"card\d+", name) else "render" if re.fullmatch(r"renderD\d+", name) else None
        bus = normal_bus_id(posixpath.basename(host.resolve(f"/sys/class/drm/{name}/device")))
        major, _, minor = (host.read_value(f"/sys/class/drm/{name}/dev") or "").partition(":")
        if kind and bus and major.isdigit() and minor.isdigit():
            found.setdefault(bus, {})[kind] = DrmNode(f"/dev/dri/{name}", int(major), int(minor))
    return found


# --- selection ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    gpus: tuple[AmdGpu, ...]  # in request order
    why_not: str  # "ROCR_VISIBLE_DEVICES=0,1", for the rejected GPUs
    restricted: bool
    errors: tuple[str, ...] = ()


def select(gpus: tuple[AmdGpu, ...], env: Mapping[str, str]) -> Selection:
    """ROCR_VISIBLE_DEVICES picks among the host's GPUs, then HIP_VISIBLE_DEVICES among those
    (as ROCr and HIP apply them), each by index or UUID."""
    pool, used, errors = gpus, [], []
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        if name not in env:
            continue
        used.append(f"{name}={env[name]}")
        picked = []
        for token in (t.strip() for t in env[name].split(",") if t.strip()):
            found = _resolve(token, pool)
            if isinstance(found, str):
                errors.append(f"{name}={env[name]}: {found}")
            else:
                picked.append(found)
        pool = tuple(dict.fromkeys(picked))
    return Selection(pool, " and ".join(used), bool(used), tuple(errors))


def _resolve(token: str, pool: Sequence[AmdGpu]) -> AmdGpu | str:
    if token.isdigit():
        return pool[int(token)] if int(token) < len(pool) else f"no GPU {token} among {len(pool)}"
    prefix = token.lower() if token.lower().startswith("gpu-") else f"gpu-{token.lower()}"
    match = [g for g in pool if g.uuid.lower().startswith(prefix)]
    if len(match) == 1:
        return match[0]
    return f"{token} matches {len(match)} GPU UUIDs" if match else f"{token} is not an index or UUID of a GPU"


# --- the plan -------------------------------------------------------------------------------


def discover(host: HostRoot, env: Mapping[str, str]) -> PlanPart:
    """The ``gpu.rocm`` part of a plan for this host and environment."""
    gpus = read_gpus(host)
    if not gpus:
        return PlanPart(checks=[Check(
            "amdgpu-driver", Status.WARN, f"no AMD GPU found (no GPU node in {KFD_NODES})",
            PROVIDER, "run on an AMD GPU node, or load the amdgpu kernel module")])
    part = PlanPart(facts=[Fact(PROVIDER, "gpu", gpu.fact) for gpu in gpus])
    driver = host.read_value("/sys/module/amdgpu/version") or "in-tree (no /sys/module/amdgpu/version)"
    part.facts.append(Fact(PROVIDER, "amdgpu-version", driver))
    rocm = host_rocm_version(host)
    if rocm:
        part.facts.append(Fact(PROVIDER, "rocm-version", rocm))
    part.checks.append(Check("amdgpu-driver", Status.OK, f"amdgpu {driver}, {len(gpus)} GPUs", PROVIDER))
    selection = select(gpus, env)
    entries = read_ldcache(host)
    native = native_abi(entries)
    for section in (_devices(host, gpus, selection), group_checks(host), _libraries(host, entries, native),
                    _binaries(host, env, native), _environment(selection, env)):
        part.extend(section)
    return part


def _devices(host: HostRoot, gpus: tuple[AmdGpu, ...], selection: Selection) -> PlanPart:
    part = PlanPart()
    kfd = char_majors(host).get("kfd")
    if kfd is None:
        part.checks.append(Check("amdgpu-kfd", Status.FAIL,
                                 "no kfd in /proc/devices: ROCm cannot start without /dev/kfd",
                                 PROVIDER, "ask the administrator to load amdgpu with KFD support"))
    else:
        part.devices.append(Device("/dev/kfd", "c", kfd, 0, PROVIDER, "kfd", "ROCm compute interface"))
    chosen = set(selection.gpus)
    for gpu in gpus:
        nodes = [n for n in (gpu.card, gpu.render) if n]
        if gpu not in chosen:
            part.rejected.extend(Rejected(n.path, PROVIDER, f"GPU {gpu.index} not in {selection.why_not}")
                                 for n in nodes)
            continue
        if gpu.render is None:
            part.checks.append(Check("amdgpu-render", Status.FAIL,
                                     f"GPU {gpu.index} ({gpu.bus_id}) has no render node in /sys/class/drm",
                                     PROVIDER, "check that amdgpu drives it"))
        part.devices.extend(
            Device(n.path, "c", n.major, n.minor, PROVIDER, "selected-gpu",
                   f"GPU {gpu.index} ({gpu.bus_id}, {gpu.uuid})") for n in nodes)
    part.checks.extend(Check("rocr-visible-devices", Status.FAIL, error, PROVIDER,
                             "name GPUs by index or UUID (rocminfo)") for error in selection.errors)
    return part


def group_checks(host: HostRoot) -> PlanPart:
    """The render and video gids (additionalGids); on the live host, whether the user has them."""
    part = PlanPart()
    gids = group_ids(host.read_text("/etc/group") or "")
    mine = set(os.getgroups()) | {os.getgid()} if host.live else None
    for name in GROUPS:
        if name not in gids:
            continue
        part.facts.append(Fact(PROVIDER, "group", f"{name}={gids[name]}"))
        if mine is not None and gids[name] not in mine:
            part.checks.append(Check(
                f"group-{name}", Status.WARN,
                f"you are not in group {name} (gid {gids[name]}): /dev/kfd and the render nodes "
                f"are usually 0660 root:{name}", PROVIDER,
                f"ask the administrator to add you to {name}"))
    return part


def group_ids(text: str) -> dict[str, int]:
    """name -> gid from /etc/group lines ``name:x:gid:members``."""
    gids = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            gids.setdefault(fields[0], int(fields[2]))
    return gids


def _libraries(host: HostRoot, entries: tuple[LdEntry, ...], native: tuple[str, str] | None) -> PlanPart:
    part = PlanPart()
    bound: dict[str, str] = {}  # soname -> source
    for entry in entries:
        base = library_base(entry.soname)
        if entry.hwcap or base not in INTERFACE_LIBRARIES + RUNTIME_LIBRARIES + ICD_LOADERS:
            continue
        realpath = host.resolve(entry.path)
        verdict = _judge(host, base, realpath, entry.soname, bound, native)
        if isinstance(verdict, str):
            part.rejected.append(Rejected(realpath, PROVIDER, verdict))
            continue
        bound[entry.soname] = realpath
        part.extend(library_entries(realpath, CONTAINER_LIBDIR, verdict, verdict.soname or entry.soname,
                                    PROVIDER, "rocmliblist",
                                    "ROCm kernel-interface library (Apptainer's rocmliblist)", ""))
    if bound:
        part.env.append(EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, CONTAINER_LIBDIR, PROVIDER,
                              "host ROCm interface libraries, after the image's own"))
    return part


def _judge(host: HostRoot, base: str, realpath: str, soname: str, bound: Mapping[str, str],
           native: tuple[str, str] | None) -> ElfInfo | str:
    """The library's ELF facts when it is bound, else why not."""
    if base in RUNTIME_LIBRARIES:
        return RUNTIME_REASON
    if base in ICD_LOADERS:
        return ICD_REASON
    if soname in bound:
        return f"{soname} is already bound from {bound[soname]} (first in ld.so.cache order)"
    info = elf_info(host.real(realpath))
    if info is None:
        return "not a readable ELF file"
    if (info.elf_class, info.machine) != native:
        return f"{info.elf_class} {info.machine} is not the host's native ABI"
    return info


def _binaries(host: HostRoot, env: Mapping[str, str], native: tuple[str, str] | None) -> PlanPart:
    part = PlanPart()
    search = {"PATH": f"{env.get('PATH', DEFAULT_PATH)}:{ROCM_BIN}"}
    for name in BINARIES:
        path = find_binary(host, name, search)
        if path is not None:
            entry = binary_mount(host, path, name, PROVIDER, "rocm-tool", "optional ROCm tool of the host",
                                 native)
            (part.mounts if isinstance(entry, Mount) else part.rejected).append(entry)
    if part.mounts:
        part.env.append(EnvOp("PATH", EnvAction.APPEND, CONTAINER_BINDIR, PROVIDER,
                              "host ROCm tools, after the image's own"))
    return part


def _environment(selection: Selection, env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    if not selection.restricted:
        return part
    indices = container_indices([g.index for g in selection.gpus])
    part.env.append(EnvOp("ROCR_VISIBLE_DEVICES", EnvAction.SET, ",".join(map(str, indices)), PROVIDER,
                          f"renumbered from {selection.why_not}: the container sees only its GPUs, "
                          f"counted from 0"))
    if "HIP_VISIBLE_DEVICES" in env:
        part.env.append(EnvOp("HIP_VISIBLE_DEVICES", EnvAction.UNSET, "", PROVIDER,
                              "folded into ROCR_VISIBLE_DEVICES"))
    return part


# --- ROCm versions ----------------------------------------------------------------------------


def host_rocm_version(host: HostRoot) -> str:
    """The host's ROCm release from /opt/rocm/.info/version ("6.0.2-115" -> "6.0.2"), or ""."""
    text = host.read_value(ROCM_INFO) or ""
    found = _VERSION.match(text)
    return ".".join(p for p in found.groups() if p is not None) if found else ""


def rocm_version_check(host_rocm: str, image_rocm: str) -> Check:
    """Whether the image's ROCm matches the host's: a differing major.minor is a warning
    (user space and the amdgpu driver are supported within a window, pytorch#117847)."""
    host, image = _VERSION.match(host_rocm), _VERSION.match(image_rocm)
    if not host or not image:
        return Check("rocm-version", Status.WARN,
                     f"cannot compare ROCm versions (host {host_rocm or '?'}, image {image_rocm or '?'})",
                     PROVIDER, "the host's is in /opt/rocm/.info/version, the image's likewise")
    if host.groups()[:2] == image.groups()[:2]:
        return Check("rocm-version", Status.OK, f"host ROCm {host_rocm} and image ROCm {image_rocm} match",
                     PROVIDER)
    return Check("rocm-version", Status.WARN,
                 f"host ROCm {host_rocm} and image ROCm {image_rocm} differ",
                 PROVIDER, "use an image built for the host's ROCm release, or check AMD's "
                           "compatibility matrix for this driver")
