"""Interconnect discovery for ``--ib``: RDMA verbs (InfiniBand, RoCE), HPE Slingshot (CXI) and
Intel Omni-Path (PSM2), each a provider of plan entries ("fabric.verbs", "fabric.cxi",
"fabric.opa").

A host without any of them is not an error: ``hpcrun plan --ib`` says so in one warn check and
exits 0.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import fields
from typing import TypeVar

from hpcbind.fabric import cxi, opa, verbs
from hpcbind.host import libbind
from hpcbind.hostroot import HostRoot
from hpcbind.plan import Check, PlanPart, Status

T = TypeVar("T")

# The probes, in plan order. Each returns an empty part when its hardware is absent.
PROBES = (verbs.discover, cxi.discover, opa.discover)


def discover(host: HostRoot, env: Mapping[str, str]) -> PlanPart:
    """Plan entries for every interconnect the host has; ``env`` is the launching environment
    (selection: HPCBIND_HCA, UCX_NET_DEVICES, SLINGSHOT_DEVICES; variables to pass on)."""
    loader = libbind.host_loader(host)
    part = PlanPart()
    for probe in PROBES:
        part.extend(probe(host, env, loader))
    if not any(getattr(part, f.name) for f in fields(part)):
        return PlanPart(checks=[_nothing_found(host)])
    return _without_duplicates(part)


def hca_numa(host: HostRoot) -> dict[str, int]:
    """RDMA and Slingshot device name -> NUMA node (-1 where the platform does not say), for
    choosing the devices local to a rank."""
    return ({d.name: d.numa_node for d in verbs.read_devices(host)}
            | {n.name: n.numa_node for n in cxi.read_cxi_devices(host)})


def _nothing_found(host: HostRoot) -> Check:
    where = (f"no {verbs.SYS_IB}" if not host.is_dir(verbs.SYS_IB) else f"{verbs.SYS_IB} is empty")
    return Check("rdma-devices", Status.WARN, f"no RDMA device found ({where})", verbs.PROVIDER,
                 fix="run on a node with an InfiniBand, RoCE, Slingshot or Omni-Path NIC, "
                     "or drop --ib")


def _without_duplicates(part: PlanPart) -> PlanPart:
    """One entry where two fabric providers ask for the same thing (libfabric for verbs and CXI,
    libnuma for UCX and PSM2, the LD_LIBRARY_PATH append): the first provider keeps it."""
    return PlanPart(mounts=_first(part.mounts, lambda m: (m.source, m.destination)),
                    devices=part.devices,
                    env=_first(part.env, lambda op: (op.name, op.action, op.value)),
                    links=_first(part.links, lambda ln: (ln.path, ln.target)),
                    checks=part.checks, rejected=part.rejected, facts=part.facts)


def _first(items: list[T], key: Callable[[T], Hashable]) -> list[T]:
    kept: dict[Hashable, T] = {}
    for item in items:
        kept.setdefault(key(item), item)
    return list(kept.values())
