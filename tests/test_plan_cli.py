"""``hpcrun plan`` as a site engineer runs it: on this machine, and on an 8-GPU/8-HCA node
built with the fixture builders (``--sysroot``), in each output form, diffed, captured and
replayed, against a real SIF image and a sandbox, and with the exit codes the help promises.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUSYBOX_SIF, REPO, hpcrun_main
from hosts_fabric import build_mlx5_node
from hosts_gpu import SharedLib, build_nvidia_node, install_lib, nvidia_bus_ids, nvidia_minor
from test_cdi import NVIDIA_YAML, add_drm_sysfs, write

from hpcbind.capture import KEEP_WHOLE, MANIFEST, extract_capture, write_archive
from hpcbind.discover import PROVIDER_FAILED_FIX, Request, load_plan, make_plan
from hpcbind.host.elf import elf_info
from hpcbind.hostroot import HostRoot
from hpcbind.plan import CONTAINER_LIBDIR, EnvAction, Status

GPUS, HCAS, DRIVER = 8, 8, "550.54.15"
# The fixture node's plan in one line, as counted from its builders: the driver's libraries,
# tools and links, the HCAs' verbs and UCX stack; every GPU, HCA and control node; stale
# libraries of driver 535/390 and absent daemons' sockets rejected.
FIXTURE_SUMMARY = re.compile(r"36 mounts, 31 devices, 6 env, 24 links; checks: 3 ok, 0 warn, "
                             r"0 fail; 32 rejected; digest sha256:[0-9a-f]{64}$")
HPCRUN = REPO / ".venv" / "bin" / "hpcrun"
# What a launcher or a user sets that changes a plan; the tests choose these themselves.
PLAN_ENV = re.compile(r"^(OMPI_|PMIX_|PMI_|PRTE_|SLURM_|CUDA_|NVIDIA_|UCX_|NCCL_|HPCBIND_|MELLANOX_|SLINGSHOT_)")


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch):
    for name in [n for n in os.environ if PLAN_ENV.match(n)]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    """One node with both: the HCAs first, then the GPUs (whose ldconfig covers both)."""
    root = tmp_path_factory.mktemp("node")
    build_mlx5_node(root, hcas=HCAS)
    build_nvidia_node(root, gpus=GPUS, driver=DRIVER)
    return root


def plan_json(*args: str) -> dict:
    code, out, err = hpcrun_main("plan", *args, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def diff_hunks(text: str) -> dict[str, list[str]]:
    """The lines of each ``@@ section @@`` of a plan diff."""
    hunks: dict[str, list[str]] = {}
    for line in text.splitlines()[2:]:
        if line.startswith("@@ "):
            current = hunks.setdefault(line.strip("@ "), [])
        else:
            current.append(line)
    return hunks


# --- this machine (no GPU, no RDMA: reference/this-machine.md) -------------------------------------


@pytest.mark.skipif(Path("/proc/driver/nvidia").exists() or Path("/sys/class/infiniband").exists(),
                    reason="this machine has a GPU or an RDMA device: the test is for one without")
def test_live_machine_without_gpu_or_rdma_exits_0_and_says_so():
    env = {k: v for k, v in os.environ.items() if not PLAN_ENV.match(k)}
    done = subprocess.run([str(HPCRUN), "plan", "--nv", "--ib"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert re.search(r"warn +nvidia-driver\n +message: +no NVIDIA driver found", done.stdout)
    assert re.search(r"warn +rdma-devices\n +message: +no RDMA device found", done.stdout)
    assert re.match(r"0 mounts, 0 devices, 0 env, 0 links; checks: 0 ok, 2 warn, 0 fail; 0 rejected; "
                    r"digest sha256:[0-9a-f]{64}$", done.stdout.splitlines()[-1])


# --- the fixture node ------------------------------------------------------------------------------------


def test_fixture_node_devices(node: Path):
    plan = plan_json("--nv", "--ib", "--sysroot", str(node))
    devices = {d["path"]: d for d in plan["devices"]}
    # every GPU, by the minor the driver gave it (procfs), and the control node
    for index in range(GPUS):
        minor = nvidia_minor(index, GPUS)
        gpu = devices[f"/dev/nvidia{minor}"]
        assert (gpu["type"], gpu["major"], gpu["minor"], gpu["provider"]) == ("c", 195, minor, "gpu.nvidia")
        assert nvidia_bus_ids(GPUS)[index] in gpu["reason"]
    assert (devices["/dev/nvidiactl"]["major"], devices["/dev/nvidiactl"]["minor"]) == (195, 255)
    # every HCA's verbs node: uverbsN is 231:192+N (infiniband_verbs class), and rdma_cm
    for index in range(HCAS):
        verbs = devices[f"/dev/infiniband/uverbs{index}"]
        assert (verbs["major"], verbs["minor"], verbs["provider"]) == (231, 192 + index, "fabric.verbs")
        assert verbs["reason"] == f"verbs access to mlx5_{index}"
    assert "/dev/infiniband/rdma_cm" in devices
    assert plan["request"] == ["ib", "nv"]


def test_fixture_node_libraries_env_and_checks(node: Path):
    plan = plan_json("--nv", "--ib", "--sysroot", str(node))
    mounts = {m["destination"]: m for m in plan["mounts"]}
    cuda = mounts[f"{CONTAINER_LIBDIR}/libcuda.so.{DRIVER}"]
    assert cuda["source"] == f"/usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}"
    assert (cuda["provenance"]["soname"], cuda["provenance"]["machine"]) == ("libcuda.so.1", "EM_X86_64")
    assert mounts["/etc/libibverbs.d"]["provider"] == "fabric.verbs"
    assert all(m["options"][:1] in (["ro"], ["nosuid"]) for m in plan["mounts"])
    env = {(e["name"], e["provider"]): e for e in plan["env"]}
    # both providers append the private lib dir: the plan does it once
    assert [(e["action"], e["value"]) for e in plan["env"] if e["name"] == "LD_LIBRARY_PATH"] == [
        (EnvAction.APPEND, CONTAINER_LIBDIR)]
    assert env[("UCX_NET_DEVICES", "fabric.verbs")]["value"] == ",".join(f"mlx5_{i}:1" for i in range(HCAS))
    assert {(c["name"], c["status"]) for c in plan["checks"]} >= {("nvidia-driver", Status.OK),
                                                                  ("rdma-devices", Status.OK)}
    # stale libraries of another driver are not bound, and the plan says why
    assert any(r["candidate"].endswith("libnvidia-ml.so.535.104.05") for r in plan["rejected"])


def test_cli_json_is_the_in_process_plan(node: Path):
    document = plan_json("--nv", "--ib", "--sysroot", str(node))
    assert [len(document[k]) for k in ("mounts", "devices", "env", "links", "rejected")] == [
        36, 31, 6, 24, 32]
    plan = make_plan(Request(nv=True, ib=True), HostRoot(node), {})
    assert document["digest"] == plan.digest  # what a program gets is what hpcrun prints
    assert json.loads(plan.to_json()) == document


def test_table_is_the_default(node: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # a console wide enough for every row
    code, out, _ = hpcrun_main("plan", "--nv", "--ib", "--sysroot", str(node))
    plan = make_plan(Request(nv=True, ib=True), HostRoot(node), {})
    assert code == 0
    assert FIXTURE_SUMMARY.match(out.splitlines()[-1]), out.splitlines()[-1]
    lines = out.splitlines()
    for device in plan.devices:  # one row each, the provider and rule on it
        row = next(line for line in lines if line.split()[:1] == [device.path])
        assert f"{device.type} {device.major}:{device.minor}" in row
        assert device.provider in row.split() and device.rule in row.split()
    assert "\x1b[" not in out  # not a TTY: no colour


def test_piped_table_fits_80_columns(node: Path, monkeypatch):
    """Piped with no $COLUMNS: 80 columns, sections too wide for them stacked one block per
    entry with every path whole (it was one 750-character line per row)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, _ = hpcrun_main("plan", "--nv", "--ib", "--sysroot", str(node))
    plan = make_plan(Request(nv=True, ib=True), HostRoot(node), {})
    lines = out.splitlines()
    assert code == 0 and FIXTURE_SUMMARY.match(lines[-1]), lines[-1]
    assert max(map(len, lines[:-1])) <= 80, max(lines[:-1], key=len)
    for device in plan.devices:
        block = lines.index(f"  {device.path}")
        assert lines[block + 1].split() == ["device:", device.type, f"{device.major}:{device.minor}"]
    for mount in plan.mounts:
        assert f"    source:   {mount.source}" in lines


