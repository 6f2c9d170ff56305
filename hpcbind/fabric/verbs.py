"""RDMA verbs devices (InfiniBand, RoCE, iWARP, Omni-Path's verbs side) and the host's verbs
userspace, as bind-plan entries for ``--ib``.

Everything comes from sysfs (kernel ``Documentation/ABI/stable/sysfs-class-infiniband``) and
from files on disk, read through a ``HostRoot``; nothing is loaded or linked, so discovery works
on a host whose verbs stack is broken and on a captured tree. Device numbers come from the
``dev`` files of the ``infiniband_verbs``/``infiniband_mad`` class devices (``uevent`` when a
capture lacks them), not from ``/dev``, which a capture does not have.

The container gets:
- ``/dev/infiniband/uverbsN`` of each selected device and ``/dev/infiniband/rdma_cm``;
- the host's ``libibverbs.so.1`` with the host providers of the selected devices (they must come
  in pairs: a provider needs ``IBVERBS_PRIVATE_<N>`` from the libibverbs it is loaded into, the
  "version IBVERBS_PRIVATE_NN not found" failure), ``librdmacm``, UCX and libfabric when the
  host has them, all in ``CONTAINER_LIBDIR`` with their sonames, plus what they need from the
  host beyond the C library;
- ``/etc/libibverbs.d`` (read-only) so the libibverbs that runs finds the host providers;
- ``UCX_NET_DEVICES`` and ``NCCL_IB_HCA`` naming the selected ACTIVE ports.

``provider_abi_check`` is public so that the image preflight can test the image's own
libibverbs against the host providers this module binds.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hpcbind.host.conventions import natural_sorted
from hpcbind.host.elf import ElfInfo, max_version
from hpcbind.host.sysfs import dev_numbers, link_name, read_int
from hpcbind.host.libbind import LibRequest, Loader, library_elf, library_part, plugin_dir_part
from hpcbind.hostroot import HostRoot
from hpcbind.plan import (
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

PROVIDER = "fabric.verbs"

SYS_IB = "/sys/class/infiniband"
SYS_VERBS = "/sys/class/infiniband_verbs"
SYS_MAD = "/sys/class/infiniband_mad"
SYS_RDMA_CM = "/sys/class/misc/rdma_cm"
# rdma-core's RDMA_CDEV_DIR: libibverbs and librdmacm open their nodes here, whatever name udev
# gave them on the host (old kernels' uevent says DEVNAME=uverbs0, new ones infiniband/uverbs0)
DEV_DIR = "/dev/infiniband"
VERBS_CONFIG_DIR = "/etc/libibverbs.d"
UCX_CONFIG = "/etc/ucx/ucx.conf"

# Environment a user sets to choose HCAs. HPCBIND_HCA wins: it is ours and says only that;
# UCX_NET_DEVICES is honoured because a user who set it has already said which ports UCX may use.
SELECTION_VARS = ("HPCBIND_HCA", "UCX_NET_DEVICES")

# Kernel driver of the PCI function -> the rdma-core provider (``driver NAME`` in
# /etc/libibverbs.d/NAME.driver) for its verbs device. rdma-core itself matches by PCI id or
# kernel driver id in each provider's table (providers/*/, v44); this is those tables summed
# up by the PCI function's driver, which sysfs shows.
PROVIDER_FOR_DRIVER = {
    "mlx5_core": "mlx5",
    "mlx4_core": "mlx4",
    "ib_mthca": "mthca",
    "ib_qib": "ipathverbs",  # QLogic/Intel TrueScale
    "hfi1": "hfi1verbs",  # Intel Omni-Path
    "bnxt_en": "bnxt_re",
    "cxgb4": "cxgb4",
    "ice": "irdma",  # Intel E810 (irdma sits on the auxiliary bus of ice/i40e)
    "i40e": "irdma",
    "qede": "qedr",
    "be2net": "ocrdma",
    "efa": "efa",
    "vmw_pvrdma": "vmw_pvrdma",
    "hns3": "hns",
    "erdma": "erdma",
    "mana": "mana",
}
# Software devices have no PCI parent; rdma-core names them and so can we.
PROVIDER_FOR_NAME_PREFIX = {"rxe": "rxe", "siw": "siw"}

# Why umadN/issmN stay out: MPI, UCX, NCCL and libfabric need only uverbs and rdma_cm.
_MAD_USE = {
    "umad": "MAD access for management tools (ibstat, perfquery), not needed by MPI or UCX",
    "issm": "claims the port's IsSM capability (subnet managers only)",
}

# What --ib takes from the host when it has it, with why. Sonames: the host's ld.so.cache says
# where each lives.
VERBS_LIBS = (
    ("libibverbs.so.1", "verbs API, the partner of the host providers (same IBVERBS_PRIVATE ABI)"),
    ("librdmacm.so.1", "RDMA connection manager: RoCE/iWARP connection setup, UCX rdmacm"),
)
UCX_LIBS = (
    ("libucp.so.0", "UCX, the IB/RoCE transport of Open MPI (pml ucx), MPICH ch4:ucx, NCCL"),
    ("libuct.so.0", "UCX transports"),
    ("libucs.so.0", "UCX services"),
    ("libucm.so.0", "UCX memory hooks"),
)
LIBFABRIC = "libfabric.so.1"


_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ZERO_INTERFACE = ":0000:0000:0000:0000"  # an unassigned slot: zeros, or the bare fe80:: prefix


# --- what sysfs says --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CharDevice:
    name: str  # "uverbs0", "umad0", "issm0"
    major: int
    minor: int
    port: int = 0  # umad/issm are per port; 0 for uverbs

    @property
    def path(self) -> str:
        return f"{DEV_DIR}/{self.name}"


@dataclass(frozen=True, slots=True)
class Gid:
    index: int
    gid: str  # as sysfs prints it: eight groups of four hex digits
    type: str  # "IB/RoCE v1", "RoCE v2"; "" when the kernel gives none
    ndev: str  # the netdev of a RoCE GID; "" for InfiniBand


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    state: str  # "ACTIVE", "DOWN", "INIT", "ARMED", "ACTIVE_DEFER"
    phys_state: str  # "LinkUp", "Polling", "Disabled", ...
    link_layer: str  # "InfiniBand" or "Ethernet"
    rate: str  # "200 Gb/sec (4X HDR)"
    lid: str  # "0x12a"; "0x0" on Ethernet
    gids: tuple[Gid, ...] = ()

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


@dataclass(frozen=True, slots=True)
class RdmaDevice:
    name: str  # "mlx5_0"
    node_type: str  # "CA", "RNIC"
    node_guid: str
    fw_ver: str
    board_id: str
    hca_type: str
    pci: str  # "0000:43:00.0"; "" for a software device
    driver: str  # kernel driver of the PCI function: "mlx5_core"
    numa_node: int  # -1 when the platform does not say (the kernel's own value)
    local_cpulist: str
    ports: tuple[Port, ...]
    netdevs: tuple[str, ...]  # netdevs of the same PCI function (ib0, enp65s0f0np0)
    uverbs: tuple[CharDevice, ...]
    mad: tuple[CharDevice, ...]  # umadN and issmN

    @property
    def provider(self) -> str:
        """The rdma-core provider for this device; "" when the driver is not in the table."""
        if self.driver:
            return PROVIDER_FOR_DRIVER.get(self.driver, "")
        return next((p for prefix, p in PROVIDER_FOR_NAME_PREFIX.items()
                     if self.name.startswith(prefix)), "")


def read_devices(host: HostRoot) -> tuple[RdmaDevice, ...]:
    """Every device under /sys/class/infiniband, in natural order (mlx5_2 before mlx5_10)."""
    verbs = _class_nodes(host, SYS_VERBS)
    mad = _class_nodes(host, SYS_MAD)
    return tuple(read_device(host, name, verbs, mad)
                 for name in natural_sorted(host.listdir(SYS_IB)))


def read_device(host: HostRoot, name: str,
                verbs: Mapping[str, tuple[CharDevice, ...]] | None = None,
                mad: Mapping[str, tuple[CharDevice, ...]] | None = None) -> RdmaDevice:
    """One device; the char-device maps (ibdev -> nodes) are read here when not given."""
    base = f"{SYS_IB}/{name}"
    pci = link_name(host, f"{base}/device")
    ports = tuple(_read_port(host, f"{base}/ports/{p}", int(p))
                  for p in natural_sorted(host.listdir(f"{base}/ports")) if p.isdigit())
    below = _device_nodes(host, base, "infiniband_verbs", "infiniband_mad")
    verbs = verbs if verbs is not None else _class_nodes(host, SYS_VERBS)
    mad = mad if mad is not None else _class_nodes(host, SYS_MAD)
    return RdmaDevice(
        name=name,
        node_type=_after_colon(host.read_value(f"{base}/node_type") or ""),
        node_guid=host.read_value(f"{base}/node_guid") or "",
        fw_ver=host.read_value(f"{base}/fw_ver") or "",
        board_id=host.read_value(f"{base}/board_id") or "",
        hca_type=host.read_value(f"{base}/hca_type") or "",
        pci=pci if _PCI_ADDRESS.match(pci) else "",
        driver=link_name(host, f"{base}/device/driver"),
        numa_node=read_int(host, f"{base}/device/numa_node", -1),
        local_cpulist=host.read_value(f"{base}/device/local_cpulist") or "",
        ports=ports,
        netdevs=tuple(natural_sorted(host.listdir(f"{base}/device/net"))),
        uverbs=_merge_nodes(verbs.get(name, ()), below.get(("infiniband_verbs", name), ())),
        mad=_merge_nodes(mad.get(name, ()), below.get(("infiniband_mad", name), ())),
    )


def read_rdma_cm(host: HostRoot) -> CharDevice | None:
    """The rdma_cm misc device (its minor is dynamic, so sysfs is the only source)."""
    numbers = dev_numbers(host, SYS_RDMA_CM)
    return CharDevice("rdma_cm", *numbers) if numbers else None


def _read_port(host: HostRoot, base: str, number: int) -> Port:
    return Port(
        number=number,
        state=_after_colon(host.read_value(f"{base}/state") or ""),
        phys_state=_after_colon(host.read_value(f"{base}/phys_state") or ""),
        link_layer=host.read_value(f"{base}/link_layer") or "",
        rate=host.read_value(f"{base}/rate") or "",
        lid=host.read_value(f"{base}/lid") or "",
        gids=tuple(_read_gids(host, base)),
    )


def _read_gids(host: HostRoot, base: str) -> Iterable[Gid]:
    # The kernel prints empty table slots as zeros (older ones as the bare subnet prefix) and
    # fails reads of their attributes: such slots are skipped, a missing type/ndev reads as ""
    for index in sorted(int(i) for i in host.listdir(f"{base}/gids") if i.isdigit()):
        gid = host.read_value(f"{base}/gids/{index}")
        if gid and not gid.endswith(_ZERO_INTERFACE):
            yield Gid(index, gid,
                      host.read_value(f"{base}/gid_attrs/types/{index}") or "",
                      host.read_value(f"{base}/gid_attrs/ndevs/{index}") or "")


def _class_nodes(host: HostRoot, class_dir: str) -> dict[str, tuple[CharDevice, ...]]:
    """ibdev -> char devices of a class (infiniband_verbs, infiniband_mad)."""
    nodes: dict[str, list[CharDevice]] = {}
    for entry in host.listdir(class_dir):
        node = _char_device(host, f"{class_dir}/{entry}", entry)
        ibdev = host.read_value(f"{class_dir}/{entry}/ibdev")
        if node and ibdev:
            nodes.setdefault(ibdev, []).append(node)
    return {ibdev: tuple(found) for ibdev, found in nodes.items()}


def _device_nodes(host: HostRoot, base: str,
                  *classes: str) -> dict[tuple[str, str], tuple[CharDevice, ...]]:
    """(class, ibdev) -> char devices found under the device's parent, as a capture without
    /sys/class/infiniband_verbs still has them (hwloc's gatherer keeps only some classes)."""
    nodes: dict[tuple[str, str], list[CharDevice]] = {}
    for class_name in classes:
        directory = f"{base}/device/{class_name}"
        for entry in host.listdir(directory):
            node = _char_device(host, f"{directory}/{entry}", entry)
            ibdev = host.read_value(f"{directory}/{entry}/ibdev")
            if node and ibdev:
                nodes.setdefault((class_name, ibdev), []).append(node)
    return {key: tuple(found) for key, found in nodes.items()}


def _char_device(host: HostRoot, path: str, name: str) -> CharDevice | None:
    numbers = dev_numbers(host, path)
    if numbers is None:
        return None
    return CharDevice(name, *numbers, port=read_int(host, f"{path}/port", 0))


def _merge_nodes(*groups: tuple[CharDevice, ...]) -> tuple[CharDevice, ...]:
    merged = {node.name: node for group in groups for node in group}
    return tuple(merged[name] for name in natural_sorted(merged))


# --- which HCAs the user wants ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    source: str  # "HPCBIND_HCA=mlx5_0,mlx5_1"; "" when nothing was asked (everything selected)
    ports: tuple[str, ...]  # selected "dev:port", any state
    devices: tuple[str, ...]  # devices with at least one selected port
    unknown: tuple[str, ...]  # asked for (dev:port, any HPCBIND_HCA name), not on this host


def select(devices: Sequence[RdmaDevice], env: Mapping[str, str]) -> Selection:
    """The ports a user asked for with HPCBIND_HCA or UCX_NET_DEVICES (UCX's syntax:
    ``mlx5_0:1,mlx5_1`` with an optional leading ``^`` to exclude, ``all``); every port when
    neither is set. Entries without a port name a device or, for UCX, a TCP netdev."""
    every = [f"{d.name}:{p.number}" for d in devices for p in d.ports]
    name = next((var for var in SELECTION_VARS if env.get(var, "").strip()), "")
    if not name:
        return Selection("", tuple(every), tuple(d.name for d in devices), ())
    spec = env[name].strip()
    entries = [e.strip() for e in spec.lstrip("^").split(",") if e.strip()]
    wanted = set(every) if "all" in entries else {p for p in every if _matches(p, entries)}
    chosen = set(every) - wanted if spec.startswith("^") else wanted
    ports = tuple(p for p in every if p in chosen)
    known = set(every) | {d.name for d in devices}
    unknown = tuple(e for e in entries if e != "all" and e not in known
                    and (":" in e or name == "HPCBIND_HCA"))
    on = tuple(d.name for d in devices if any(p.startswith(f"{d.name}:") for p in ports))
    return Selection(f"{name}={spec}", ports, on, unknown)


def _matches(port: str, entries: Iterable[str]) -> bool:
    device = port.partition(":")[0]
    return any(entry in (port, device) for entry in entries)


# --- the host's verbs userspace -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerbsProvider:
    name: str  # "mlx5", from "driver mlx5"
    config: str  # "/etc/libibverbs.d/mlx5.driver"
    library: str  # host path of lib<name>-rdmav<N>.so; "" when not installed
    needs: tuple[str, ...]  # versions it needs from libibverbs.so.1


def read_provider_names(host: HostRoot) -> tuple[tuple[str, str], ...]:
    """(driver name, config file) of each ``driver NAME`` line in /etc/libibverbs.d/*.driver,
    parsed as rdma-core's read_config_file() does: first word a keyword, '#' a comment."""
    found = []
    for entry in host.listdir(VERBS_CONFIG_DIR):
        if not entry.endswith(".driver"):
            continue
        config = f"{VERBS_CONFIG_DIR}/{entry}"
        for line in (host.read_text(config) or "").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) == 2 and words[0] == "driver":
                found.append((words[1], config))
    return tuple(found)


