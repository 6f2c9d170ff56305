"""hpcrun exec/run/shell as an unprivileged user, on real images.

The images are the real Singularity 3.8.1 busybox SIF from the conformance corpus and
squashfs images made here with mksquashfs from its root filesystem.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, FUSE_SERVER, HPCRUN, Unprivileged, user_processes
from leftovers import HostState, leftovers


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory, data) -> Path:
    root = tmp_path_factory.mktemp("bbroot") / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(root),
                    str(BUSYBOX_SIF)], check=True, capture_output=True)
    return root


def squashfs_of(root: Path, out: Path) -> Path:
    subprocess.run(["mksquashfs", str(root), str(out), "-noappend", "-quiet", "-all-root",
                    "-no-progress"], check=True, capture_output=True)
    out.chmod(0o644)
    return out


def test_busybox_sif_prints_what_busybox_prints(unprivileged: Unprivileged):
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "busybox", "echo", "hello", "world")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello world\n", "")
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "busybox")
    assert "BusyBox v1.33.1" in r.stdout


def test_same_user_inside_as_outside(unprivileged: Unprivileged):
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "sh", "-c",
                         "id -u; id -g; whoami; grep NoNewPrivs /proc/self/status")
    assert r.returncode == 0, r.stderr
    uid, gid, name, nnp = r.stdout.splitlines()
    assert (int(uid), int(gid), name) == (unprivileged.uid, unprivileged.gid, "hpcbind-test")
    assert nnp.split() == ["NoNewPrivs:", "1"]


def test_program_is_the_process_the_launcher_started(unprivileged: Unprivileged):
    """exec out of existence: the PID, exit code and signals are the program's."""
    proc = unprivileged.popen("exec", str(unprivileged.busybox_sif), "sh", "-c", "echo $$",
                              stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    # setpriv and env exec too, so the pid we started is the shell's pid inside
    assert int(out) == proc.pid

    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "sh", "-c", "exit 42")
    assert r.returncode == 42
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "sh", "-c", "kill -TERM $$")
    assert r.returncode == -signal.SIGTERM


def test_runscript_and_missing_command(unprivileged: Unprivileged):
    r = unprivileged.run("run", str(unprivileged.busybox_sif), "echo", "from", "runscript")
    assert (r.returncode, r.stdout) == (0, "from runscript\n")
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "no-such-command")
    assert r.returncode == 127


def test_environment(unprivileged: Unprivileged, tmp_path):
    envfile = unprivileged.root / "vars.env"
    envfile.write_text("# comment\nexport FROM_FILE='file value'\n")
    envfile.chmod(0o644)
    script = "echo $HOST_VAR; echo $PATH; echo $SET_VAR; echo $PREFIXED; echo $FROM_FILE; echo $HOME"
    r = unprivileged.run("exec", "--env", "SET_VAR=set", "--env-file", str(envfile),
                         str(unprivileged.busybox_sif), "sh", "-c", script,
                         env={"HOST_VAR": "host", "APPTAINERENV_PREFIXED": "prefixed"})
    lines = r.stdout.splitlines()
    assert lines[0] == "host"
    assert lines[1] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert lines[2:5] == ["set", "prefixed", "file value"]
    assert lines[5] == "/home/hpcbind-test"

    r = unprivileged.run("exec", "--cleanenv", str(unprivileged.busybox_sif), "sh", "-c",
                         "echo [$HOST_VAR]", env={"HOST_VAR": "host"})
    assert r.stdout == "[]\n"


def test_image_env_scripts_apply_and_user_env_wins(unprivileged: Unprivileged, busybox_root,
                                                   tmp_path):
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(busybox_root), str(root)], check=True)
    (root / ".singularity.d/env/90-environment.sh").write_text(
        "export FROM_IMAGE=image\nexport OVERRIDDEN=image\n")
    image = squashfs_of(root, unprivileged.root / "envimage.sqfs")
    r = unprivileged.run("exec", "--env", "OVERRIDDEN=user", str(image), "sh", "-c",
                         "echo $FROM_IMAGE $OVERRIDDEN $LD_LIBRARY_PATH")
    assert r.stdout.split() == ["image", "user", "/.singularity.d/libs"]


def test_binds_read_only_and_missing(unprivileged: Unprivileged):
    data = unprivileged.root / "data"
    data.mkdir(exist_ok=True)
    (data / "f").write_text("payload\n")
    for p in (data, data / "f"):
        os.chown(p, unprivileged.uid, unprivileged.gid)
    sif = str(unprivileged.busybox_sif)
    r = unprivileged.run("exec", "--bind", f"{data}:/data:ro", sif, "sh", "-c",
                         "cat /data/f; touch /data/g 2>&1 || echo refused")
    assert r.stdout.splitlines()[0] == "payload"
    assert "Read-only file system" in r.stdout and "refused" in r.stdout
    r = unprivileged.run("exec", "--bind", f"{data}:/a/new/place", sif, "cat", "/a/new/place/f")
    assert r.stdout == "payload\n"
    r = unprivileged.run("exec", "--bind", "/no/such/dir", sif, "true")
    assert r.returncode == 255
    assert r.stderr.strip().count("\n") == 0 and "can't bind /no/such/dir" in r.stderr