def test_explain(node: Path):
    code, out, _ = hpcrun_main("plan", "--nv", "--ib", "--sysroot", str(node), "--explain")
    lines = out.splitlines()
    # a line an entry: 36 bound, 31 devices, 6 env, 24 links, 3 checks, 32 not bound
    assert code == 0 and len(lines) == 132
    assert sum(" is bound from " in line for line in lines) == 36
    assert sum(" is device c " in line for line in lines) == 31
    assert sum(line.startswith("not bound: ") for line in lines) == 32
    assert ("/.hpcbind/lib/libcuda.so.550.54.15 is bound from /usr/lib/x86_64-linux-gnu/"
            "libcuda.so.550.54.15 (lib, ro,nosuid,nodev) by gpu.nvidia, rule "
            "capability:compute: compute library of driver 550.54.15") in lines
    assert ("/.hpcbind/lib/libcuda.so.1 links to libcuda.so.550.54.15, made by gpu.nvidia"
            in out)
    assert (f"/dev/infiniband/uverbs3 is device c 231:195 from host /dev/infiniband/uverbs3 by fabric.verbs, "
            f"rule uverbs: verbs access to mlx5_3") in out.splitlines()
    assert any(line.startswith("not bound: /usr/lib64/libnvidia-ml.so.535.104.05: ") for line in out.splitlines())