def provider_abi(libibverbs: ElfInfo | None) -> int | None:
    """N of the ``IBVERBS_PRIVATE_N`` a libibverbs defines: rdma-core's IBVERBS_PABI_VERSION,
    the suffix its providers carry (lib<name>-rdmav<N>.so)."""
    if libibverbs is None:
        return None
    found = max_version(libibverbs.version_defs, "IBVERBS_PRIVATE")
    return found[0] if found else None


def read_providers(host: HostRoot, loader: Loader) -> tuple[VerbsProvider, ...]:
    """The host's configured providers, resolved as rdma-core's load_driver() does: an
    absolute name gets the suffix appended; otherwise VERBS_PROVIDER_DIR (``libibverbs/`` next
    to libibverbs.so.1), then the loader's search path by soname."""
    names = read_provider_names(host)
    libibverbs = loader.paths.get("libibverbs.so.1", "")
    pabi = provider_abi(library_elf(host, libibverbs)) if libibverbs else None
    if pabi is None:
        return tuple(VerbsProvider(name, config, "", ()) for name, config in names)
    suffix = f"-rdmav{pabi}.so"
    providers = []
    for name, config in names:
        candidates = ([name + suffix] if name.startswith("/") else
                      [f"{posixpath.dirname(libibverbs)}/libibverbs/lib{name}{suffix}",
                       loader.paths.get(f"lib{name}{suffix}", "")])
        library = next((c for c in candidates if c and host.exists(c)), "")
        info = library_elf(host, library) if library else None
        needs = info.version_needs.get("libibverbs.so.1", ()) if info else ()
        providers.append(VerbsProvider(name, config, library, needs))
    return tuple(providers)


