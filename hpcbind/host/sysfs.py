"""Facts the kernel publishes in sysfs and procfs, read through a ``HostRoot``.

PCI bus ids, NUMA nodes, character-device majors and numbers, link targets: what the GPU
and fabric providers all read, and the format rules of the files they read them from.
"""

from __future__ import annotations

import posixpath
import re

from hpcbind.hostroot import HostRoot

_BUS_ID = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$")


def normal_bus_id(text: str) -> str | None:
    """"0000:07:00.0" from any spelling nvidia-smi, CUDA or sysfs use ("00000000:07:00.0")."""
    found = _BUS_ID.match(text.strip().lower())
    if not found:
        return None
    domain, bus, device, function = (int(p or "0", 16) for p in found.groups())
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function:x}"


def pci_numa_node(host: HostRoot, bus: str) -> int | None:
    """The device's NUMA node: sysfs ``numa_node``, else the node whose cpumap equals the
    device's ``local_cpus`` (what hwloc does on kernels without numa_node)."""
    node = parse_int(host.read_value(f"/sys/bus/pci/devices/{bus}/numa_node"))
    if node is not None:
        return node if node >= 0 else None
    local = host.read_value(f"/sys/bus/pci/devices/{bus}/local_cpus")
    if not local:
        return None
    for name in host.listdir("/sys/devices/system/node"):
        if name.startswith("node") and host.read_value(f"/sys/devices/system/node/{name}/cpumap") == local:
            return int(name[4:])
    return None


def char_majors(host: HostRoot) -> dict[str, int]:
    """Character device majors by name from /proc/devices (several names may share one)."""
    majors, in_chars = {}, False
    for line in (host.read_text("/proc/devices") or "").splitlines():
        if line.endswith(":"):
            in_chars = line == "Character devices:"
            continue
        number, _, name = line.strip().partition(" ")
        if in_chars and number.isdigit() and name:
            majors.setdefault(name.strip(), int(number))
    return majors


def parse_int(text: str | None) -> int | None:
    """A decimal sysfs/procfs value, or None when it is missing or not a number."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def dev_numbers(host: HostRoot, path: str) -> tuple[int, int] | None:
    """major:minor from a class device's ``dev`` file, else from MAJOR=/MINOR= in ``uevent``."""
    major, _, minor = (host.read_value(f"{path}/dev") or "").partition(":")
    if major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    lines = (host.read_text(f"{path}/uevent") or "").splitlines()
    uevent = dict(line.partition("=")[::2] for line in lines)
    if uevent.get("MAJOR", "").isdigit() and uevent.get("MINOR", "").isdigit():
        return int(uevent["MAJOR"]), int(uevent["MINOR"])
    return None


def link_name(host: HostRoot, path: str) -> str:
    """The last name of a sysfs link's target ("0000:43:00.0", "mlx5_core"); "" when ``path``
    is no link (resolve() then leaves its own name in place)."""
    target = posixpath.basename(host.resolve(path))
    return "" if target == posixpath.basename(path) else target


def read_int(host: HostRoot, path: str, default: int) -> int:
    text = host.read_value(path)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