def test_cdi(node: Path):
    code, out, _ = hpcrun_main("plan", "--nv", "--ib", "--sysroot", str(node), "--cdi")
    plan = make_plan(Request(nv=True, ib=True), HostRoot(node), {})
    spec = json.loads(out)
    assert code == 0
    assert spec["cdiVersion"] == "0.6.0"  # annotations: LD_LIBRARY_PATH appends and the lib dir's links
    edits = spec["devices"][0]["containerEdits"]
    assert [(n["path"], n["major"], n["minor"]) for n in edits["deviceNodes"]] == [
        (d.path, d.major, d.minor) for d in plan.devices]
    assert len(edits["mounts"]) == len(plan.mounts)
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (PyPI) is not installed")
    schema = json.loads((Path(__file__).parent / "data" / "cdi-spec.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(spec)


def test_diff_of_two_selections(node: Path, tmp_path: Path, monkeypatch):
    every = tmp_path / "all.json"
    every.write_text(json.dumps(plan_json("--nv", "--sysroot", str(node))))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "0,1")
    two = tmp_path / "two.json"
    two.write_text(json.dumps(plan_json("--nv", "--sysroot", str(node))))
    code, out, _ = hpcrun_main("plan", "--diff", str(every), str(two))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"--- {every} {load_plan(every).digest}"
    assert lines[1] == f"+++ {two} {load_plan(two).digest}"
    hunks = diff_hunks(out)
    gone = {line[1:].split()[0] for line in hunks["devices"] if line[0] == "-"} - {
        line[1:].split()[0] for line in hunks["devices"] if line[0] == "+"}
    # the GPUs left out are gone, and rejected with the reason; the two kept ones stay
    assert {f"/dev/nvidia{nvidia_minor(i, GPUS)}" for i in range(2, GPUS)} == {p for p in gone if p[-1].isdigit()}
    assert {line[1:].split()[0] for line in hunks["rejected"]} >= gone
    assert "-NVIDIA_VISIBLE_DEVICES  set  all  gpu.nvidia  the GPUs bound into the container" in hunks["environment"]
    code, out, _ = hpcrun_main("plan", "--diff", str(two), str(two))
    assert (code, out) == (0, f"plans are identical ({load_plan(two).digest})\n")


def test_capture_replays_to_the_same_digest(node: Path, tmp_path: Path):
    archive = tmp_path / "node.tar.gz"
    captured = plan_json("--nv", "--ib", "--sysroot", str(node), "--capture", str(archive))
    replayed = plan_json("--nv", "--ib", "--sysroot", str(archive))
    assert replayed["digest"] == captured["digest"]
    assert replayed == captured
    # exactly what discovery read: a part of the node's files, and never what it did not look at
    names = {n.rstrip("/") for n in subprocess.run(["tar", "tzf", str(archive)], capture_output=True, text=True,
                                                   check=True).stdout.split()}
    assert names - {MANIFEST} < {p.relative_to(node).as_posix() for p in node.rglob("*")}
    assert {"etc/ld.so.cache", "proc/driver/nvidia/version", f"usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}",
            "sys/class/infiniband/mlx5_0", "etc/libibverbs.d/mlx5.driver", MANIFEST} <= names
    assert "lib/firmware/nvidia/535.104.05/gsp_ga10x.bin" not in names  # another driver's firmware
    assert "sys/class/net/ib0" not in names  # IPoIB netdevs: no part of an InfiniBand plan


def test_a_plain_tar_extract_replays_all_but_the_sockets(node: Path, tmp_path: Path):
    archive = tmp_path / "node.tar.gz"
    hpcrun_main("plan", "--nv", "--sysroot", str(node), "--capture", str(archive), "--json")
    extracted = tmp_path / "tree"
    extracted.mkdir()
    subprocess.run(["tar", "xzf", str(archive), "-C", str(extracted)], check=True)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(plan_json("--nv", "--sysroot", str(archive))))
    b.write_text(json.dumps(plan_json("--nv", "--sysroot", str(extracted))))
    code, out, _ = hpcrun_main("plan", "--diff", str(a), str(b))
    assert diff_hunks(out) == {
        "mounts": ["-/var/run/nvidia-persistenced/socket  /var/run/nvidia-persistenced/socket  socket  "
                   "ro,nosuid,nodev,noexec  optional  gpu.nvidia  ipc:socket  nvidia-persistenced's socket"],
        "rejected": ["+/var/run/nvidia-persistenced/socket  no nvidia-persistenced's socket on the host now  gpu.nvidia"]}