def provider_abi_check(image_libibverbs_defs: tuple[str, ...],
                       provider_needs: Mapping[str, tuple[str, ...]],
                       subject: str = "the image's libibverbs.so.1") -> Check:
    """Whether a libibverbs (its ELF version definitions) can load these providers (provider
    name -> versions it needs from libibverbs.so.1). A provider built for another rdma-core
    ABI fails at dlopen with "version `IBVERBS_PRIVATE_NN' not found"; libibverbs then reports
    no device at all, so this is a fail, found before anything runs."""
    if not provider_needs:
        return Check("verbs-provider-abi", Status.OK, "no host verbs provider to match", PROVIDER)
    defined = set(image_libibverbs_defs)
    missing = {name: absent for name, needs in sorted(provider_needs.items())
               if (absent := tuple(v for v in needs if v not in defined))}
    if not missing:
        private = sorted({v for vs in provider_needs.values() for v in vs
                          if v.startswith("IBVERBS_PRIVATE_")})
        return Check("verbs-provider-abi", Status.OK,
                     f"host providers {', '.join(sorted(provider_needs))} need "
                     f"{', '.join(private) or 'no private ABI'}, which {subject} defines", PROVIDER)
    wants = "; ".join(f"{name} needs {', '.join(versions)}" for name, versions in missing.items())
    defines = ", ".join(v for v in image_libibverbs_defs if v.startswith("IBVERBS_PRIVATE_"))
    return Check(
        "verbs-provider-abi", Status.FAIL,
        f"{subject} cannot load the host verbs providers: {wants}, "
        f"but it defines {defines or 'no IBVERBS_PRIVATE version'}",
        PROVIDER,
        fix=(f"use the host's libibverbs (bound by --ib into {CONTAINER_LIBDIR}; do not put the "
             "image's first on LD_LIBRARY_PATH), or install in the image the rdma-core whose "
             "libibverbs defines the version the providers need"),
    )


