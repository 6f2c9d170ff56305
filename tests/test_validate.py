"""``hpcrun validate``: the example image on this machine (MPI passes, hardware checks skip
with the host's reason), images that fail (busybox: no python3) or need the C MPI probe, the
in-container probe script run for real, and the comparisons against fixture hosts built as
the kernel lays out sysfs/procfs (tests/hosts_gpu.py, tests/hosts_fabric.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, REPO
from hosts_fabric import build_mlx5_node
from hosts_gpu import build_amd_node, build_nvidia_node
from hpcbind import validate
from hpcbind.commands import validate as command
from hpcbind.discover import read_image_facts
from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from mpi_images import build_mpi_image

EXAMPLE = REPO / "examples" / "example.sif"
if not EXAMPLE.exists():
    pytest.skip(f"{EXAMPLE} missing: build it with 'make example'", allow_module_level=True)

HOST_PYTHON = "/usr/bin/python3"  # runs the probe script as an image's python3 would
HARDWARE = {  # check -> (the HostView field it needs, its flag, the skip's words)
    "gpu.nvidia.visible": ("nvidia", "--nv", "NVIDIA GPU"),
    "gpu.cuda.init": ("nvidia", "--nv", "NVIDIA GPU"),
    "gpu.rocm.devices": ("rocm", "--rocm", "AMD GPU"),
    "fabric.rdma.ports": ("rdma", "--ib", "RDMA device"),
    "fabric.verbs.provider": ("rdma", "--ib", "RDMA device"),
}


def hpcrun_validate(capsys, *argv: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """``hpcrun validate ARGV`` through the command module: (status, name -> (OUTCOME, rest
    of its line), whole output)."""
    parser = argparse.ArgumentParser()
    command.configure(parser)
    status = command.run(parser.parse_args(list(argv)))
    out = capsys.readouterr().out
    lines = {}
    for line in out.splitlines()[:-1]:
        outcome, name, rest = line.split(None, 2)
        lines[name] = (outcome, rest)
    return status, lines, out


# --- whole runs on this machine ----------------------------------------------------------------


def test_example_image_initialises_its_mpi(capsys):
    status, lines, out = hpcrun_validate(capsys, str(EXAMPLE))
    facts = read_image_facts(EXAMPLE)
    library = facts.mpi[0]
    assert status == 0, out
    assert lines["probe"][0] == "PASS" and "mpi4py" in lines["probe"][1]
    outcome, message = lines["mpi.init"]
    assert outcome == "PASS"
    # MPI_Get_library_version inside names the release the image's library carries
    assert f"{library.vendor} v{library.version}" in message, message
    assert message.startswith("2 ranks under mpirun.openmpi -np 2") and "(mpi4py " in message
    assert out.splitlines()[-1] == "2 passed, 0 failed, 5 skipped"


def _host_has(field: str) -> bool:
    """Whether this host has the hardware, read from the kernel's own files, not through
    the discovery code under test: NVIDIA's driver lists its GPUs under /proc, AMD's
    compute node is /dev/kfd, RDMA devices are under /sys/class/infiniband."""
    if field == "nvidia":
        return bool(os.listdir("/proc/driver/nvidia/gpus")) \
            if os.path.isdir("/proc/driver/nvidia/gpus") else False
    if field == "rocm":
        return os.path.exists("/dev/kfd")
    return os.path.isdir("/sys/class/infiniband") and bool(os.listdir("/sys/class/infiniband"))


def test_hardware_checks_skip_with_this_hosts_reason(capsys):
    _, lines, _ = hpcrun_validate(capsys, str(EXAMPLE))
    for name, (field, flag, what) in HARDWARE.items():
        outcome, message = lines[name]
        assert outcome == "SKIP", name
        expected = (f"not requested: give {flag}" if _host_has(field)
                    else f"this host has no {what} (")
        assert message.startswith(expected), (name, message)


def test_busybox_fails_for_want_of_python3(capsys):
    status, lines, out = hpcrun_validate(capsys, str(BUSYBOX_SIF))
    assert status == 1
    outcome, message = lines["probe"]
    assert outcome == "FAIL"
    assert message.startswith("the image has no python3 to run the checks: ")
    assert message.endswith("; fix: install python3 in the image (the in-container checks are "
                            "python3 -c scripts)")
    assert lines["mpi.init"] == ("SKIP", "the image has no MPI library (no libmpi.so or "
                                 "libmpich.so in its loader's paths): nothing to launch")
    assert out.splitlines()[-1] == "0 passed, 1 failed, 6 skipped"


@pytest.mark.parametrize("family, launcher, compiler, vendor", [
    ("openmpi", "mpirun.openmpi", "mpicc.openmpi", "Open MPI v"),
    ("mpich", "mpiexec.mpich", "mpicc.mpich", "MPICH Version: "),
])
def test_an_image_without_python_gets_the_c_probe(capsys, tmp_path, family, launcher, compiler, vendor):
    image = build_mpi_image(family, tmp_path)  # the image's MPI and its loader, nothing else
    version = read_image_facts(image).mpi[0].version
    status, lines, _ = hpcrun_validate(capsys, "--launcher", launcher, str(image))
    assert status == 1 and lines["probe"][0] == "FAIL"
    outcome, message = lines["mpi.init"]
    assert outcome == "PASS"
    assert f"({'a C probe built with ' + compiler}): {vendor}{version}" in message, message


def test_a_launcher_of_another_mpi_family_fails_with_hpcruns_reason(capsys):
    status, lines, _ = hpcrun_validate(capsys, "--launcher", "mpiexec.mpich", str(EXAMPLE))
    outcome, message = lines["mpi.init"]
    assert status == 1 and outcome == "FAIL"
    # the launcher's preflight refuses before any rank starts; its one line is the reason
    assert message.startswith("mpiexec.mpich -np 2 (mpi4py ")
    assert "hpcrun: error: the image's MPI is Open MPI" in message
    assert message.endswith("fix: run 'hpcrun -v mpiexec.mpich -np 2 IMAGE ...' by hand; "
                            "'hpcrun plan --explain IMAGE' shows the MPI checks")


@pytest.mark.parametrize("output, gist", [
    # Open MPI when MPI_Init fails on two ranks (seen here while the runtime was being changed)
    ("-" * 74 + "\nIt looks like MPI_INIT failed for some reason; your parallel process is\n"
     "likely to abort.\n\n  PML add procs failed\n  --> Returned \"Not found\" (-13) instead "
     "of \"Success\" (0)\n" + "-" * 74 + "\n[vm:10043] *** An error occurred in MPI_Init\n"
     "[vm:10043] *** reported by process [1271463937,1]\n", "An error occurred in MPI_Init"),
    ("Traceback (most recent call last):\n  File \"/x/elf.py\", line 17, in <module>\n"
     "    from elftools.common.exceptions import ELFError\n"
     "ModuleNotFoundError: No module named 'elftools'\n",
     "ModuleNotFoundError: No module named 'elftools'"),
    ("/tmp/w/mpi-probe: error while loading shared libraries: libmpi.so.40: cannot open shared "
     "object file: No such file or directory\n[vm:1] 1 more process has sent help message\n",
     "/tmp/w/mpi-probe: error while loading shared libraries: libmpi.so.40: cannot open shared "
     "object file: No such file or directory"),
])
def test_a_failure_page_becomes_one_line(output, gist):
    assert validate._gist(output) == gist


def test_an_unknown_launcher_is_refused_before_anything_runs(capsys):
    with pytest.raises(HpcbindError, match="'orterun2' is not a launcher hpcrun knows"):
        hpcrun_validate(capsys, "--launcher", "orterun2", str(EXAMPLE))


# --- the probe script, run for real on this host -----------------------------------------------


def run_probe_script(*sections: str, path: str = "/usr/bin:/bin") -> dict:
    done = subprocess.run([HOST_PYTHON, "-c", validate.PROBE, *sections], capture_output=True,
                          text=True, env={"PATH": path}, check=True)
    return json.loads(done.stdout)


def test_probe_answers_every_section_on_a_host_without_devices():
    answer = run_probe_script("nvidia", "cuda", "rocm", "rdma", "verbs")
    assert answer["python"].startswith("3.")
    if not Path("/proc/driver/nvidia").exists():
        assert "error" in answer["nvidia"] and "libcuda.so.1" in answer["cuda"]["error"]
    if not Path("/sys/class/infiniband").exists():
        assert answer["rdma"] == {"ports": {}, "uverbs": []}
        assert "error" in answer["verbs"]
    assert answer["rocm"]["kfd"] is Path("/dev/kfd").exists()


@pytest.fixture(scope="module")
def gpu_node(tmp_path_factory) -> HostRoot:
    root = tmp_path_factory.mktemp("gpu-node")
    build_nvidia_node(root, gpus=3, mig=())
    build_amd_node(root, gpus=2)
    return HostRoot(root)


def nvidia_smi(directory: Path, uuids: list[str]) -> str:
    """A stand-in for the driver's nvidia-smi (no GPU here) printing ``-L`` as it does: one
    line per GPU, its MIG devices indented below it."""
    lines = [f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: {u})\n"
             f"  MIG 1g.10gb     Device  0: (UUID: MIG-{u[4:]})" for i, u in enumerate(uuids)]
    tool = directory / "nvidia-smi"
    tool.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    tool.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def test_nvidia_gpus_by_uuid_through_nvidia_smi(gpu_node, tmp_path):
    request = validate.Request("app.sif", nv=True)
    host = validate.host_view(gpu_node, {})
    assert len(host.nvidia.uuids) == 3
    same = run_probe_script("nvidia", path=nvidia_smi(tmp_path, list(host.nvidia.uuids)))
    result = validate.nvidia_visible(request, host, validate.Probe(same))
    assert (result.outcome, result.message) == (validate.Outcome.PASS,
                                                "3 GPUs, the host's UUIDs (nvidia-smi -L)")
    fewer = run_probe_script("nvidia", path=nvidia_smi(tmp_path, list(host.nvidia.uuids[:1])))
    result = validate.nvidia_visible(request, host, validate.Probe(fewer))
    assert result.outcome is validate.Outcome.FAIL
    assert result.message.startswith(f"the container sees 1 GPUs ['{host.nvidia.uuids[0]}']")
    assert "CUDA_VISIBLE_DEVICES" in result.fix


def test_selection_decides_what_the_container_should_see(gpu_node):
    every = validate.host_view(gpu_node, {})
    chosen = validate.host_view(gpu_node, {"CUDA_VISIBLE_DEVICES": "2,0", "ROCR_VISIBLE_DEVICES": "1"})
    assert chosen.nvidia.uuids == (every.nvidia.uuids[2], every.nvidia.uuids[0])
    assert len(every.rocm.render) == 2 and len(chosen.rocm.render) == 1
    assert chosen.rocm.render[0] in every.rocm.render
    assert validate.host_view(gpu_node, {"NVIDIA_VISIBLE_DEVICES": "void"}).nvidia.uuids == ()


def test_cuda_init_without_a_driver_says_so(gpu_node):
    answer = run_probe_script("cuda")  # this host has no libcuda.so.1
    if "count" in answer:
        pytest.skip("this host has a CUDA driver")
    result = validate.cuda_init(validate.Request("app.sif", nv=True), validate.host_view(gpu_node, {}),
                                validate.Probe(answer))
    assert result.outcome is validate.Outcome.FAIL
    assert result.message == f"CUDA driver API: {answer['cuda']['error']}"


def test_rocm_devices(gpu_node):
    host = validate.host_view(gpu_node, {})
    request = validate.Request("app.sif", rocm=True)
    ok = validate.rocm_devices(request, host, validate.Probe({"rocm": {"kfd": True,
                                                                       "render": list(host.rocm.render)}}))
    assert ok.outcome is validate.Outcome.PASS
    bad = validate.rocm_devices(request, host, validate.Probe({"rocm": {"kfd": False, "render": []}}))
    assert bad.message == f"the container lacks /dev/kfd, {', '.join(host.rocm.render)}"


@pytest.fixture(scope="module")
def rdma_node(tmp_path_factory) -> HostRoot:
    root = tmp_path_factory.mktemp("rdma-node")
    build_mlx5_node(root, hcas=2, down=(1,))
    return HostRoot(root)


def test_rdma_ports_inside_against_the_host(rdma_node):
    host = validate.host_view(rdma_node, {})
    assert dict(host.rdma.ports) == {"mlx5_0/1": "ACTIVE", "mlx5_1/1": "DOWN"}
    request = validate.Request("app.sif", ib=True)
    same = {"rdma": {"ports": dict(host.rdma.ports), "uverbs": list(host.rdma.uverbs)}}
    assert validate.rdma_ports(request, host, validate.Probe(same)).outcome is validate.Outcome.PASS
    partial = {"rdma": {"ports": {"mlx5_0/1": "ACTIVE"}, "uverbs": list(host.rdma.uverbs[:1])}}
    result = validate.rdma_ports(request, host, validate.Probe(partial))
    assert result.outcome is validate.Outcome.FAIL
    assert result.message == (f"mlx5_1/1 DOWN on the host, absent inside; "
                              f"{host.rdma.uverbs[1]} missing inside")
    # HPCBIND_HCA narrows what the container should have
    only = validate.host_view(rdma_node, {"HPCBIND_HCA": "mlx5_0"})
    assert validate.rdma_ports(request, only, validate.Probe(partial)).outcome is validate.Outcome.PASS


def test_verbs_provider(rdma_node):
    host = validate.host_view(rdma_node, {})
    request = validate.Request("app.sif", ib=True)
    real = run_probe_script("verbs")  # this host's rdma-core, without a device to list
    if "error" in real["verbs"]:
        result = validate.verbs_provider(request, host, validate.Probe(real))
        assert result.outcome is validate.Outcome.FAIL
        assert result.message == f"verbs: {real['verbs']['error']}" and "rdma-core" in result.fix
    listed = {"verbs": {"source": "ibv_devices", "devices": ["mlx5_0"]}}
    result = validate.verbs_provider(request, host, validate.Probe(listed))
    assert result.message == "ibv_devices lists ['mlx5_0'], not ['mlx5_1']: their provider did not load"


def test_a_check_needs_its_flag_and_its_hardware(gpu_node, rdma_node):
    gpus = validate.host_view(gpu_node, {})
    assert validate.probe_sections(validate.Request("x", nv=True, ib=True), gpus) == ["nvidia", "cuda"]
    skip = validate.nvidia_visible(validate.Request("x"), gpus, validate.Probe(None, "unused"))
    assert (skip.outcome, skip.message) == (validate.Outcome.SKIP,
                                            "not requested: give --nv to check this host's NVIDIA GPUs")
    # asked for and present, but the probe did not run: a failure, never a pass
    failed = validate.nvidia_visible(validate.Request("x", nv=True), gpus, validate.Probe(None, "boom"))
    assert failed.outcome is validate.Outcome.FAIL and "see 'probe'" in failed.message
    no_rdma = validate.rdma_ports(validate.Request("x", ib=True), gpus, validate.Probe({}))
    assert no_rdma.message == "this host has no RDMA device (/sys/class/infiniband lists none)"
    rdma = validate.host_view(rdma_node, {})
    assert validate.probe_sections(validate.Request("x", nv=True, ib=True), rdma) == ["rdma", "verbs"]


def test_render_gives_one_line_per_check_and_the_fix_of_a_failure():
    results = [validate.Result("probe", validate.Outcome.PASS, "python3 3.11 runs"),
               validate.Result("mpi.init", validate.Outcome.FAIL, "no answer", "run it by hand"),
               validate.Result("gpu.cuda.init", validate.Outcome.SKIP, "no GPU", "not shown")]
    assert validate.render(results).splitlines() == [
        "PASS  probe          python3 3.11 runs",
        "FAIL  mpi.init       no answer; fix: run it by hand",
        "SKIP  gpu.cuda.init  no GPU",
        "1 passed, 1 failed, 1 skipped",
    ]
    assert validate.failed(results) and not validate.failed(results[::2])
