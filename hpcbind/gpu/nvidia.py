"""``--nv``: what an NVIDIA host must lend a container, read from procfs, sysfs and ld.so.cache.

Discovery needs no NVIDIA library and no /dev (captures have none): the driver version comes
from ``/proc/driver/nvidia/version``, the GPUs from ``/proc/driver/nvidia/gpus/<bus>/
information``, device numbers from ``/proc/devices`` and the driver's minors, MIG capability
minors from ``/proc/driver/nvidia-caps/mig-minors``, libraries from ``/etc/ld.so.cache``.

Where it goes beyond the peers (reference/gpu-passthrough.md):

- libraries are the union of libnvidia-container's category lists (plus what every peer's
  list misses: nvvm70, nscq, allocator, pkcs11, gpucomp, sandboxutils, ...) and *every* file
  named ``*.so.<driver version>`` (the toolkit's rule), so a new driver's library is never
  missed (pain point 2); list matches of another driver version are rejected as stale before
  NVML fails with "Driver/library version mismatch" (pain point 7);
- GLVND's vendor-neutral libraries (libGL, libEGL, libGLX, libGLdispatch) are never bound:
  the container owns them, and the host's need a newer glibc (pain point 1);
- soname and dev links are plan entries, so no hook and no ldconfig runs in the container
  (pain point 3);
- only the selected GPUs' nodes are bound, selection by index, UUID, bus id, Slurm's minors
  or MIG instance, with CUDA_VISIBLE_DEVICES renumbered as Sarus does (pain points 5 and 6);
- a missing on-demand node (nvidia-uvm) is a check with the admin's fix (pain point 4).
"""

from __future__ import annotations

import posixpath
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hpcbind.gpu.common import container_indices
from hpcbind.host.elf import ElfInfo, elf_info
from hpcbind.host.libbind import binary_mount, find_binary, library_base, library_entries
from hpcbind.host.sysfs import char_majors, normal_bus_id, parse_int, pci_numa_node
from hpcbind.host.ldcache import LdEntry, native_abi, read_ldcache
from hpcbind.hostroot import HostRoot
from hpcbind.plan import (
    CONTAINER_BINDIR,
    CONTAINER_LIBDIR,
    Check,
    Device,
    EnvAction,
    EnvOp,
    Fact,
    Link,
    Mount,
    Need,
    PlanPart,
    Rejected,
    Status,
)

PROVIDER = "gpu.nvidia"

# 32-bit libraries (compat32) need their own directory: their file names are the 64-bit ones'.
CONTAINER_LIBDIR32 = CONTAINER_LIBDIR + "32"

NV_MAJOR = 195  # NV_MAJOR_DEVICE_NUMBER (nv-chardev-numbers.h): compiled into the driver
NV_CTL_MINOR = 255
NV_MODESET_MINOR = 254

DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"

# --- NVIDIA_DRIVER_CAPABILITIES (libnvidia-container options.h) ---------------------------

DEFAULT_CAPABILITIES = frozenset({"compute", "utility"})
ALL_CAPABILITIES = frozenset({"compat32", "compute", "display", "graphics", "ngx", "utility", "video"})
IMPLIED = {"video": "compute", "display": "graphics"}

# capability -> library base names (the soname up to ".so"). libnvidia-container's nvc_info.c
# lists, plus nvidia-ctk's graphics additions and what no peer lists (sandboxutils, nvvm70,
# tileiras). GLVND's libGL/libEGL/libGLX/libGLdispatch/libOpenGL are deliberately absent.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "utility": ("libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq", "libnvidia-sandboxutils"),
    "compute": (
        "libcuda", "libcudadebugger", "libnvidia-opencl", "libnvidia-gpucomp",
        "libnvidia-ptxjitcompiler", "libnvidia-fatbinaryloader", "libnvidia-allocator",
        "libnvidia-compiler", "libnvidia-pkcs11", "libnvidia-pkcs11-openssl3", "libnvidia-nvvm",
        "libnvidia-nvvm70", "libnvidia-tileiras",
    ),
    "video": ("libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"),
    "graphics": (
        "libnvidia-eglcore", "libnvidia-glcore", "libnvidia-tls", "libnvidia-glsi",
        "libnvidia-fbc", "libnvidia-ifr", "libnvidia-rtcore", "libnvoptix", "libGLX_nvidia",
        "libEGL_nvidia", "libGLESv2_nvidia", "libGLESv1_CM_nvidia", "libnvidia-glvkspirv",
        "libnvidia-cbl", "libnvidia-egl-gbm", "libnvidia-egl-wayland", "libnvidia-egl-wayland2",
        "libnvidia-egl-xcb", "libnvidia-egl-xlib", "libnvidia-vulkan-producer",
        "libnvidia-api",
    ),
    "ngx": ("libnvidia-ngx",),
}
CAPABILITY_OF = {base: cap for cap, bases in LIBRARIES.items() for base in bases}