# --- host libraries into the container --------------------------------------------------------


def libfabric_part(loader: Loader, env: Mapping[str, str], provider: str,
                   reason: str) -> tuple[PlanPart, tuple[LibRequest, ...]]:
    """libfabric and its external provider directory (``libfabric/`` next to it, where DL
    providers such as Intel's ``libpsm3-fi.so`` live), with FI_PROVIDER_PATH pointing at the
    directory in the container: libfabric's compiled-in default is the host's libdir."""
    path = loader.paths.get(LIBFABRIC, "")
    if not path:
        return PlanPart(), ()
    directory = f"{posixpath.dirname(path)}/libfabric"
    part, needs = plugin_dir_part(loader.host, directory, "libfabric", provider,
                                  "libfabric-providers",
                                  "libfabric loads its DL providers (lib*-fi.so) from here")
    if part.mounts and "FI_PROVIDER_PATH" not in env:
        part.env.append(EnvOp("FI_PROVIDER_PATH", EnvAction.SET, f"{CONTAINER_LIBDIR}/libfabric",
                              provider, "where the bound libfabric finds its DL providers"))
    return part, (LibRequest(LIBFABRIC, "libfabric", reason), *needs)


# --- the plan part ------------------------------------------------------------------------------


def discover(host: HostRoot, env: Mapping[str, str], loader: Loader) -> PlanPart:
    """Plan entries for the host's verbs devices; empty when it has none."""
    devices = read_devices(host)
    if not devices:
        return PlanPart()
    selection = select(devices, env)
    chosen = [d for d in devices if d.name in selection.devices]
    active = [f"{d.name}:{p.number}" for d in chosen for p in d.ports
              if p.active and f"{d.name}:{p.number}" in selection.ports]
    part = PlanPart()
    part.checks.append(Check("rdma-devices", Status.OK if active else Status.WARN,
                             f"{len(devices)} RDMA device(s); selected active ports: "
                             f"{', '.join(active) or 'none'}", PROVIDER))
    part.facts.extend(_facts(devices))
    part.checks.extend(_port_checks(devices, selection))
    part.extend(_selection_part(devices, selection, active, env))
    part.extend(_device_part(host, chosen))
    part.extend(_userspace_part(host, env, loader, chosen))
    return part