def test_big_libraries_are_kept_as_their_elf_metadata(tmp_path: Path):
    """libstdc++ (2 MB, on every machine with gcc) hollowed: the facts discovery reads of it stay."""
    library = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
    assert Path(library).resolve().stat().st_size > KEEP_WHOLE
    firmware = tmp_path / "host/lib/firmware/blob.bin"  # big and not ELF: only its size is kept
    firmware.parent.mkdir(parents=True)
    firmware.write_bytes(os.urandom(KEEP_WHOLE + 1))
    archive = tmp_path / "capture.tar.gz"
    write_archive(HostRoot(), [library], archive)
    write_archive(HostRoot(tmp_path / "host"), ["/lib/firmware/blob.bin"], tmp_path / "firmware.tar.gz")
    for source, dest in ((archive, tmp_path / "lib-root"), (tmp_path / "firmware.tar.gz", tmp_path / "fw-root")):
        extract_capture(source, dest)
    original, kept = elf_info(Path(library)), elf_info(tmp_path / "lib-root" / library.lstrip("/"))
    assert (kept.soname, kept.machine, kept.elf_class, kept.needed, kept.version_needs, kept.version_defs) == (
        original.soname, original.machine, original.elf_class, original.needed, original.version_needs,
        original.version_defs)
    assert (tmp_path / "lib-root" / library.lstrip("/")).is_symlink()  # libstdc++.so.6 -> libstdc++.so.6.0.30
    assert archive.stat().st_size < Path(library).resolve().stat().st_size / 2
    blob = (tmp_path / "fw-root/lib/firmware/blob.bin").read_bytes()
    assert len(blob) == KEEP_WHOLE + 1 and not any(blob)


def test_cdi_devices_by_name_and_their_capture(tmp_path: Path):
    root = tmp_path / "host"
    write(root, "/etc/cdi/nvidia.yaml", NVIDIA_YAML)
    add_drm_sysfs(root)
    archive = tmp_path / "cdi.tar.gz"
    plan = plan_json("--device", "nvidia.com/gpu=1", "--sysroot", str(root), "--capture", str(archive))
    assert plan["request"] == ["device:nvidia.com/gpu=1"]
    assert [(d["path"], d["major"], d["minor"]) for d in plan["devices"]] == [
        ("/dev/dri/card2", 226, 2), ("/dev/dri/renderD129", 226, 129)]
    # no node and no numbers for the NVIDIA nodes in this tree: refused, with the reason
    assert {r["candidate"] for r in plan["rejected"]} >= {"/dev/nvidia1", "/dev/nvidiactl"}
    assert plan_json("--device", "nvidia.com/gpu=1", "--sysroot", str(archive)) == plan


def test_capture_of_this_machine_replays(tmp_path: Path):
    archive = tmp_path / "live.tar.gz"
    live = plan_json("--nv", "--ib", "--capture", str(archive))
    assert plan_json("--nv", "--ib", "--sysroot", str(archive))["digest"] == live["digest"]


# Open MPI 4's mpirun, as a rank sees it (reference/mpi-fabric-pmi.md §4)
ORTE_RANK_ENV = {
    "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1234567890.0;tcp://127.0.0.1:40000",
    "PMIX_NAMESPACE": "1234567890", "PMIX_RANK": "1", "PMIX_SERVER_URI3": "pmix-server.4242;tcp4://127.0.0.1:40001",
    "PMIX_SERVER_TMPDIR": "/tmp/ompi.node01.0/pid.4242", "PMIX_VERSION": "3.2.3",
}