# Shipped with the driver but versioned on their own (libnvidia-nvvm70.so.4,
# libnvidia-egl-wayland.so.1.1.13): the driver-version test cannot apply to them, which is
# why the suffix rule alone misses nvvm70 (NVIDIA toolkit#1875).
OWN_VERSION = frozenset({
    "libnvidia-nvvm70", "libnvidia-egl-gbm", "libnvidia-egl-wayland", "libnvidia-egl-wayland2",
    "libnvidia-egl-xcb", "libnvidia-egl-xlib",
})

BINARIES: dict[str, tuple[str, ...]] = {
    "utility": ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nv-fabricmanager",
                "nvidia-imex", "nvidia-imex-ctl"),
    "compute": ("nvidia-cuda-mps-control", "nvidia-cuda-mps-server"),
}

# Graphics configuration (Apptainer's nvliblist.conf files plus nvidia-ctk's), under
# /etc or /usr/share; bound at the same path.
CONFIG_FILES = (
    "glvnd/egl_vendor.d/10_nvidia.json",
    "vulkan/icd.d/nvidia_icd.json",
    "vulkan/implicit_layer.d/nvidia_layers.json",
    "egl/egl_external_platform.d/09_nvidia_wayland2.json",
    "egl/egl_external_platform.d/10_nvidia_wayland.json",
    "egl/egl_external_platform.d/15_nvidia_gbm.json",
    "egl/egl_external_platform.d/20_nvidia_xcb.json",
    "egl/egl_external_platform.d/20_nvidia_xlib.json",
    "nvidia/nvoptix.bin",
)
CONFIG_PREFIXES = ("/etc", "/usr/share")

# soname -> development/compat links in the private lib dir (toolkit PR #724, rec. 4)
DEV_LINKS = {
    "libcuda.so.1": ("libcuda.so",),
    "libnvidia-ml.so.1": ("libnvidia-ml.so",),
    "libnvidia-opticalflow.so.1": ("libnvidia-opticalflow.so",),
    "libGLX_nvidia.so.0": ("libGLX_indirect.so.0",),
    "libnvidia-allocator.so.1": ("gbm/nvidia-drm_gbm.so",),
}

# (host path, what uses it); optional: daemons come and go
SOCKETS = (
    ("/var/run/nvidia-persistenced/socket", "nvidia-persistenced"),
    ("/var/run/nvidia-fabricmanager/socket", "nv-fabricmanager"),
)

UVM_FIX = "ask the administrator to load it at boot: 'nvidia-modprobe -u -c=0' or 'modprobe nvidia-uvm'"

_VERSION_LINE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\s")
_MAYBE_NVIDIA = re.compile(r"nv|cuda", re.IGNORECASE)
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-f-]+)/(\d+)/(\d+)$")


# --- the host's GPUs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A MIG device: a compute instance in a GPU instance, and its two capability minors."""

    gi: int
    ci: int
    gi_minor: int | None  # /dev/nvidia-caps/nvidia-cap<minor> guarding gpuN/giX/access
    ci_minor: int | None  # ... guarding gpuN/giX/ciY/access


@dataclass(frozen=True, slots=True)
class NvidiaGpu:
    index: int  # nvidia-smi's index: position in PCI bus order
    bus_id: str  # "0000:07:00.0"
    minor: int | None  # "Device Minor": /dev/nvidia<minor>
    uuid: str = ""
    model: str = ""
    numa_node: int | None = None  # the CPU-side node (sysfs numa_node, or local_cpus)
    memory_numa_node: int | None = None  # coherent GPU memory onlined as a node (numa_status)
    mig: tuple[MigInstance, ...] = ()

    @property
    def fact(self) -> str:
        def show(value: object) -> str:
            return "?" if value is None or value == "" else str(value)

        return (f"index={self.index} bus={self.bus_id} minor={show(self.minor)} "
                f"uuid={show(self.uuid)} numa={show(self.numa_node)} "
                f"memory-numa={show(self.memory_numa_node)} mig={len(self.mig)} "
                f"model={show(self.model)}")


