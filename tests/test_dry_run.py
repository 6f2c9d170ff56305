"""The seam: ``hpcrun exec --dry-run`` shows the whole container, and the apply log says
what was skipped or changed on the way from plan and options to the mounts.

The dry runs run as the unprivileged user; the apply-log cases call ``assemble`` on a plan
whose entries are made for each case.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import Unprivileged
from leftovers import HostState, leftovers
from hpcbind import config
from hpcbind.assemble import Caller, RunOptions, assemble
from hpcbind.image.source import locate
from hpcbind.plan import RO_BIND, BindPlan, Device, EnvAction, EnvOp, Mount, PlanPart

CDI_DIR = Path("/var/run/cdi")


def dry_run(unprivileged: Unprivileged, *args: str, cwd: str | None = None,
            env: dict[str, str] | None = None) -> dict:
    r = unprivileged.run("exec", "--dry-run", "--json", *args, cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def mounts(shown: dict) -> dict[str, dict]:
    return {m["destination"]: m for m in shown["mounts"]}


def test_plain_dry_run_shows_every_mount_and_runs_nothing(unprivileged: Unprivileged):
    witness = unprivileged.root / "ran"
    before = HostState.now(unprivileged.uid)
    shown = dry_run(unprivileged, str(unprivileged.busybox_sif), "touch", str(witness))
    assert leftovers(unprivileged.uid, before) == {}  # nothing mounted, no FUSE server
    assert not witness.exists()
    home = pwd.getpwuid(unprivileged.uid).pw_dir
    assert shown["command"] == ["touch", str(witness)]
    assert shown["cwd"] == str(unprivileged.root)
    assert shown["image"] == {"path": str(unprivileged.busybox_sif), "kind": "sif"}
    by_destination = mounts(shown)
    assert [m["destination"] for m in shown["mounts"]][:5] == [
        "/", "/etc/passwd", "/etc/group", "/proc", "/sys"]
    assert by_destination["/proc"] == {
        "source": "/proc", "destination": "/proc", "options": ["rw", "rbind", "nosuid", "nodev"],
        "provider": "runtime", "reason": "processes; MPI and debuggers read /proc/self",
        "need": "required"}
    assert by_destination["/dev"]["options"] == ["rw", "rbind", "nosuid"]  # device nodes work
    assert by_destination[home] == {
        "source": home, "destination": home, "options": ["rw", "rbind", "nosuid", "nodev"],
        "provider": "runtime", "reason": "home directory", "need": "required"}
    assert by_destination["/etc/resolv.conf"]["need"] == "optional"
    # the test user's scratch directory is under /tmp, which is bound whole
    assert str(unprivileged.root) not in by_destination
    assert shown["log"] == [f"current directory {unprivileged.root}: not bound again (inside "
                            "/tmp, host /tmp (mount.tmp))"]
    assert shown["env"]["base"]["HOME"] == home
    assert shown["env"]["base"]["APPTAINER_CONTAINER"] == str(unprivileged.busybox_sif)
    assert shown["checks"] == [] and shown["devices"] == []


def test_dry_run_table_names_providers_and_reasons(unprivileged: Unprivileged):
    r = unprivileged.run("exec", "--dry-run", "--bind", "/etc:/data:ro",
                         str(unprivileged.busybox_sif), "true")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == [f"Container of {unprivileged.busybox_sif} (sif)", "command: true"]
    (data,) = [ln.split() for ln in lines if ln.startswith("  /data ")]
    assert data == ["/data", "/etc", "ro,rbind,nosuid,nodev", "user:", "--bind"]


def test_dry_run_with_nv_on_a_host_without_gpu_shows_the_providers_checks(
        unprivileged: Unprivileged):
    shown = dry_run(unprivileged, "--nv", "--ib", str(unprivileged.busybox_sif), "true")
    assert shown["checks"] == [
        {"status": "warn", "name": "rdma-devices",
         "message": "no RDMA device found (no /sys/class/infiniband)",
         "fix": "run on a node with an InfiniBand, RoCE, Slingshot or Omni-Path NIC, or drop --ib"},
        {"status": "warn", "name": "nvidia-driver",
         "message": "no NVIDIA driver found (no /proc/driver/nvidia/version)",
         "fix": "run on a GPU node, or load the nvidia kernel module"},
    ]


def test_dry_run_contained(unprivileged: Unprivileged):
    shown = dry_run(unprivileged, "--contain", str(unprivileged.busybox_sif), "true")
    home = shown["env"]["base"]["HOME"]
    destinations = [m["destination"] for m in shown["mounts"]]
    assert destinations == ["/", "/dev", "/etc/passwd", "/etc/group", "/proc", "/sys",
                            "/dev/pts", "/dev/shm", "/etc/hosts", "/etc/resolv.conf"]
    assert mounts(shown)["/dev"]["source"] == "(tmpfs)"  # the image's own /dev hidden
    assert [d["path"] for d in shown["devices"]] == [
        "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    assert {"path": "/dev/fd", "target": "/proc/self/fd"} in shown["links"]
    assert shown["cwd"] == home
    assert shown["log"] == [
        "/tmp and /var/tmp: the image's, private and writable (--contain)",
        f"home {home}: not bound (--contain without --home); {home} is an empty directory",
        f"current directory {unprivileged.root}: not bound (--contain)",
    ]


def test_dry_run_user_binds_and_home(unprivileged: Unprivileged, tmp_path_factory):
    data = unprivileged.root / "data"
    data.mkdir(exist_ok=True)
    os.chown(data, unprivileged.uid, unprivileged.gid)
    shown = dry_run(unprivileged, "--bind", f"{data}:/data:ro,{data}:/scratch",
                    "--home", f"{data}:/home/me", str(unprivileged.busybox_sif), "true",
                    cwd="/")
    by_destination = mounts(shown)
    assert by_destination["/data"]["options"] == ["ro", "rbind", "nosuid", "nodev"]
    assert by_destination["/scratch"]["options"] == ["rw", "rbind", "nosuid", "nodev"]
    assert {by_destination[d]["provider"] for d in ("/data", "/scratch", "/home/me")} == {"user"}
    assert by_destination["/home/me"]["reason"] == "--home"
    assert shown["env"]["base"]["HOME"] == "/home/me"
    assert shown["log"] == ["current directory /: not bound (a system directory; the image's "
                            "is used)"]


@pytest.mark.skipif(not shutil.which("mpirun.openmpi"), reason="Open MPI missing")
def test_dry_run_of_an_mpi_rank_shows_the_rendezvous(unprivileged: Unprivileged):
    """Under mpirun a rank's container has the launcher's PMIx directories (mpi.host)."""
    r = subprocess.run(unprivileged.command(
        "mpirun.openmpi", "-np", "1", str(unprivileged.launcher), "exec", "--dry-run", "--json",
        str(unprivileged.busybox_sif), "true"), capture_output=True, text=True, timeout=120,
        cwd=str(unprivileged.root))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    from_mpi = [m for m in shown["mounts"] if m["provider"] == "mpi.host"]
    assert from_mpi and all(m["source"] == m["destination"] for m in from_mpi)
    assert any(m["source"].startswith("/tmp/ompi.") for m in from_mpi), from_mpi
    passed = {e["name"] for e in shown["env"]["edits"] if e["action"] == "pass"}
    assert {"OMPI_COMM_WORLD_RANK", "PMIX_RANK"} <= passed


# --- the apply log, case by case ---------------------------------------------------------------

def caller(tmp_path: Path) -> Caller:
    return Caller({"PATH": "/usr/bin"}, str(tmp_path), str(tmp_path / "home"))


def plan_of(**entries) -> BindPlan:
    return BindPlan.merge(("case",), [PlanPart(**{k: list(v) for k, v in entries.items()})])


@pytest.fixture
def busybox(data):
    return locate(str(data / "sif/singularityce/images/busybox_amd64.sif"))


def site(tmp_path: Path, text: str = ""):
    f = tmp_path / "site.toml"
    f.write_text(text)
    return config.load(str(f))


def test_device_reachable_through_the_hosts_dev_is_logged(tmp_path, busybox):
    plan = plan_of(devices=[Device("/dev/nvidia0", "c", 195, 0, "gpu.nvidia", "selected-gpu"),
                            Device("/dev/infiniband/uverbs0", "c", 231, 192, "fabric.verbs",
                                   "hca", host_path="/dev/infiniband/uverbs3")])
    assembly = assemble(RunOptions(image="x", argv=("true",)), site(tmp_path), busybox, plan,
                        caller(tmp_path))
    assert [(d.source, d.destination) for d in assembly.spec.devices] == [
        ("/dev/infiniband/uverbs3", "/dev/infiniband/uverbs0")]
    assert "device /dev/nvidia0 (gpu.nvidia): not bound by itself, the host's /dev is " \
           "(mount.dev = yes)" in assembly.log
    minimal = assemble(RunOptions(image="x", argv=("true",)),
                       site(tmp_path, '[mount]\ndev = "minimal"\n'), busybox, plan, caller(tmp_path))
    assert ("/dev/nvidia0", "/dev/nvidia0") in [(d.source, d.destination)
                                                for d in minimal.spec.devices]
    assert not [line for line in minimal.log if line.startswith("device ")]


def test_mount_options_are_honoured_or_logged(tmp_path, busybox):
    plan = plan_of(mounts=[
        Mount("/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket", "socket",
              "gpu.nvidia", "ipc", options=("ro", "nosuid", "nodev", "noexec")),
        Mount("/opt/vendor", "/opt/vendor", "dir", "cdi", "vendor.com/x=a",
              options=("rw", "rbind", "nosymfollow", "rprivate")),
        Mount("/usr/lib/libx.so.1", "/.hpcbind/lib/libx.so.1", "lib", "fabric.verbs", "provider",
              options=RO_BIND),
    ])
    assembly = assemble(RunOptions(image="x", argv=("true",)), site(tmp_path), busybox, plan,
                        caller(tmp_path))
    binds = {b.destination: b for b in assembly.spec.binds}
    socket = binds["/run/nvidia-persistenced/socket"]
    assert (socket.read_only, socket.noexec, socket.recursive, socket.provider) == \
        (True, True, False, "gpu.nvidia")
    vendor = binds["/opt/vendor"]
    assert (vendor.read_only, vendor.noexec, vendor.recursive) == (False, False, True)
    lib = binds["/.hpcbind/lib/libx.so.1"]
    assert (lib.read_only, lib.noexec, lib.recursive) == (True, False, False)
    assert assembly.log[-1] == ("/opt/vendor (cdi): mount option(s) nosymfollow,rprivate not "
                                "applied (a bind takes ro/rw, noexec, nosuid, nodev)")


def test_a_bind_hidden_by_a_later_one_is_logged(tmp_path, busybox):
    plan = plan_of(mounts=[Mount("/etc/hosts", "/etc/hosts", "file", "site.test", "hosts",
                                 reason="the site's hosts file")])
    assembly = assemble(RunOptions(image="x", argv=("true",)), site(tmp_path), busybox, plan,
                        caller(tmp_path))
    assert "/etc/hosts: /etc/hosts (runtime) is hidden by /etc/hosts (site.test, hosts: the " \
           "site's hosts file)" in assembly.log


def test_options_and_settings_that_leave_things_out_are_logged(tmp_path, busybox):
    cfg = site(tmp_path, "[mount]\nhosts = false\ntmp = false\n")
    assembly = assemble(RunOptions(image="x", argv=("true",), no_home=True), cfg, busybox, None,
                        caller(tmp_path))
    assert assembly.log == (
        "/etc/hosts and /etc/resolv.conf: the image's (mount.hosts = no)",
        "/tmp and /var/tmp: the image's, private and writable (mount.tmp = no)",
        f"home {tmp_path / 'home'}: not bound (--no-home); {tmp_path / 'home'} is an empty "
        "directory",
    )
    assert [b.destination for b in assembly.spec.binds] == ["/proc", "/sys", "/dev",
                                                            str(tmp_path)]


def test_plan_env_operations_reach_the_spec_in_order(tmp_path, busybox):
    plan = plan_of(env=[EnvOp("LD_LIBRARY_PATH", EnvAction.APPEND, "/.hpcbind/lib", "fabric.verbs"),
                        EnvOp("PMI_FD", EnvAction.PASS, "", "mpi.host")])
    assembly = assemble(RunOptions(image="x", argv=("true",), env=("A=1",)), site(tmp_path),
                        busybox, plan, caller(tmp_path))
    assert [tuple(e) for e in assembly.spec.env.edits] == [
        ("set", "A", "1"), ("append", "LD_LIBRARY_PATH", "/.hpcbind/lib"), ("pass", "PMI_FD", "")]


# --- options reach the mount table ---------------------------------------------------------------

@pytest.fixture
def cdi_socket(unprivileged: Unprivileged):
    """A CDI device whose spec mounts a host socket with the NVIDIA provider's socket options."""
    if os.geteuid() != 0:
        pytest.skip("writing a CDI spec into /var/run/cdi needs root")
    import socket

    path = unprivileged.root / "daemon.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    os.chmod(path, 0o666)
    name = f"hpcbind-test-{uuid.uuid4().hex[:8]}"
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    spec = CDI_DIR / f"{name}.json"
    spec.write_text(json.dumps({
        "cdiVersion": "0.3.0", "kind": f"{name}.test/daemon",
        "devices": [{"name": "sock", "containerEdits": {"mounts": [
            {"hostPath": str(path), "containerPath": "/run/daemon.sock",
             "options": ["ro", "nosuid", "nodev", "noexec", "bind"]}]}}]}))
    try:
        yield f"{name}.test/daemon=sock"
    finally:
        spec.unlink()
        server.close()


def test_noexec_of_a_socket_mount_reaches_the_mount_table(unprivileged: Unprivileged, cdi_socket):
    r = unprivileged.run("exec", "--device", cdi_socket, str(unprivileged.busybox_sif),
                         "grep", " /run/daemon.sock ", "/proc/self/mountinfo")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    options = set(line.split()[5].split(","))
    assert {"ro", "nosuid", "nodev", "noexec"} <= options