def test_the_host_mpi_provider_joins_only_under_a_launcher(node: Path, monkeypatch):
    alone = plan_json("--ib", "--sysroot", str(node))
    assert not [f for f in alone["facts"] if f["provider"] == "mpi.host"]
    for name, value in ORTE_RANK_ENV.items():
        monkeypatch.setenv(name, value)
    ranked = plan_json("--ib", "--sysroot", str(node))
    assert {"provider": "mpi.host", "name": "launcher", "value": "openmpi-orte"} in ranked["facts"]
    passed = {e["name"] for e in ranked["env"] if e["provider"] == "mpi.host" and e["action"] == "pass"}
    assert {"OMPI_COMM_WORLD_RANK", "PMIX_NAMESPACE", "PMIX_SERVER_URI3"} <= passed
    assert ranked["devices"] == alone["devices"]


# --- images and exit codes -------------------------------------------------------------------------


def test_a_failed_check_exits_1(node: Path, tmp_path: Path):
    image = tmp_path / "old-glibc"  # a sandbox whose glibc stops at 2.17 (CentOS 7)
    install_lib(image, "/usr/lib64/libc.so.6", SharedLib("libc.so.6", needs=(), defines=("GLIBC_2.2.5", "GLIBC_2.17")))
    code, out, err = hpcrun_main("plan", "--nv", "--sysroot", str(node), "--explain", str(image))
    assert (code, err) == (1, "")
    assert any(line.startswith(f"check glibc-floor fail (preflight): libnvidia-pkcs11-openssl3.so.{DRIVER} "
                               "needs GLIBC_2.34, image has 2.17") for line in out.splitlines())


def test_a_provider_that_cannot_read_the_host_is_a_failed_check(tmp_path: Path, monkeypatch):
    """A dangling link with an over-long target where a graphics config file should be: stat()
    fails with ENAMETOOLONG inside the NVIDIA provider. The plan says so; nothing crashes."""
    build_nvidia_node(tmp_path, gpus=2, driver=DRIVER)
    config = tmp_path / "usr/share/glvnd/egl_vendor.d/10_nvidia.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.unlink(missing_ok=True)
    config.symlink_to("x" * 300)
    monkeypatch.setenv("NVIDIA_DRIVER_CAPABILITIES", "all")  # graphics: the config files are looked at
    code, out, err = hpcrun_main("plan", "--nv", "--sysroot", str(tmp_path), "--explain")
    assert (code, err) == (1, "")
    assert out == (f"check discovery fail (gpu.nvidia): gpu.nvidia could not read the host: File name too long "
                   f"(/usr/share/glvnd/egl_vendor.d/{'x' * 300}); fix: {PROVIDER_FAILED_FIX}\n")


@pytest.mark.skipif(not BUSYBOX_SIF.exists(), reason=f"conformance image {BUSYBOX_SIF} not found")
def test_a_sif_image_is_checked(node: Path):
    """The reference implementation's busybox SIF: no glibc, so the driver cannot load there."""
    code, out, _ = hpcrun_main("plan", "--nv", "--sysroot", str(node), "--json", str(BUSYBOX_SIF))
    checks = {(c["name"], c["status"]) for c in json.loads(out)["checks"]}
    assert code == 1
    assert ("glibc-floor", "fail") in checks
    assert ("architecture", "ok") in checks  # busybox's /bin/sh is x86-64, as the host libraries


@pytest.mark.parametrize(("args", "message"), [
    (["--sysroot", "/nonexistent"], "--sysroot /nonexistent does not exist"),
    (["no-such-image.sif"], "image no-such-image.sif does not exist"),
    (["--device", "nvidia.com/gpu"], "--device 'nvidia.com/gpu' is not a CDI device name"),
    (["--diff", "/nonexistent/a.json", "/nonexistent/b.json"], "can't read plan /nonexistent/a.json"),
])
def test_user_errors_exit_255_on_one_line(args, message):
    code, out, err = hpcrun_main("plan", *args)
    assert (code, out) == (255, "")
    assert err.startswith(f"hpcrun: error: {message}")
    assert err.count("\n") == 1


def test_a_capture_that_is_not_one_is_refused(tmp_path: Path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "x").write_text("x")
    subprocess.run(["tar", "czf", str(bad), "-C", str(tmp_path), "--transform", "s,^x$,../x,", "x"], check=True)
    code, _, err = hpcrun_main("plan", "--sysroot", str(bad))
    assert code == 255
    assert err == f"hpcrun: error: {bad} is not an hpcrun capture: ../x lies outside the archive's root; " \
                  "give a directory, or an archive written by 'hpcrun plan --capture'\n"


def test_help_states_the_exit_codes():
    done = subprocess.run([sys.executable, "-m", "hpcbind.cli", "plan", "--help"], capture_output=True,
                          text=True, cwd=REPO, check=True)
    assert "0 when the plan was made (even when nothing was found), 1 when a check failed" in " ".join(
        done.stdout.split())