def _facts(devices: Sequence[RdmaDevice]) -> Iterable[Fact]:
    for d in devices:
        yield Fact(PROVIDER, "hca", f"{d.name} {d.node_type} guid={d.node_guid} "
                                    f"fw={d.fw_ver or '-'} board={d.board_id or d.hca_type or '-'} "
                                    f"pci={d.pci or '-'} driver={d.driver or '-'} "
                                    f"numa={d.numa_node} cpus={d.local_cpulist or '-'}")
        for p in d.ports:
            yield Fact(PROVIDER, "port", f"{d.name}:{p.number} {p.state} {p.phys_state} "
                                         f"{p.link_layer} {p.rate} lid={p.lid}")
            # RoCE: which GID index is v2 over IPv4 is what users end up tuning
            yield from (Fact(PROVIDER, "gid", f"{d.name}:{p.number} [{g.index}] {g.type} "
                                              f"{g.gid} {g.ndev}")
                        for g in p.gids if p.link_layer == "Ethernet")
        yield from (Fact(PROVIDER, "char-device", f"{n.name} {n.major}:{n.minor} ibdev={d.name}")
                    for n in d.uverbs + d.mad)


def _port_checks(devices: Sequence[RdmaDevice], selection: Selection) -> Iterable[Check]:
    for d in devices:
        for p in d.ports:
            if not p.active:
                yield Check("ib-port-state", Status.WARN,
                            f"{d.name} port {p.number} is {p.state or 'unknown'} "
                            f"({p.phys_state or '?'})", PROVIDER,
                            fix="check the cable and the subnet manager (ibstat); the port is "
                                "left out of UCX_NET_DEVICES and NCCL_IB_HCA")
    if selection.unknown:
        yield Check("hca-selection", Status.WARN,
                    f"{selection.source} names {', '.join(selection.unknown)}, "
                    "which this host does not have",
                    PROVIDER, fix=f"choose among {', '.join(d.name for d in devices)}")


