"""Intel Omni-Path (hfi1): the PSM2 side of ``--ib``.

An OPA adapter is also a verbs device (``/sys/class/infiniband/hfi1_N``, rdma-core provider
``hfi1verbs``), which ``fabric.verbs`` binds like any other. What MPI actually uses on OPA is
PSM2 (Open MPI's mtl/psm2, libfabric's psm2 provider, MVAPICH2-PSM2): ``libpsm2.so.2`` and the
driver's own char device ``/dev/hfi1_N``. The hfi1 driver makes that node in class
``hfi1_user`` (mode 0666, one per adapter, minor = unit); the driver's ``hfi1`` class holds
its root-only (0600) nodes, which a container has no use for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hpcbind.fabric import verbs
from hpcbind.host import libbind
from hpcbind.host.conventions import natural_sorted
from hpcbind.host.sysfs import dev_numbers
from hpcbind.hostroot import HostRoot
from hpcbind.plan import Check, Device, EnvAction, EnvOp, Fact, PlanPart, Rejected, Status

PROVIDER = "fabric.opa"
SYS_HFI_USER = "/sys/class/hfi1_user"

# PSM2 refuses to start without a job-unique transport key ("Error obtaining unique transport
# key"): Open MPI's launcher generates it as OMPI_MCA_orte_precondition_transports, and site
# srun wrappers do the same; PSM2_* and HFI_UNIT/HFI_PORT are PSM2's own settings. Passed so
# that --cleanenv keeps them.
PASSED_NAMES = ("OMPI_MCA_orte_precondition_transports",)
PASSED_PREFIXES = ("PSM2_", "HFI_")


@dataclass(frozen=True, slots=True)
class HfiDevice:
    name: str  # "hfi1_0", also the name of its verbs device
    major: int
    minor: int

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


def read_hfi_devices(host: HostRoot) -> tuple[HfiDevice, ...]:
    found = []
    for name in natural_sorted(host.listdir(SYS_HFI_USER)):
        numbers = dev_numbers(host, f"{SYS_HFI_USER}/{name}")
        if numbers:
            found.append(HfiDevice(name, *numbers))
    return tuple(found)


def discover(host: HostRoot, env: Mapping[str, str], loader: libbind.Loader) -> PlanPart:
    """Plan entries for the host's Omni-Path adapters; empty when it has none."""
    hfis = read_hfi_devices(host)
    adapters = {name: verbs.read_device(host, name)
                for name in natural_sorted(host.listdir(verbs.SYS_IB))
                if name.startswith("hfi1_")}
    if not hfis and not adapters:
        return PlanPart()
    # the same choice fabric.verbs makes, so an adapter is in or out on both sides
    selection = verbs.select(list(adapters.values()), env)
    part = PlanPart()
    for hfi in hfis:
        adapter = adapters.get(hfi.name)
        part.facts.append(Fact(PROVIDER, "hfi", f"{hfi.name} {hfi.major}:{hfi.minor} "
                                                f"pci={adapter.pci if adapter else '-'} "
                                                f"numa={adapter.numa_node if adapter else -1}"))
        if adapter and adapter.name not in selection.devices:
            part.rejected.append(Rejected(hfi.path, PROVIDER,
                                          f"not selected by {selection.source}"))
        else:
            part.devices.append(Device(hfi.path, "c", hfi.major, hfi.minor, PROVIDER, "psm2",
                                       f"PSM2 access to {hfi.name}"))
    present = {h.name for h in hfis}
    part.checks.extend(Check("psm2-device", Status.WARN,
                             f"{name} has no {SYS_HFI_USER}/{name}: PSM2 cannot open /dev/{name}",
                             PROVIDER, fix="check the hfi1 driver on the host (modprobe hfi1)")
                       for name in adapters if name not in present)
    psm2 = libbind.LibRequest("libpsm2.so.2", "psm2", "PSM2, the Omni-Path transport of Open MPI "
                            "mtl/psm2 and libfabric psm2", required=True)
    part.extend(libbind.library_part(loader, [psm2], PROVIDER))
    part.env.extend(EnvOp(name, EnvAction.PASS, "", PROVIDER,
                          "PSM2 job key and settings, kept under --cleanenv")
                    for name in sorted(env)
                    if name in PASSED_NAMES or name.startswith(PASSED_PREFIXES))
    return part
