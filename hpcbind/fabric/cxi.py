"""HPE Slingshot 11 (Cassini NICs, the CXI driver): the ``--ib`` entries for ``/dev/cxiN``.

The core driver (module ``cxi_ss1``, ``cxi_core`` in some releases) registers each NIC in
class ``cxi`` and writes its properties (``nid``, ``link``, ``speed``, ``cassini_version``...)
under the PCI function's ``properties/``; the ``cxi_user`` module adds class ``cxi_user`` and
the char device ``/dev/cxiN`` (mode 0666). libcxi enumerates ``/sys/class/cxi_user/cxi*``,
opens ``/dev/cxiN`` and reads ``device/properties/*``; libfabric's cxi provider sits on top of
it. Access control is not the device node but the CXI service: the resource manager
(Slurm's switch/hpe_slingshot, Flux) allocates the job's VNIs and services and exports them
as ``SLINGSHOT_*``, which the cxi provider reads. Services live in debugfs, not sysfs, so
discovery reports what sysfs and that environment say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hpcbind.fabric import verbs
from hpcbind.host import libbind
from hpcbind.host.conventions import natural_sorted
from hpcbind.host.sysfs import dev_numbers, link_name, read_int
from hpcbind.hostroot import HostRoot
from hpcbind.plan import Check, Device, EnvAction, EnvOp, Fact, PlanPart, Rejected, Status

PROVIDER = "fabric.cxi"
SYS_CXI = "/sys/class/cxi"
SYS_CXI_USER = "/sys/class/cxi_user"
# Exported per job step by Slurm (switch/hpe_slingshot) and Flux; SLINGSHOT_DEVICES is the
# job's NIC list, so it is also the selection.
SLINGSHOT_PREFIX = "SLINGSHOT_"
SLINGSHOT_DEVICES = "SLINGSHOT_DEVICES"
LIBCXI = "libcxi.so.1"


@dataclass(frozen=True, slots=True)
class CxiDevice:
    name: str  # "cxi0"
    numbers: tuple[int, int] | None  # major:minor of /dev/cxiN; None when cxi_user is not loaded
    pci: str
    driver: str  # "cxi_ss1" or "cxi_core"
    numa_node: int
    local_cpulist: str
    nid: str  # "0x1a2b3", the NIC's fabric address
    link_up: bool | None  # properties/link: 1 up, 0 down; None when not reported
    speed: str  # properties/speed, Mb/s
    cassini_version: str  # "1.1", "2.0"
    netdevs: tuple[str, ...]  # hsnN


def read_cxi_devices(host: HostRoot) -> tuple[CxiDevice, ...]:
    names = set(host.listdir(SYS_CXI)) | set(host.listdir(SYS_CXI_USER))
    return tuple(_read(host, name) for name in natural_sorted(names))


def _read(host: HostRoot, name: str) -> CxiDevice:
    user = f"{SYS_CXI_USER}/{name}"
    # both classes' devices hang off the same PCI function
    base = user if host.exists(user) else f"{SYS_CXI}/{name}"
    pci = f"{base}/device"
    link = host.read_value(f"{pci}/properties/link")
    return CxiDevice(
        name=name,
        numbers=dev_numbers(host, user),
        pci=link_name(host, pci),
        driver=link_name(host, f"{pci}/driver"),
        numa_node=read_int(host, f"{pci}/numa_node", -1),
        local_cpulist=host.read_value(f"{pci}/local_cpulist") or "",
        nid=host.read_value(f"{pci}/properties/nid") or "",
        link_up=None if link is None else link == "1",
        speed=host.read_value(f"{pci}/properties/speed") or "",
        cassini_version=host.read_value(f"{pci}/properties/cassini_version") or "",
        netdevs=tuple(natural_sorted(host.listdir(f"{pci}/net"))),
    )


def discover(host: HostRoot, env: Mapping[str, str], loader: libbind.Loader) -> PlanPart:
    """Plan entries for the host's Slingshot NICs; empty when it has none."""
    nics = read_cxi_devices(host)
    if not nics:
        return PlanPart()
    job_nics = [n.strip() for n in env.get(SLINGSHOT_DEVICES, "").split(",") if n.strip()]
    part = PlanPart()
    for nic in nics:
        part.facts.append(Fact(PROVIDER, "cxi", _describe(nic)))
        part.checks.extend(_nic_checks(nic))
        if job_nics and nic.name not in job_nics:
            part.rejected.append(Rejected(f"/dev/{nic.name}", PROVIDER,
                                          f"not in {SLINGSHOT_DEVICES}={env[SLINGSHOT_DEVICES]}"))
        elif nic.numbers:
            part.devices.append(Device(f"/dev/{nic.name}", "c", *nic.numbers, PROVIDER, "cxi",
                                       f"libcxi opens it for {nic.name} (nid {nic.nid or '?'})"))
    part.extend(_environment(env))
    libraries, needs = verbs.libfabric_part(
        loader, env, PROVIDER, "libfabric with the cxi provider (Cray MPICH, MPICH ch4:ofi)")
    part.extend(libraries)
    libcxi = libbind.LibRequest(LIBCXI, "libcxi", "CXI user library under libfabric's cxi provider",
                              required=True)
    part.extend(libbind.library_part(loader, [libcxi, *needs], PROVIDER))
    return part


def _describe(nic: CxiDevice) -> str:
    link = "-" if nic.link_up is None else "up" if nic.link_up else "down"
    return (f"{nic.name} nid={nic.nid or '-'} link={link} speed={nic.speed or '-'} "
            f"cassini={nic.cassini_version or '-'} pci={nic.pci} driver={nic.driver} "
            f"numa={nic.numa_node} netdevs={','.join(nic.netdevs) or '-'}")


def _nic_checks(nic: CxiDevice) -> list[Check]:
    checks = []
    if nic.numbers is None:
        checks.append(Check("cxi-device", Status.WARN,
                            f"{nic.name} has no {SYS_CXI_USER}/{nic.name}: "
                            f"libcxi cannot open /dev/{nic.name}",
                            PROVIDER, fix="load the cxi_user kernel module on the host"))
    if nic.link_up is False:
        checks.append(Check("cxi-link", Status.WARN, f"{nic.name} link is down", PROVIDER,
                            fix="check the NIC with cxi_stat; libfabric will not use it"))
    return checks


def _environment(env: Mapping[str, str]) -> PlanPart:
    part = PlanPart()
    names = sorted(n for n in env if n.startswith(SLINGSHOT_PREFIX))
    part.env.extend(EnvOp(n, EnvAction.PASS, "", PROVIDER,
                          "the job's Slingshot VNIs/services, read by libfabric's cxi provider; "
                          "kept under --cleanenv") for n in names)
    if "SLINGSHOT_VNIS" not in names:
        part.checks.append(Check(
            "slingshot-vni", Status.WARN,
            "no SLINGSHOT_VNIS in the environment: outside a job step the cxi provider falls back "
            "to the default CXI service, which a site may have disabled or restricted", PROVIDER,
            fix="run inside a Slurm step (switch/hpe_slingshot) or a Flux job"))
    return part