def _selection_part(devices: Sequence[RdmaDevice], selection: Selection, active: Sequence[str],
                    env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    why = f"not selected by {selection.source}"
    for d in devices:
        if d.name not in selection.devices:
            part.rejected.append(Rejected(d.name, PROVIDER, why))
            continue
        part.rejected.extend(Rejected(f"{d.name}:{p.number}", PROVIDER, why)
                             for p in d.ports if f"{d.name}:{p.number}" not in selection.ports)
    if not active:
        return part
    chosen = ",".join(active)
    reason = f"selected ACTIVE ports ({selection.source or 'all'})"
    # Open MPI's openib BTL (OMPI_MCA_btl_openib_if_include) was deprecated in 4.0 and removed
    # in 5.0; Open MPI and MPICH reach IB through UCX, which reads UCX_NET_DEVICES, so that and
    # NCCL's own variable are all a current stack needs. A user's own value always wins.
    for name, value in (("UCX_NET_DEVICES", chosen),
                        # '=' makes NCCL match names exactly: plain mlx5_1 also matches mlx5_10
                        ("NCCL_IB_HCA", "=" + chosen)):
        if name in env:
            part.env.append(EnvOp(name, EnvAction.PASS, "", PROVIDER, "set by the user; kept"))
        else:
            part.env.append(EnvOp(name, EnvAction.SET, value, PROVIDER, reason))
    return part


def _device_part(host: HostRoot, chosen: Sequence[RdmaDevice]) -> PlanPart:
    part = PlanPart()
    for d in chosen:
        part.devices.extend(Device(n.path, "c", n.major, n.minor, PROVIDER, "uverbs",
                                   f"verbs access to {d.name}") for n in d.uverbs)
        part.rejected.extend(Rejected(n.path, PROVIDER, f"{_MAD_USE[n.name[:4]]}; bind it "
                                                        "explicitly if wanted") for n in d.mad)
    cm = read_rdma_cm(host)
    if cm:
        part.devices.append(Device(cm.path, "c", cm.major, cm.minor, PROVIDER, "rdma-cm",
                                   "librdmacm's connection manager (RoCE/iWARP, UCX rdmacm)"))
    else:
        part.facts.append(Fact(PROVIDER, "rdma-cm",
                               f"absent: no {SYS_RDMA_CM} (rdma_ucm not loaded, or not captured)"))
        if any(p.link_layer == "Ethernet" for d in chosen for p in d.ports):
            part.checks.append(Check("rdma-cm", Status.WARN,
                                     "RoCE ports but no rdma_cm device: librdmacm connection "
                                     "setup will fail", PROVIDER,
                                     fix="load the rdma_ucm kernel module on the host"))
    part.extend(_dev_node_check(host, chosen, cm))
    return part


def _dev_node_check(host: HostRoot, chosen: Sequence[RdmaDevice],
                    cm: CharDevice | None) -> PlanPart:
    """On a host with /dev/infiniband (a live one, not a capture), a node sysfs has and /dev
    lacks means udev has not run yet: the bind would fail at run time, so say it now."""
    part = PlanPart()
    if not host.is_dir(DEV_DIR):
        return part
    expected = {n.name for d in chosen for n in d.uverbs} | ({cm.name} if cm else set())
    missing = sorted(expected - set(host.listdir(DEV_DIR)))
    if missing:
        part.checks.append(Check("ib-device-nodes", Status.WARN,
                                 f"sysfs has {', '.join(missing)} but {DEV_DIR} does not",
                                 PROVIDER, fix="wait for udev, or check rdma-core's udev rules"))
    return part


def _userspace_part(host: HostRoot, env: Mapping[str, str], loader: Loader,
                    chosen: Sequence[RdmaDevice]) -> PlanPart:
    part = PlanPart()
    bound = _provider_choice(part, read_providers(host, loader), chosen)
    requests = [LibRequest(soname, "verbs-lib", reason) for soname, reason in VERBS_LIBS]
    requests += [LibRequest(posixpath.basename(p.library), "verbs-provider",
                            f"rdma-core provider {p.name} ({p.config})", path=p.library)
                 for p in bound]
    fabric_reason = "libfabric (MPICH ch4:ofi, Intel MPI) and its verbs provider"
    for extra, needs in (_ucx(host, loader), libfabric_part(loader, env, PROVIDER, fabric_reason)):
        part.extend(extra)
        requests += needs
    part.extend(library_part(loader, requests, PROVIDER))
    if not bound:
        return part
    if host.is_dir(VERBS_CONFIG_DIR):
        # The bound directory lists the host providers, which the libibverbs that runs finds in
        # CONTAINER_LIBDIR by soname (rdma-core's last resort: dlopen("lib<name>-rdmav<N>.so")).
        # IBV_DRIVERS/RDMAV_DRIVERS would only help a libibverbs that reads some other config
        # directory (a source build with another sysconfdir): a property of the image, for the
        # image preflight, so discovery does not set them.
        part.mounts.append(Mount(VERBS_CONFIG_DIR, VERBS_CONFIG_DIR, "config", PROVIDER,
                                 "verbs-config", "tells libibverbs which providers to load"))
    libibverbs = library_elf(host, loader.paths["libibverbs.so.1"])
    part.checks.append(provider_abi_check(libibverbs.version_defs if libibverbs else (),
                                          {p.name: p.needs for p in bound},
                                          subject="the host's libibverbs.so.1"))
    part.facts.extend(Fact(PROVIDER, "verbs-provider", f"{p.name} {p.library}") for p in bound)
    return part


def _provider_choice(part: PlanPart, providers: Sequence[VerbsProvider],
                     chosen: Sequence[RdmaDevice]) -> list[VerbsProvider]:
    """The installed providers the chosen devices need; the others go to ``rejected``."""
    wanted = {d.provider for d in chosen}
    if "" in wanted:
        unknown = ", ".join(f"{d.name} ({d.driver or 'no driver'})"
                            for d in chosen if not d.provider)
        part.checks.append(Check("verbs-provider", Status.WARN,
                                 f"no known rdma-core provider for {unknown}; "
                                 "binding every host provider", PROVIDER))
        wanted = {p.name for p in providers}
    bound = [p for p in providers
             if p.name in wanted and p.library and not p.name.startswith("/")]
    part.rejected.extend(Rejected(p.library or p.config, PROVIDER, _why_not_bound(p, wanted))
                         for p in providers if p not in bound)
    part.checks.extend(Check("verbs-provider", Status.WARN,
                             f"the host has no usable verbs provider {name!r} "
                             f"({VERBS_CONFIG_DIR}/{name}.driver and its library)", PROVIDER,
                             fix=f"install rdma-core's {name} provider in the image")
                       for name in sorted(wanted - {p.name for p in bound}))
    return bound


def _why_not_bound(provider: VerbsProvider, wanted: set[str]) -> str:
    if provider.name.startswith("/"):
        # libibverbs dlopen()s such a name as it stands, a host path the container does not
        # have; binding over the image's own files there is the user's call (--bind)
        return f"named by absolute path in {provider.config}; bind it at that path with --bind"
    if provider.name not in wanted:
        return "no selected device uses it"
    return "its library is not installed on the host"


def _ucx(host: HostRoot, loader: Loader) -> tuple[PlanPart, tuple[LibRequest, ...]]:
    """UCX's libraries, its module directory (UCX looks for ``ucx/`` next to where libucs was
    loaded from, so it goes next to libucs in CONTAINER_LIBDIR) and its site config."""
    requests = tuple(LibRequest(soname, "ucx", reason)
                     for soname, reason in UCX_LIBS if soname in loader.paths)
    if "libucs.so.0" not in loader.paths:
        return PlanPart(), requests
    modules = f"{posixpath.dirname(loader.paths['libucs.so.0'])}/ucx"
    part, needs = plugin_dir_part(host, modules, "ucx", PROVIDER, "ucx-modules",
                                  "UCX transport modules (ib, rdmacm, cma)")
    if host.exists(UCX_CONFIG):
        part.mounts.append(Mount(UCX_CONFIG, UCX_CONFIG, "config", PROVIDER, "ucx-config",
                                 "the site's UCX settings, read by the host UCX bound here"))
    return part, requests + needs


# --- optional cross-check -----------------------------------------------------------------------


def cross_check_udev(host: HostRoot, subsystems: Sequence[str] = ("infiniband", "infiniband_verbs",
                                                                  "net")) -> Check:
    """Compare this module's sysfs reading with pyudev's (libudev's) view of the live host.

    pyhwloc would be the other natural validator, but pyhwloc 3.x needs Python >= 3.12 (it
    bundles hwloc 3) and this project supports 3.11, so it is not used.
    """
    name = "udev-cross-check"
    if not host.live:
        return Check(name, Status.WARN, f"pyudev reads only the live /sys, not {host.root}",
                     PROVIDER)
    try:
        import pyudev  # optional: imported only for this cross-check
    except ImportError:
        return Check(name, Status.WARN, "pyudev is not installed; cross-check skipped", PROVIDER,
                     fix="pip install pyudev")
    context = pyudev.Context()
    differences, counts = [], []
    for subsystem in subsystems:
        directory = f"/sys/class/{subsystem}"
        ours = {e for e in host.listdir(directory) if host.is_dir(f"{directory}/{e}")}
        theirs = {device.sys_name for device in context.list_devices(subsystem=subsystem)}
        counts.append(f"{subsystem} {len(ours)}")
        if ours != theirs:
            differences.append(f"{subsystem}: sysfs {sorted(ours)} vs udev {sorted(theirs)}")
    if differences:
        return Check(name, Status.WARN, "; ".join(differences), PROVIDER)
    return Check(name, Status.OK, f"sysfs and udev agree ({', '.join(counts)})", PROVIDER)


# --- small parsers ------------------------------------------------------------------------------


def _after_colon(text: str) -> str:
    """"4: ACTIVE" -> "ACTIVE" (sysfs prints the IBA number and the name)."""
    return text.partition(": ")[2] or text
