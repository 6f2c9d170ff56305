"""Rank-local devices: ``--gpu-bind=closest|none|map:I,J,...``.

The node's plan binds every selected GPU and HCA into the container; each local rank then
narrows what it uses with ``CUDA_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES``,
``UCX_NET_DEVICES`` and ``NCCL_IB_HCA``:

- ``closest``: the GPUs on the NUMA nodes of the rank's CPUs (all GPUs for an unbound rank),
  shared out among the local ranks round robin; then the HCA on the chosen GPU's NUMA node
  (the rank's own when it has no GPU), so GPU-direct traffic stays on one PCIe root;
- ``map:I,J,...``: local rank r gets container GPU number list[r % len];
- ``none``: every rank sees every GPU (the plan's selection).

The GPUs and HCAs come from the plan's facts (what discovery found), never from the host.
"""

from __future__ import annotations

from collections import namedtuple

from hpcbind.errors import HpcbindError

POLICIES = ("closest", "none", "map:I,J,...")

Gpu = namedtuple("Gpu", "variable index numa")  # index: the container's number for it
Hca = namedtuple("Hca", "name port numa")
Choice = namedtuple("Choice", "gpu hca reason")

_VISIBLE = {"gpu.nvidia": "CUDA_VISIBLE_DEVICES", "gpu.rocm": "ROCR_VISIBLE_DEVICES"}


def parse_policy(value: str) -> str:
    if value in ("closest", "none") or (value.startswith("map:") and _map(value)):
        return value
    raise HpcbindError(f"bad --gpu-bind value {value!r}", f"use one of {', '.join(POLICIES)}")


def _map(value: str) -> list[int]:
    items = value[4:].split(",")
    if not all(i.strip().isdigit() for i in items):
        raise HpcbindError(f"bad --gpu-bind map {value!r}", "list GPU numbers: map:0,1,2,3")
    return [int(i) for i in items]


def _fields(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def _numa(value: str | None) -> int:
    return int(value) if value is not None and value.lstrip("-").isdigit() else -1


def plan_devices(plan) -> tuple[list[Gpu], list[Hca]]:
    """The GPUs (numbered as the container sees them) and active HCA ports the plan gives."""
    bound = {d.path for d in plan.devices}
    gpus = []
    for provider, variable in _VISIBLE.items():
        found = []
        for fact in plan.facts:
            if fact.provider != provider or fact.name != "gpu":
                continue
            f = _fields(fact.value)
            node = (f"/dev/nvidia{f.get('minor')}" if provider == "gpu.nvidia"
                    else f"/dev/dri/{f.get('render')}")
            if node in bound:
                found.append((int(f.get("index", "0")), _numa(f.get("numa"))))
        # the container numbers its GPUs from 0 in host order (the plan's renumbering)
        gpus += [Gpu(variable, n, numa) for n, (_, numa) in enumerate(sorted(found))]
    hca_numa = {}
    for fact in plan.facts:
        if fact.provider == "fabric.verbs" and fact.name == "hca":
            name, *rest = fact.value.split()
            hca_numa[name] = _numa(_fields(" ".join(rest)).get("numa"))
    hcas = []
    for op in plan.env:
        if op.name == "UCX_NET_DEVICES" and op.value:
            for item in op.value.split(","):
                name, _, port = item.partition(":")
                hcas.append(Hca(name, port or "1", hca_numa.get(name, -1)))
    return gpus, hcas


def choose(policy: str, local_rank: int, local_size: int, gpus: list[Gpu], hcas: list[Hca],
           rank_numa: set[int]) -> Choice:
    if policy == "none" or (not gpus and not hcas):
        return Choice(None, None, "--gpu-bind=none: every GPU and HCA of the plan")
    if policy.startswith("map:"):
        wanted = _map(policy)[local_rank % len(_map(policy))]
        gpu = next((g for g in gpus if g.index == wanted), None)
        if gpu is None:
            raise HpcbindError(f"--gpu-bind {policy}: GPU {wanted} is not in the container "
                               f"(it has {len(gpus)})", "map to GPUs the plan selected")
        return Choice(gpu, _closest_hca(hcas, {gpu.numa}, local_rank),
                      f"map: local rank {local_rank} -> GPU {wanted}")
    near = [g for g in gpus if g.numa in rank_numa] or gpus
    # ranks on one NUMA node share its GPUs round robin, counted among themselves
    gpu = near[local_rank % len(near)] if near else None
    where = {gpu.numa} if gpu else rank_numa
    hca = _closest_hca(hcas, where, local_rank)
    reason = (f"closest: local rank {local_rank} of {local_size} on NUMA "
              f"{','.join(map(str, sorted(rank_numa))) or '?'}")
    return Choice(gpu, hca, reason)


def preview(plan, policy: str, local_ranks: int):
    """The plan with one fact per local rank saying what ``--gpu-bind`` gives it, for ranks
    the launcher does not bind to CPUs (a bound rank's choice follows its NUMA node)."""
    from hpcbind.plan import BindPlan, Fact, PlanPart

    gpus, hcas = plan_devices(plan)
    numa = {g.numa for g in gpus} | {h.numa for h in hcas}
    facts = []
    for rank in range(local_ranks):
        choice = choose(parse_policy(policy), rank, local_ranks, gpus, hcas, numa)
        given = " ".join(f"{k}={v}" for k, v in choice_env(choice)) or "all devices"
        facts.append(Fact("mpi.gpu-bind", f"local-rank-{rank:04d}",
                          f"{given} ({choice.reason}, rank not bound to CPUs)"))
    return BindPlan.merge((*plan.request, f"gpu-bind:{policy}"),
                          [plan.as_part(), PlanPart(facts=facts)])


def _closest_hca(hcas: list[Hca], numa: set[int], local_rank: int) -> Hca | None:
    near = [h for h in hcas if h.numa in numa] or hcas
    return near[local_rank % len(near)] if near else None


def choice_env(choice: Choice) -> list[tuple[str, str]]:
    """The variables that narrow a rank to its choice."""
    env = []
    if choice.gpu is not None:
        env.append((choice.gpu.variable, str(choice.gpu.index)))
    if choice.hca is not None:
        env += [("UCX_NET_DEVICES", f"{choice.hca.name}:{choice.hca.port}"),
                ("NCCL_IB_HCA", f"={choice.hca.name}")]
    return env


def numa_of_cpus(cpus: set[int], node_cpulists: dict[int, str]) -> set[int]:
    """NUMA nodes holding any of ``cpus`` (cpulists as in /sys/devices/system/node)."""
    return {node for node, text in node_cpulists.items() if cpus & _cpulist(text)}


def _cpulist(text: str) -> set[int]:
    cpus: set[int] = set()
    for item in filter(None, text.strip().split(",")):
        low, _, high = item.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus
