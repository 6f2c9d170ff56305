"""The runtime's promise, tested as an unprivileged user: no way to become root, no way to read
what the user could not read outside, no way to change the host's mounts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, Unprivileged

EUID_PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
"""


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory, unprivileged: Unprivileged) -> Path:
    """busybox plus a setuid-root program and links that point out of the root."""
    work = tmp_path_factory.mktemp("hostile")
    root = work / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(root),
                    str(BUSYBOX_SIF)], check=True, capture_output=True)
    (work / "euid.c").write_text(EUID_PROGRAM)
    built = subprocess.run(["gcc", "-static", "-O", "-o", str(root / "bin/euid"),
                            str(work / "euid.c")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a static test program: {built.stderr[-200:]}")
    os.chmod(root / "bin/euid", 0o4755)
    os.symlink("../../../../../../etc", root / "climb")
    os.symlink("/etc", root / "abs")
    image = unprivileged.root / "hostile.sqfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-all-root",
                    "-no-progress"], check=True, capture_output=True)
    image.chmod(0o644)
    return image


def test_setuid_root_binary_runs_without_privilege(unprivileged: Unprivileged, hostile_image):
    r = unprivileged.run("exec", str(hostile_image), "sh", "-c",
                         "ls -l /bin/euid; /bin/euid; grep CapEff /proc/self/status")
    assert r.returncode == 0, r.stderr
    listing, ids, caps = r.stdout.splitlines()
    assert listing.startswith("-rwsr-xr-x"), "the test image must really carry the setuid bit"
    uid = unprivileged.uid
    assert ids.split() == [str(uid), str(uid)]
    assert caps.split() == ["CapEff:", "0000000000000000"]


def test_image_mounted_nosuid_nodev(unprivileged: Unprivileged, hostile_image):
    r = unprivileged.run("exec", str(hostile_image), "cat", "/proc/self/mountinfo")
    root_line = next(line for line in r.stdout.splitlines() if line.split()[4] == "/")
    assert {"nosuid", "nodev"} <= set(root_line.split()[5].split(","))


def test_bind_through_climbing_symlink_is_refused(unprivileged: Unprivileged, hostile_image):
    data = unprivileged.root
    r = unprivileged.run("exec", "--bind", f"{data}:/climb/hpcbind-escape", str(hostile_image),
                         "true")
    assert r.returncode == 255
    assert "refusing bind destination /climb/hpcbind-escape" in r.stderr
    assert not Path("/etc/hpcbind-escape").exists()


def test_absolute_symlink_resolves_inside_the_container(unprivileged: Unprivileged,
                                                        hostile_image):
    r = unprivileged.run("exec", "--bind", f"{unprivileged.launcher}:/abs/hpcbind-inside",
                         str(hostile_image), "sh", "-c", "test -s /etc/hpcbind-inside && echo in")
    assert (r.returncode, r.stdout) == (0, "in\n"), r.stderr
    assert not Path("/etc/hpcbind-inside").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs a host file the test user cannot read")
def test_cannot_read_what_is_unreadable_outside(unprivileged: Unprivileged, tmp_path):
    secret_dir = Path("/root")
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET\n")
    secret.chmod(0o600)
    shutil.copy(secret, "/var/tmp/hpcbind-secret")
    os.chmod("/var/tmp/hpcbind-secret", 0o600)
    try:
        r = unprivileged.run("exec", "--bind", "/var/tmp/hpcbind-secret:/s",
                             str(unprivileged.busybox_sif), "cat", "/s")
        assert "TOP-SECRET" not in r.stdout and "Permission denied" in r.stderr
        r = unprivileged.run("exec", "--bind", f"{secret_dir}:/r",
                             str(unprivileged.busybox_sif), "ls", "/r")
        assert r.returncode != 0
    finally:
        os.unlink("/var/tmp/hpcbind-secret")


def test_no_mount_reaches_the_host(unprivileged: Unprivileged):
    before = Path("/proc/1/mountinfo").read_text()
    r = unprivileged.run("exec", "--bind", f"{unprivileged.root}:/mnt/x",
                         str(unprivileged.busybox_sif), "sh", "-c",
                         "mount -t tmpfs none /mnt/x 2>/dev/null; echo done")
    assert r.stdout == "done\n"
    assert Path("/proc/1/mountinfo").read_text() == before


def test_uid_map_is_identity_only(unprivileged: Unprivileged):
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "cat", "/proc/self/uid_map",
                         "/proc/self/gid_map")
    uid, gid = unprivileged.uid, unprivileged.gid
    if uid == 0:
        pytest.skip("root runs without a user namespace")
    assert [line.split() for line in r.stdout.splitlines()] == [[str(uid), str(uid), "1"],
                                                                [str(gid), str(gid), "1"]]