def test_session_layer_is_private_and_image_unchanged(unprivileged: Unprivileged):
    sif = unprivileged.busybox_sif
    before = sif.read_bytes()
    r = unprivileged.run("exec", str(sif), "sh", "-c", "echo x > /created && cat /created")
    assert r.stdout == "x\n"
    r = unprivileged.run("exec", str(sif), "sh", "-c", "test -e /created && echo there || echo gone")
    assert r.stdout == "gone\n"
    assert sif.read_bytes() == before


def test_contained_tmp_is_private_and_writable(unprivileged: Unprivileged):
    """The busybox image's /tmp and /var/tmp belong to its (unmapped) root, /var/tmp 0755."""
    name = f"hpcbind-contained-{os.getpid()}"
    r = unprivileged.run("exec", "--contain", str(unprivileged.busybox_sif), "sh", "-c",
                         f"echo t > /tmp/{name} && echo v > /var/tmp/{name} && "
                         f"cat /tmp/{name} /var/tmp/{name} && stat -c %a /tmp /var/tmp")
    assert (r.returncode, r.stdout) == (0, "t\nv\n1777\n1777\n"), r.stderr
    assert not Path(f"/tmp/{name}").exists() and not Path(f"/var/tmp/{name}").exists()


def test_directory_and_squashfs_images(unprivileged: Unprivileged, busybox_root):
    image = squashfs_of(busybox_root, unprivileged.root / "plain.sqfs")
    r = unprivileged.run("exec", str(image), "busybox", "echo", "squashfs")
    assert r.stdout == "squashfs\n"
    sandbox = unprivileged.root / "sandbox"
    if not sandbox.exists():
        subprocess.run(["cp", "-a", str(busybox_root), str(sandbox)], check=True)
    r = unprivileged.run("exec", str(sandbox), "busybox", "echo", "directory")
    assert r.stdout == "directory\n", r.stderr


def _writer_when_read(fifo: Path, proc: subprocess.Popen) -> int:
    """The FIFO's write end, once the program in the container has opened it to read: proof
    that it runs, with no window a slow start could miss."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:  # ENXIO: no reader yet
            assert err.errno == errno.ENXIO and proc.poll() is None, "the program never read"
            assert time.monotonic() < deadline, "the program did not start in 60 s"
            time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, None])
def test_nothing_left_after_exit_or_signal(unprivileged: Unprivileged, sig):
    fifo = unprivileged.root / f"hold-{sig or 'exit'}"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, unprivileged.uid, unprivileged.gid)
    before = HostState.now(unprivileged.uid)
    # cat reads until the test closes the write end: it exits 0 then, or dies by the signal
    proc = unprivileged.popen("exec", str(unprivileged.busybox_sif), "cat", str(fifo),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer = _writer_when_read(fifo, proc)
    try:
        assert user_processes(unprivileged.uid, FUSE_SERVER), "no FUSE server while running"
        if sig:
            proc.send_signal(sig)
    finally:
        os.close(writer)
    assert proc.wait(timeout=10) == (-sig if sig else 0)
    fifo.unlink()
    assert leftovers(unprivileged.uid, before) == {}


def test_errors_are_one_line(unprivileged: Unprivileged, data):
    arm = data / "sif/singularityce/images/busybox_arm64.sif"
    cases = {
        str(unprivileged.root / "missing.sif"): "not found",
        str(unprivileged.launcher): "is not a SIF file",
    }
    if os.access(arm, os.R_OK) and os.getuid() != 0:
        cases[str(arm)] = "built for arm64"
    for image, text in cases.items():
        r = unprivileged.run("exec", image, "true")
        assert r.returncode == 255, (image, r.stderr)
        assert text in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="the kernel squashfs path is root's")
def test_root_uses_kernel_squashfs_on_a_loop_device():
    r = subprocess.run([HPCRUN, "exec", "-v", str(BUSYBOX_SIF), "busybox", "echo", "root"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "root\n"), r.stderr
    assert f"image {BUSYBOX_SIF} mounted by loop" in r.stderr


def test_nv_and_ib_on_a_machine_without_gpu_or_hca(unprivileged: Unprivileged):
    """No GPU, no RDMA device: the plan says so and the container still runs."""
    r = unprivileged.run("exec", "--nv", "--ib", str(unprivileged.busybox_sif), "sh", "-c",
                         "echo $NVIDIA_VISIBLE_DEVICES; ls /dev/nvidia* 2>/dev/null | wc -l")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0"


def _mounts_at(mountinfo: str, path: str) -> list[str]:
    """The devices mounted at ``path``, bottom first."""
    return [line.split()[2] for line in mountinfo.splitlines() if line.split()[4] == path]


def test_dev_shm_mounted_as_on_the_host(unprivileged: Unprivileged):
    """The host's /dev, bound recursively, brings every mount under it: a host that stacks
    two tmpfs on /dev/shm (this Debian VM does) shows two in the container too. A minimal
    /dev binds /dev/shm alone: the one the host sees on top."""
    with open("/proc/self/mountinfo") as f:
        host = _mounts_at(f.read(), "/dev/shm")
    sif = str(unprivileged.busybox_sif)
    r = unprivileged.run("exec", sif, "cat", "/proc/self/mountinfo")
    assert r.returncode == 0, r.stderr
    assert len(_mounts_at(r.stdout, "/dev/shm")) == len(host)
    r = unprivileged.run("exec", "--contain", sif, "cat", "/proc/self/mountinfo")
    assert r.returncode == 0, r.stderr
    assert _mounts_at(r.stdout, "/dev/shm") == host[-1:]