def driver_version(host: HostRoot) -> str | None:
    """The loaded kernel module's version: procfs first, then sysfs."""
    text = host.read_text("/proc/driver/nvidia/version") or ""
    found = _VERSION_LINE.search(text)
    return found.group(1) if found else (host.read_value("/sys/module/nvidia/version") or None)


def read_gpus(host: HostRoot) -> tuple[NvidiaGpu, ...]:
    """Every GPU the driver serves, in nvidia-smi's index order."""
    names = {bus: name for name in host.listdir("/proc/driver/nvidia/gpus")
             if (bus := normal_bus_id(name))}
    minors = mig_minors(host)
    return tuple(_gpu(host, index, bus, names[bus], minors)
                 for index, bus in enumerate(sorted(names, key=_bus_key)))


def _gpu(host: HostRoot, index: int, bus: str, name: str, minors: Mapping[str, int]) -> NvidiaGpu:
    info = parse_information(host.read_text(f"/proc/driver/nvidia/gpus/{name}/information") or "")
    numa = parse_information(host.read_text(f"/proc/driver/nvidia/gpus/{name}/numa_status") or "")
    minor = parse_int(info.get("Device Minor"))
    return NvidiaGpu(
        index=index,
        bus_id=bus,
        minor=minor,
        uuid=info.get("GPU UUID", ""),
        model=info.get("Model", ""),
        numa_node=pci_numa_node(host, bus),
        memory_numa_node=parse_int(numa.get("Node")),
        mig=() if minor is None else _mig_instances(host, minor, minors),
    )


