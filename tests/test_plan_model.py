"""The plan model as discovery composes it: merge order, duplicates, JSON round trip, cached plans.

The parts are what the providers contribute on an 8-GPU, 8-HCA node, written out by hand with
the paths, device numbers and variables the drivers really use (NVIDIA major 195, uverbs
231:192+N, the private lib dir), so merging is tested on the shapes it meets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcbind.discover import PROVIDERS, Request, load_plan
from hpcbind.errors import HpcbindError
from hpcbind.plan import (
    CONTAINER_LIBDIR, BindPlan, Check, Device, EnvAction, EnvOp, Fact, Link, Mount, Need, PlanPart,
    Provenance, Rejected, Status,
)

DRIVER = "550.54.15"
LIBDIR = "/usr/lib/x86_64-linux-gnu"


def nvidia_part() -> PlanPart:
    return PlanPart(
        mounts=[
            Mount(f"{LIBDIR}/libcuda.so.{DRIVER}", f"{CONTAINER_LIBDIR}/libcuda.so.1", "lib", "gpu.nvidia",
                  "driver-suffix", f"suffix {DRIVER} is the kernel module's version",
                  provenance=Provenance(realpath=f"{LIBDIR}/libcuda.so.{DRIVER}", soname="libcuda.so.1",
                                        elf_class="ELFCLASS64", machine="EM_X86_64",
                                        needs=("GLIBC_2.2.5", "GLIBC_2.34"), version=DRIVER)),
            Mount(f"{LIBDIR}/libnvidia-ml.so.{DRIVER}", f"{CONTAINER_LIBDIR}/libnvidia-ml.so.1", "lib",
                  "gpu.nvidia", "driver-suffix", "utility capability"),
            Mount("/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket", "socket",
                  "gpu.nvidia", "ipc", "persistenced is running", options=("rw", "nosuid", "nodev"),
                  need=Need.OPTIONAL),
        ],
        devices=[Device("/dev/nvidiactl", "c", 195, 255, "gpu.nvidia", "control", "every GPU needs it"),
                 *(Device(f"/dev/nvidia{i}", "c", 195, i, "gpu.nvidia", "gpu", f"GPU {i}") for i in range(8))],
        env=[EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, CONTAINER_LIBDIR, "gpu.nvidia", "driver libraries"),
             EnvOp("NVIDIA_VISIBLE_DEVICES", EnvAction.SET, "all", "gpu.nvidia", "all GPUs are bound")],
        links=[Link(f"{CONTAINER_LIBDIR}/libcuda.so", "libcuda.so.1", "gpu.nvidia", "dev link, as libnvc")],
        checks=[Check("driver-version", Status.OK, f"kernel module {DRIVER}", "gpu.nvidia")],
        rejected=[Rejected(f"{LIBDIR}/libcuda.so.535.104.05", "gpu.nvidia", f"suffix is not {DRIVER}")],
        facts=[Fact("gpu.nvidia", "driver-version", DRIVER),
               *(Fact("gpu.nvidia", "gpu", f"0000:{0x07 + i:02x}:00.0") for i in range(8))],
    )


def fabric_part() -> PlanPart:
    return PlanPart(
        mounts=[Mount("/etc/libibverbs.d", "/etc/libibverbs.d", "config", "fabric.verbs", "providers",
                      "verbs provider list"),
                Mount(f"{LIBDIR}/libibverbs/libmlx5-rdmav34.so", f"{CONTAINER_LIBDIR}/libmlx5-rdmav34.so",
                      "lib", "fabric.verbs", "provider:mlx5", "mlx5_0 is driven by mlx5")],
        devices=[Device("/dev/infiniband/rdma_cm", "c", 10, 56, "fabric.verbs", "rdma_cm", "connection manager"),
                 *(Device(f"/dev/infiniband/uverbs{i}", "c", 231, 192 + i, "fabric.verbs", "uverbs",
                          f"mlx5_{i} port 1 ACTIVE") for i in range(8))],
        env=[EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, CONTAINER_LIBDIR, "fabric.verbs", "verbs providers"),
             EnvOp("UCX_NET_DEVICES", EnvAction.SET, "mlx5_0:1", "fabric.verbs", "first active port")],
        checks=[Check("verbs-provider-abi", Status.WARN, "host rdma-core 44, image 39", "fabric.verbs",
                      "use an image with rdma-core 44")],
        facts=[Fact("fabric.verbs", "hca", f"mlx5_{i}") for i in range(8)],
    )


def mpi_part() -> PlanPart:
    return PlanPart(
        mounts=[Mount("/var/spool/slurmd/pmix.42.0", "/var/spool/slurmd/pmix.42.0", "dir", "mpi.pmix",
                      "pmix-server-tmpdir", "PMIX_SERVER_TMPDIR", options=("rw", "nosuid", "nodev"))],
        env=[EnvOp("PMIX_MCA_psec", EnvAction.SET, "native", "mpi.pmix", "no munge in the image"),
             EnvOp("PMI_FD", EnvAction.PASS, "", "mpi.pmi2", "the PMI2 socket is inherited")],
        facts=[Fact("mpi.pmix", "server-version", "4.2.9")],
    )


PARTS = (nvidia_part, fabric_part, mpi_part)


def merged(order: list[int]) -> BindPlan:
    return BindPlan.merge(("nv", "ib"), [PARTS[i]() for i in order])


# --- merge ------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(len(PARTS))))
def test_shuffled_parts_give_the_identical_digest(order):
    assert merged(order).canonical_json() == merged([0, 1, 2]).canonical_json()


def test_merge_orders_entries_by_destination_and_provider():
    plan = merged([2, 0, 1])
    assert [m.destination for m in plan.mounts] == [
        f"{CONTAINER_LIBDIR}/libcuda.so.1", f"{CONTAINER_LIBDIR}/libmlx5-rdmav34.so",
        f"{CONTAINER_LIBDIR}/libnvidia-ml.so.1", "/etc/libibverbs.d", "/run/nvidia-persistenced/socket",
        "/var/spool/slurmd/pmix.42.0"]
    assert [d.path for d in plan.devices][:3] == ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0",
                                                  "/dev/infiniband/uverbs1"]
    assert [d.path for d in plan.devices][-2:] == ["/dev/nvidia7", "/dev/nvidiactl"]
    # env keeps each provider's own order (an append after a set must stay after it); the
    # identical LD_LIBRARY_PATH append of gpu.nvidia is the fabric's, kept once
    assert [(e.provider, e.name) for e in plan.env] == [
        ("fabric.verbs", "LD_LIBRARY_PATH"), ("fabric.verbs", "UCX_NET_DEVICES"),
        ("gpu.nvidia", "NVIDIA_VISIBLE_DEVICES"),
        ("mpi.pmi2", "PMI_FD"), ("mpi.pmix", "PMIX_MCA_psec")]
    assert plan.request == ("ib", "nv")
    assert len(plan.facts) == 1 + 8 + 8 + 1


def test_two_providers_on_one_destination_the_second_goes_to_rejected():
    rocm = PlanPart(
        mounts=[Mount("/opt/rocm/lib/libamdhip64.so.6", f"{CONTAINER_LIBDIR}/libcuda.so.1", "lib", "gpu.rocm",
                      "rocmliblist", "clashing on purpose")],
        devices=[Device("/dev/nvidia0", "c", 226, 128, "gpu.rocm", "render", "clashing on purpose")])
    plan = BindPlan.merge(("nv", "rocm"), [rocm, nvidia_part()])
    cuda = [m for m in plan.mounts if m.destination == f"{CONTAINER_LIBDIR}/libcuda.so.1"]
    assert [m.provider for m in cuda] == ["gpu.nvidia"]  # "gpu.nvidia" < "gpu.rocm"
    assert [d.provider for d in plan.devices if d.path == "/dev/nvidia0"] == ["gpu.nvidia"]
    assert Rejected("/opt/rocm/lib/libamdhip64.so.6", "gpu.rocm",
                    f"{CONTAINER_LIBDIR}/libcuda.so.1 is already bound by another provider") in plan.rejected
    assert Rejected("/dev/nvidia0", "gpu.rocm", "/dev/nvidia0 is already bound by another provider") in plan.rejected


def test_the_same_entry_from_two_parts_is_kept_once():
    plan = BindPlan.merge(("nv",), [nvidia_part(), nvidia_part()])
    assert len(plan.links) == len(plan.checks) == len(plan.facts) - 8 == 1
    # the second copy of each mount is "already bound": a provider that emits twice shows up
    assert len(plan.mounts) == 3 and len(plan.rejected) == 1 + 3 + 9


# --- serialisation ---------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_entry_and_the_digest():
    plan = merged([0, 1, 2])
    again = BindPlan.from_json(plan.to_json())
    assert again == plan
    assert again.digest == plan.digest
    assert again.mounts[0].provenance.needs == ("GLIBC_2.2.5", "GLIBC_2.34")
    assert again.mounts[-2].need is Need.OPTIONAL


def test_json_document_says_its_schema_and_digest():
    plan = merged([0, 1, 2])
    document = json.loads(plan.to_json())
    assert document["schema"] == 1
    assert document["digest"] == plan.digest == "sha256:" + hashlib.sha256(plan.canonical_json().encode()).hexdigest()
    assert document["devices"][0] == {"path": "/dev/infiniband/rdma_cm", "type": "c", "major": 10, "minor": 56,
                                      "provider": "fabric.verbs", "rule": "rdma_cm",
                                      "reason": "connection manager", "host_path": "", "permissions": "rwm"}


def test_load_plan_reads_a_saved_plan(tmp_path: Path):
    plan = merged([0, 1, 2])
    saved = tmp_path / "plan.json"
    saved.write_text(plan.to_json())
    assert load_plan(saved) == plan


def sealed(doc: dict) -> dict:
    """``doc`` with the digest of its canonical form, as a later or foreign hpcrun would write it."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {**body, "digest": "sha256:" + hashlib.sha256(canonical).hexdigest()}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda doc: {**doc, "devices": doc["devices"][1:]}, "does not match its digest"),
    (lambda doc: {**doc, "digest": doc["digest"].upper()}, "does not match its digest"),
    (lambda doc: sealed({**doc, "schema": 2}), "plan schema 2 is not 1"),
    (lambda doc: sealed({**doc, "mounts": [{"source": "/x"}]}), "is not a bind plan"),
    (lambda doc: sealed({**doc, "devices": [{**doc["devices"][0], "colour": "red"}]}), "is not a bind plan"),
    (lambda doc: [doc], "is not a JSON object"),
])
def test_load_plan_refuses_an_edited_or_foreign_plan(tmp_path: Path, edit, message):
    saved = tmp_path / "plan.json"
    saved.write_text(json.dumps(edit(json.loads(merged([0, 1, 2]).to_json()))))
    with pytest.raises(HpcbindError, match=message):
        load_plan(saved)


def test_the_digest_of_a_saved_plan_is_of_its_canonical_form():
    document = json.loads(merged([0, 1, 2]).to_json())
    assert sealed(document) == document


def test_load_plan_of_a_missing_or_broken_file(tmp_path: Path):
    with pytest.raises(HpcbindError, match="can't read plan .*No such file"):
        load_plan(tmp_path / "absent.json")
    (tmp_path / "cut.json").write_text(merged([0]).to_json()[:100])
    with pytest.raises(HpcbindError, match="is not JSON"):
        load_plan(tmp_path / "cut.json")


# --- the request ----------------------------------------------------------------------------------


def test_request_flags_and_provider_table_are_one_list():
    # --mpi=host is a request but not a flag provider: it needs the image's facts
    assert {f.name for f in fields(Request)} - {"devices", "mpi_host"} == set(PROVIDERS)


def test_request_names_as_the_plan_records_them():
    request = Request(nv=True, ib=True, devices=("nvidia.com/gpu=0",))
    assert request.names == ("nv", "ib", "device:nvidia.com/gpu=0")
    assert Request().names == ()
    assert replace(request, nv=False).names == ("ib", "device:nvidia.com/gpu=0")