def parse_information(text: str) -> dict[str, str]:
    """``Key: \\t value`` lines, as nv-procfs.c prints the information and numa_status files."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _bus_key(bus: str) -> tuple[int, ...]:
    return tuple(int(p, 16) for p in re.split(r"[:.]", bus))


def mig_minors(host: HostRoot) -> dict[str, int]:
    """``gpu0/gi1/ci0/access`` -> minor of /dev/nvidia-caps/nvidia-cap<minor> (nv-caps.c)."""
    table = {}
    for line in (host.read_text("/proc/driver/nvidia-caps/mig-minors") or "").splitlines():
        name, _, minor = line.rpartition(" ")
        if name and minor.isdigit():
            table[name] = int(minor)
    return table


def _mig_instances(host: HostRoot, minor: int, minors: Mapping[str, int]) -> tuple[MigInstance, ...]:
    # the capability directory is named after the GPU's device minor, not its index
    # (os.c: osRmCapRegisterGpu names it "gpu%u" from nv_get_dev_minor())
    base = f"/proc/driver/nvidia/capabilities/gpu{minor}/mig"
    instances = []
    for gi_name in host.listdir(base):
        gi = parse_int(gi_name[2:]) if gi_name.startswith("gi") else None
        if gi is None or not host.exists(f"{base}/{gi_name}/access"):
            continue
        for ci_name in host.listdir(f"{base}/{gi_name}"):
            ci = parse_int(ci_name[2:]) if ci_name.startswith("ci") else None
            if ci is not None and host.exists(f"{base}/{gi_name}/{ci_name}/access"):
                instances.append(MigInstance(gi, ci, minors.get(f"gpu{minor}/gi{gi}/access"),
                                             minors.get(f"gpu{minor}/gi{gi}/ci{ci}/access")))
    return tuple(sorted(instances, key=lambda m: (m.gi, m.ci)))


# --- what the user asked for ------------------------------------------------------------------


def capabilities(env: Mapping[str, str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """Effective capabilities and the unknown names in NVIDIA_DRIVER_CAPABILITIES."""
    words = [w.strip() for w in env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",") if w.strip()]
    if not words:
        return DEFAULT_CAPABILITIES, ()
    if "all" in words:
        return ALL_CAPABILITIES, ()
    known = {w for w in words if w in ALL_CAPABILITIES}
    implied = {IMPLIED[w] for w in known if w in IMPLIED}
    return frozenset(known | implied), tuple(w for w in words if w not in ALL_CAPABILITIES)


# (variable, what a bare number in it means). NVIDIA_VISIBLE_DEVICES is the container's own
# request; Slurm's SLURM_STEP_GPUS holds the allocation as device minors even when
# ConstrainDevices renumbers CUDA_VISIBLE_DEVICES, so it outranks CUDA_VISIBLE_DEVICES.
SELECTORS = (
    ("NVIDIA_VISIBLE_DEVICES", "index"),
    ("SLURM_STEP_GPUS", "minor"),
    ("CUDA_VISIBLE_DEVICES", "index"),
)


@dataclass(frozen=True)
class Selection:
    source: str  # the variable that chose, "" when none was set (every GPU)
    value: str
    mode: str  # "gpus", "none" (driver only), "void" (nothing)
    gpus: tuple[NvidiaGpu, ...] = ()  # in request order
    mig: Mapping[int, tuple[MigInstance, ...]] = field(default_factory=dict)  # index -> chosen
    tokens: tuple[str, ...] = ()  # the container's CUDA_VISIBLE_DEVICES
    errors: tuple[str, ...] = ()

    @property
    def restricted(self) -> bool:
        return bool(self.source) and self.value.strip().lower() != "all"


def select(gpus: tuple[NvidiaGpu, ...], env: Mapping[str, str]) -> Selection:
    """Which GPUs (and MIG instances) the container gets, and its CUDA_VISIBLE_DEVICES."""
    source, number = next(((v, n) for v, n in SELECTORS if v in env), ("", "index"))
    value = env.get(source, "all")
    word = value.strip().lower()
    if word == "void" or (source == "NVIDIA_VISIBLE_DEVICES" and word == ""):
        return Selection(source, value, "void")
    if word in ("none", "", "-1", "nodevfiles"):
        return Selection(source, value, "none")
    if word == "all":
        return Selection(source, value, "gpus", gpus)
    chosen: dict[int, NvidiaGpu] = {}
    whole: set[int] = set()
    parts: dict[int, list[MigInstance]] = {}
    order: list[tuple[int, str]] = []  # (gpu index, container token, "" to renumber)
    errors = []
    for token in (t.strip() for t in value.split(",") if t.strip()):
        found = resolve(token, gpus, number)
        if isinstance(found, str):
            errors.append(found)
            continue
        gpu, instance = found
        chosen.setdefault(gpu.index, gpu)
        if instance is None:
            whole.add(gpu.index)
        else:
            parts.setdefault(gpu.index, []).append(instance)
        # a MIG instance keeps its global name: its GPU's number means the whole GPU
        order.append((gpu.index, "" if instance is None else token))
    renumbered = container_indices([index for index, _ in order])
    tokens = tuple(dict.fromkeys(token or str(rank) for (_, token), rank in zip(order, renumbered)))
    return Selection(source, value, "gpus", tuple(chosen.values()),
                     {i: tuple(v) for i, v in parts.items() if i not in whole}, tokens, tuple(errors))


def resolve(token: str, gpus: tuple[NvidiaGpu, ...], number: str) -> tuple[NvidiaGpu, MigInstance | None] | str:
    """The GPU (and MIG instance) a token names, or why it names none."""
    lowered = token.lower()
    if legacy := _LEGACY_MIG.match(token):
        uuid, gi, ci = legacy.group(1).lower(), int(legacy.group(2)), int(legacy.group(3))
        for gpu in gpus:
            for instance in gpu.mig:
                if gpu.uuid.lower() == uuid and (instance.gi, instance.ci) == (gi, ci):
                    return gpu, instance
        return f"no MIG instance {token} on this host"
    if lowered.startswith("mig-"):
        return (f"{token}: MIG UUIDs are known only to NVML, not to procfs; select the MIG "
                f"device as MIG-GPU-<gpu uuid>/<gi>/<ci> or select its GPU")
    if token.isdigit():
        key = "minor" if number == "minor" else "index"
        match = [g for g in gpus if getattr(g, key) == int(token)]
        return (match[0], None) if match else f"no GPU with {key} {token} on this host"
    if bus := normal_bus_id(token):
        match = [g for g in gpus if g.bus_id == bus]
        return (match[0], None) if match else f"no GPU at PCI bus id {bus} on this host"
    prefix = lowered if lowered.startswith("gpu-") else "gpu-" + lowered
    match = [g for g in gpus if g.uuid.lower().startswith(prefix)]
    if len(match) == 1:
        return match[0], None
    return f"{token} matches {len(match)} GPU UUIDs on this host" if match else \
        f"{token} is not an index, UUID or PCI bus id of a GPU on this host"


# --- the plan ---------------------------------------------------------------------------------


def discover(host: HostRoot, env: Mapping[str, str]) -> PlanPart:
    """The ``gpu.nvidia`` part of a plan for this host and environment."""
    version = driver_version(host)
    gpus = read_gpus(host)
    if version is None and not gpus:
        return PlanPart(checks=[Check(
            "nvidia-driver", Status.WARN, "no NVIDIA driver found (no /proc/driver/nvidia/version)",
            PROVIDER, "run on a GPU node, or load the nvidia kernel module")])
    part = PlanPart(facts=[Fact(PROVIDER, "gpu", gpu.fact) for gpu in gpus])
    if version is None:
        part.checks.append(Check(
            "nvidia-driver", Status.WARN,
            f"NVIDIA driver version unknown (no /proc/driver/nvidia/version nor "
            f"/sys/module/nvidia/version) with {len(gpus)} GPUs: nothing bound",
            PROVIDER, "capture the host with /proc/driver/nvidia/version"))
        return part
    part.facts.append(Fact(PROVIDER, "driver-version", version))
    caps, unknown = capabilities(env)
    part.facts.append(Fact(PROVIDER, "capabilities", ",".join(sorted(caps))))
    if unknown:
        part.checks.append(Check(
            "nvidia-capabilities", Status.WARN,
            f"NVIDIA_DRIVER_CAPABILITIES names unknown capabilities: {', '.join(unknown)}",
            PROVIDER, f"use some of: all, {', '.join(sorted(ALL_CAPABILITIES))}"))
    selection = select(gpus, env)
    if selection.mode == "void":
        part.checks.append(Check("nvidia-visible-devices", Status.OK,
                                 f"{selection.source}={selection.value}: no GPU support requested",
                                 PROVIDER))
        return part
    part.checks.append(Check("nvidia-driver", Status.OK,
                             f"NVIDIA driver {version}, {len(gpus)} GPUs", PROVIDER))
    entries = read_ldcache(host)
    native = native_abi(entries)
    for section in (
        _libraries(host, entries, native, version, caps, env),
        _binaries(host, native, caps, env),
        _files(host, version, caps, env),
        _devices(host, gpus, selection, caps),
        _environment(selection, caps),
    ):
        part.extend(section)
    return part


# --- libraries ---


@dataclass(frozen=True)
class _Candidate:
    entry: LdEntry
    realpath: str  # host path with every link followed
    capability: str | None  # None: matched by the driver-version suffix alone

    @property
    def filename(self) -> str:
        return posixpath.basename(self.realpath)

    @property
    def base(self) -> str:
        return library_base(self.entry.soname)


def _libraries(host: HostRoot, entries: tuple[LdEntry, ...], native: tuple[str, str] | None,
               version: str, caps: frozenset[str], env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    if native is None:
        part.checks.append(Check(
            "nvidia-libraries", Status.FAIL, "no usable /etc/ld.so.cache: driver libraries not found",
            PROVIDER, "run 'ldconfig' as root on the host"))
        return part
    requested = env.get("NVIDIA_DRIVER_CAPABILITIES") or ",".join(sorted(DEFAULT_CAPABILITIES))
    bound: dict[tuple[str, str], str] = {}  # (container dir, soname) -> host source
    for cand in _candidates(host, entries, version):
        verdict = _judge(host, cand, version, caps, native, requested)
        if isinstance(verdict, str):
            part.rejected.append(Rejected(cand.realpath, PROVIDER, verdict))
            continue
        libdir, info = verdict
        soname = info.soname or cand.entry.soname
        if bound.get((libdir, soname)) == cand.realpath:
            continue  # another cache name of the same file
        if (libdir, soname) in bound:
            part.rejected.append(Rejected(cand.realpath, PROVIDER,
                                          f"{soname} is already bound from {bound[libdir, soname]} "
                                          f"(first in ld.so.cache order)"))
            continue
        bound[libdir, soname] = cand.realpath
        part.extend(library_entries(cand.realpath, libdir, info, soname, PROVIDER,
                                    _rule(cand), _reason(cand, version),
                                    version if cand.filename.endswith(f".so.{version}") else ""))
    part.links.extend(
        Link(f"{libdir}/{link}", posixpath.relpath(f"{libdir}/{soname}", posixpath.dirname(f"{libdir}/{link}")),
             PROVIDER, f"the name build tools and dlopen() callers use for {soname}")
        for libdir, soname in bound for link in DEV_LINKS.get(soname, ()))
    dirs = sorted({libdir for libdir, _ in bound})
    part.env.extend(EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, d, PROVIDER,
                          "host driver libraries, after the image's own (container first)") for d in dirs)
    return part


def _candidates(host: HostRoot, entries: Iterable[LdEntry], version: str) -> list[_Candidate]:
    found = []
    for entry in entries:
        if entry.hwcap:
            continue  # glibc-hwcaps variants: the driver installs none
        capability = CAPABILITY_OF.get(library_base(entry.soname))
        if capability is None and not _MAYBE_NVIDIA.search(entry.soname):
            # every NVIDIA driver library's name has "nv" or "cuda" in it; following the links
            # of all of a host's thousands of cache entries would cost more than the plan
            continue
        realpath = host.resolve(entry.path)
        if capability is not None or realpath.endswith(f".so.{version}"):
            found.append(_Candidate(entry, realpath, capability))
    return found


def _judge(host: HostRoot, cand: _Candidate, version: str, caps: frozenset[str],
           native: tuple[str, str], requested: str) -> tuple[str, ElfInfo] | str:
    """Where the library goes and its ELF facts, or why it is not bound."""
    if cand.capability is not None and cand.capability not in caps:
        return f"capability {cand.capability} not requested (NVIDIA_DRIVER_CAPABILITIES={requested})"
    if not cand.filename.endswith(f".so.{version}") and cand.base not in OWN_VERSION:
        return (f"not from the running driver {version} (a stale library of another driver "
                f"version; remove it and rerun ldconfig)")
    info = elf_info(host.real(cand.realpath))
    if info is None:
        return "not a readable ELF file"
    abi = (info.elf_class, info.machine)
    if abi == native:
        return CONTAINER_LIBDIR, info
    if (cand.entry.elf_class, cand.entry.machine) == abi and info.elf_class == "ELFCLASS32":
        if "compat32" in caps:
            return CONTAINER_LIBDIR32, info
        return (f"32-bit library ({info.elf_class} {info.machine}); add compat32 to "
                f"NVIDIA_DRIVER_CAPABILITIES to bind it")
    return f"{info.elf_class} {info.machine} does not match the host's {native[0]} {native[1]}"


def _rule(cand: _Candidate) -> str:
    return f"capability:{cand.capability}" if cand.capability else "driver-suffix"


def _reason(cand: _Candidate, version: str) -> str:
    if cand.capability is None:
        return (f"from driver {version} and in no capability list: bound so that a library a "
                f"new driver adds is never missed")
    if cand.base in OWN_VERSION:
        return f"{cand.capability} library shipped with the driver under its own version"
    return f"{cand.capability} library of driver {version}"


# --- binaries, configuration, firmware, IPC ---


def _binaries(host: HostRoot, native: tuple[str, str] | None, caps: frozenset[str],
              env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    for cap in sorted(caps & BINARIES.keys()):
        for name in BINARIES[cap]:
            path = find_binary(host, name, env)
            if path is None:
                continue
            entry = binary_mount(host, path, name, PROVIDER, f"capability:{cap}",
                                 f"{cap} tool of the host driver", native)
            (part.mounts if isinstance(entry, Mount) else part.rejected).append(entry)
    if part.mounts:
        part.env.append(EnvOp("PATH", EnvAction.APPEND, CONTAINER_BINDIR, PROVIDER,
                              "host driver tools, after the image's own"))
    return part


def _files(host: HostRoot, version: str, caps: frozenset[str], env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    if "graphics" in caps:
        for name in CONFIG_FILES:
            for prefix in CONFIG_PREFIXES:
                path = f"{prefix}/{name}"
                if host.real(host.resolve(path)).is_file():
                    part.mounts.append(Mount(path, path, "config", PROVIDER, "capability:graphics",
                                             "graphics loader configuration of the host driver"))
    firmware = f"/lib/firmware/nvidia/{version}"
    for name in host.listdir(firmware):
        if name.startswith("gsp") and name.endswith(".bin"):
            part.mounts.append(Mount(f"{firmware}/{name}", f"{firmware}/{name}", "firmware",
                                     PROVIDER, "gsp-firmware",
                                     f"GSP firmware of driver {version}, as libnvidia-container binds it"))
    for path, daemon in SOCKETS:
        _ipc(host, part, path, "socket", RO_SOCKET, f"{daemon}'s socket")
    if "compute" in caps:
        pipes = env.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_MPS_PIPE_DIRECTORY)
        _ipc(host, part, pipes, "dir", ("nosuid", "nodev"), "MPS control pipes (read-write)")
    return part


RO_SOCKET = ("ro", "nosuid", "nodev", "noexec")


def _ipc(host: HostRoot, part: PlanPart, path: str, kind: str, options: tuple[str, ...],
         what: str) -> None:
    real = host.real(host.resolve(path))
    try:
        mode = real.stat().st_mode
    except OSError:
        part.rejected.append(Rejected(path, PROVIDER, f"no {what} on the host now"))
        return
    if (kind == "socket" and stat.S_ISSOCK(mode)) or (kind == "dir" and stat.S_ISDIR(mode)):
        part.mounts.append(Mount(path, path, kind, PROVIDER, f"ipc:{kind}", what, options,
                                 Need.OPTIONAL))
    else:
        part.rejected.append(Rejected(path, PROVIDER, f"not a {kind}"))


# --- devices and environment ---


def _devices(host: HostRoot, gpus: tuple[NvidiaGpu, ...], selection: Selection,
             caps: frozenset[str]) -> PlanPart:
    part = PlanPart()
    majors = char_majors(host)
    nv = majors.get("nvidia-frontend", majors.get("nvidia", NV_MAJOR))

    def node(path: str, major: int, minor: int, rule: str, reason: str) -> None:
        part.devices.append(Device(path, "c", major, minor, PROVIDER, rule, reason))

    node("/dev/nvidiactl", majors.get("nvidiactl", nv), NV_CTL_MINOR, "control", "driver control node")
    if "display" in caps:
        node("/dev/nvidia-modeset", majors.get("nvidia-modeset", nv), NV_MODESET_MINOR,
             "capability:display", "mode setting for display")
    if "compute" in caps:
        _uvm(part, majors, node)
    chosen = {g.index for g in selection.gpus} if selection.mode == "gpus" else set()
    for gpu in gpus:
        if gpu.index not in chosen:
            why = ("NVIDIA_VISIBLE_DEVICES=none: driver only" if selection.mode == "none"
                   else f"GPU {gpu.index} not in {selection.source}={selection.value}")
            part.rejected.append(Rejected(_gpu_node(gpu), PROVIDER, why))
        elif gpu.minor is None:
            part.rejected.append(Rejected(_gpu_node(gpu), PROVIDER,
                                          f"no Device Minor in /proc/driver/nvidia/gpus/{gpu.bus_id}/information"))
        else:
            node(f"/dev/nvidia{gpu.minor}", nv, gpu.minor, "selected-gpu",
                 f"GPU {gpu.index} ({gpu.bus_id}, {gpu.uuid})"
                 + (f" from {selection.source}={selection.value}" if selection.restricted else ""))
            _mig_nodes(part, gpu, selection, majors.get("nvidia-caps"), node)
    for error in selection.errors:
        part.checks.append(Check("nvidia-visible-devices", Status.FAIL,
                                 f"{selection.source}={selection.value}: {error}", PROVIDER,
                                 "name GPUs by index, UUID or PCI bus id (nvidia-smi -L)"))
    return part


def _gpu_node(gpu: NvidiaGpu) -> str:
    return f"/dev/nvidia{gpu.minor}" if gpu.minor is not None else f"GPU {gpu.index} ({gpu.bus_id})"


def _uvm(part: PlanPart, majors: Mapping[str, int], node) -> None:
    uvm = majors.get("nvidia-uvm")
    if uvm is None:
        part.checks.append(Check("nvidia-uvm", Status.FAIL,
                                 "nvidia-uvm is not loaded (no nvidia-uvm in /proc/devices): "
                                 "CUDA cannot start without /dev/nvidia-uvm", PROVIDER, UVM_FIX))
        return
    node("/dev/nvidia-uvm", uvm, 0, "capability:compute", "unified memory")
    node("/dev/nvidia-uvm-tools", uvm, 1, "capability:compute", "unified memory tools (profilers)")


def _mig_nodes(part: PlanPart, gpu: NvidiaGpu, selection: Selection, caps_major: int | None,
               node) -> None:
    chosen = selection.mig.get(gpu.index, gpu.mig)
    nodes: dict[int, str] = {}  # minor -> capability; compute instances share their GI's
    for instance in gpu.mig:
        name = f"MIG {gpu.index}:gi{instance.gi}/ci{instance.ci}"
        if instance not in chosen:
            part.rejected.append(Rejected(name, PROVIDER,
                                          f"{name} not in {selection.source}={selection.value}"))
        elif caps_major is None or instance.gi_minor is None or instance.ci_minor is None:
            part.checks.append(Check("nvidia-caps", Status.FAIL,
                                     f"{name}: no nvidia-caps major in /proc/devices or no minor "
                                     f"in /proc/driver/nvidia-caps/mig-minors", PROVIDER,
                                     "check that the nvidia module exposes MIG capabilities"))
        else:
            nodes[instance.gi_minor] = f"gi{instance.gi}"
            nodes[instance.ci_minor] = f"gi{instance.gi}/ci{instance.ci}"
    for minor, level in nodes.items():
        node(f"/dev/nvidia-caps/nvidia-cap{minor}", caps_major, minor, "mig",
             f"access to GPU {gpu.index} MIG {level} (gpu{gpu.minor}/{level}/access)")


def _environment(selection: Selection, caps: frozenset[str]) -> PlanPart:
    part = PlanPart()
    if selection.mode == "none":
        visible = "none"
    elif selection.restricted:
        visible = ",".join(_visible_names(selection))
    else:
        visible = "all"
    part.env.append(EnvOp("NVIDIA_VISIBLE_DEVICES", EnvAction.SET, visible, PROVIDER,
                          "the GPUs bound into the container"))
    part.env.append(EnvOp("NVIDIA_DRIVER_CAPABILITIES", EnvAction.SET, ",".join(sorted(caps)),
                          PROVIDER, "the capabilities whose files were bound"))
    if selection.mode == "gpus" and selection.restricted:
        part.env.append(EnvOp("CUDA_VISIBLE_DEVICES", EnvAction.SET, ",".join(selection.tokens),
                              PROVIDER, f"renumbered from {selection.source}={selection.value}: "
                                        f"the container sees only its GPUs, counted from 0"))
    return part


def _visible_names(selection: Selection) -> list[str]:
    names = []
    for gpu in selection.gpus:
        chosen = selection.mig.get(gpu.index)
        names += [f"MIG-{gpu.uuid}/{m.gi}/{m.ci}" for m in chosen] if chosen else [gpu.uuid]
    return names


# --- optional cross-check -----------------------------------------------------------------


def nvml_cross_check(host: HostRoot) -> Check:
    """Compare procfs discovery with NVML's view (live host only; NVML is never required)."""
    if not host.live:
        return Check("nvml-cross-check", Status.OK, "skipped: not the live host", PROVIDER)
    try:
        import pynvml
    except ImportError:
        return Check("nvml-cross-check", Status.WARN, "nvidia-ml-py is not installed", PROVIDER,
                     "pip install nvidia-ml-py")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return Check("nvml-cross-check", Status.WARN, f"NVML unavailable: {err}", PROVIDER)
    try:
        seen = {pynvml.nvmlDeviceGetPciInfo(h).busId: (pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetMinorNumber(h))
                for h in (pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount()))}
        nvml_version = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    ours = {g.bus_id: (g.uuid, g.minor) for g in read_gpus(host)}
    theirs = {normal_bus_id(_text(bus)): (_text(uuid), minor) for bus, (uuid, minor) in seen.items()}
    version = driver_version(host)
    if ours == theirs and version == _text(nvml_version):
        return Check("nvml-cross-check", Status.OK, f"NVML agrees: driver {version}, {len(ours)} GPUs",
                     PROVIDER)
    return Check("nvml-cross-check", Status.FAIL,
                 f"NVML disagrees with procfs: driver {_text(nvml_version)} vs {version}, "
                 f"GPUs {sorted(theirs.items())} vs {sorted(ours.items())}", PROVIDER,
                 "reboot or reload the driver: the loaded module and libraries differ")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
