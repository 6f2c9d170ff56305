"""hpcbind-squashfuse (hpcbind/runtime/squashfs_server.c): the image's FUSE server for
plain users. It must show the same tree as squashfuse_ll, and leave to the kernel what
squashfuse_ll makes every rank ask again: opens, directory opens and symlinks. Its extended
attributes are named as the kernel's squashfs names them.
"""

from __future__ import annotations

import collections
import json
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, Unprivileged
from hpcbind.image.sif import SifImage

# every path of the image with its type, mode, size, link target or content checksum
INVENTORY = r"""
find / -xdev 2>/dev/null ! -path '/proc/*' ! -path '/sys/*' ! -path '/dev/*' ! -path '/tmp/*' \
    ! -path '/etc/passwd' ! -path '/etc/group' ! -path '/home/*' | sort | while read -r p; do
  if [ -L "$p" ]; then echo "$p -> $(readlink "$p")"
  elif [ -f "$p" ]; then echo "$p $(stat -c %a:%s "$p") $(md5sum < "$p" 2>&1)"
  else echo "$p $(stat -c %F:%a "$p")"; fi
done
"""
REPEATS = 40
# the same file, directory and symlink, again and again, as the ranks of a node do
REPEATED = (f"for i in $(seq {REPEATS}); do cat /bin/busybox >/dev/null; ls /etc >/dev/null; "
            "readlink /environment >/dev/null; done; echo done")


@pytest.fixture
def logdir(unprivileged: Unprivileged):
    """Somewhere the server can write while /tmp is covered by the container's session."""
    home = Path(pwd.getpwuid(unprivileged.uid).pw_dir)
    path = home / "squashfs-server-test"
    path.mkdir(exist_ok=True)
    shutil.chown(path, unprivileged.uid, unprivileged.gid)
    yield path
    shutil.rmtree(path)


def logged_server(unprivileged: Unprivileged, logdir: Path, server: str) -> dict[str, str]:
    """A site configuration running ``server -d``, its requests logged in logdir/requests."""
    wrapper = logdir / "server"
    wrapper.write_text(f'#!/bin/sh\nexec {server} -d "$@" 2>>{logdir / "requests"}\n')
    config = logdir / "hpcbind.toml"
    config.write_text(f'[image]\nsquashfuse = "{wrapper}"\n')
    for path in (wrapper, config):
        path.chmod(0o755)
        shutil.chown(path, unprivileged.uid, unprivileged.gid)
    return {"HPCBIND_CONFIG": str(config)}


def requests(log: Path) -> collections.Counter:
    return collections.Counter(re.findall(r"opcode: (\w+) ", log.read_text(errors="replace")))


def test_the_same_tree_as_squashfuse_ll(unprivileged: Unprivileged, logdir: Path):
    trees = {}
    for server in ("squashfuse_ll", str(unprivileged.root / "hpcbind-squashfuse")):
        config = logdir / "hpcbind.toml"
        config.write_text(f'[image]\nsquashfuse = "{server}"\n')
        config.chmod(0o644)
        r = unprivileged.run("exec", str(unprivileged.busybox_sif), "sh", "-c", INVENTORY,
                             env={"HPCBIND_CONFIG": str(config)})
        assert r.returncode == 0, r.stderr
        trees[server] = r.stdout, r.stderr
    ours, theirs = trees.values()
    assert ours == theirs
    assert len(ours[0].splitlines()) > 300 and "\n/environment -> " in ours[0]  # a real tree


@pytest.mark.parametrize("server, most", [("hpcbind-squashfuse", 2), ("squashfuse_ll", None)])
def test_repeated_opens_and_symlinks_stay_in_the_kernel(unprivileged: Unprivileged,
                                                        logdir: Path, server: str, most):
    """hpcbind-squashfuse sees at most the first open, directory open and readlink of each;
    squashfuse_ll, the control, sees each of them every time."""
    path = str(unprivileged.root / server) if server == "hpcbind-squashfuse" else server
    env = logged_server(unprivileged, logdir, path)
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "sh", "-c", REPEATED, env=env)
    assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
    seen = requests(logdir / "requests")
    asked = {op: seen[op] for op in ("OPEN", "OPENDIR", "READLINK")}
    if most is None:
        assert all(count >= REPEATS for count in asked.values()), asked
    else:
        assert all(count <= most for count in asked.values()), asked
        assert seen["RELEASE"] + seen["RELEASEDIR"] <= 2 * most, seen


def test_a_bad_command_line_is_refused(unprivileged: Unprivileged):
    server = str(unprivileged.root / "hpcbind-squashfuse")
    for argv in ([], ["-o", "ro", "a", "b"], ["-o", "offset=x", "a", "b"], ["a", "b", "c"],
                 ["/nonexistent", "/dev/fd/9"]):
        r = subprocess.run(unprivileged.command(server, *argv), capture_output=True, text=True,
                           timeout=10)
        # libsquashfuse says why it cannot open an image on a line of its own, first
        assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(
            "hpcbind-squashfuse: "), (argv, r)


# what the kernel's squashfs shows on every file of the busybox image, built by Singularity
# 3.8.1 on an SELinux host (mount -t squashfs -o loop,offset=N; os.listxattr, os.getxattr)
KERNEL_XATTRS = {"security.selinux": "unconfined_u:object_r:user_home_t:s0\x00"}
READ_XATTRS = """
import json, os, sys
print(json.dumps({p: {n: os.getxattr(p, n, follow_symlinks=False).decode()
                      for n in os.listxattr(p, follow_symlinks=False)} for p in sys.argv[1:]}))
"""


def test_extended_attributes_as_the_kernel_names_them(unprivileged: Unprivileged, logdir: Path):
    """libsquashfuse before 0.4 (Debian 12's) swaps the trusted. and security. prefixes
    (vasi/squashfuse#83): squashfuse_ll lists "trusted.selinux" here, which a plain user
    cannot read, and fuse-overlayfs failed every copy-up from the image with ENODATA."""
    mountpoint = logdir / "mnt"
    mountpoint.mkdir()
    shutil.chown(mountpoint, unprivileged.uid, unprivileged.gid)
    with SifImage.open(unprivileged.busybox_sif) as image:
        offset = image.primary_partition().offset
    server = subprocess.Popen(unprivileged.command(
        str(unprivileged.root / "hpcbind-squashfuse"), "-o", f"offset={offset}",
        str(unprivileged.busybox_sif), str(mountpoint)), stderr=subprocess.PIPE, text=True)
    try:
        paths = [str(mountpoint / p) for p in ("", "bin", "bin/busybox", "bin/sh")]
        r = None
        for _ in range(100):  # until the server has mounted
            r = subprocess.run(unprivileged.command(PYTHON, "-c", READ_XATTRS, *paths),
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and json.loads(r.stdout)[paths[0]]:
                break
            time.sleep(0.05)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {p: KERNEL_XATTRS for p in paths}
        r = subprocess.run(unprivileged.command(PYTHON, "-c", "import os, sys\n"
                                                "os.getxattr(sys.argv[1], 'trusted.selinux')",
                                                paths[1]), capture_output=True, text=True)
        assert "No data available" in r.stderr
    finally:
        subprocess.run(unprivileged.command("fusermount3", "-u", str(mountpoint)))
        assert server.wait(timeout=10) == 0, server.stderr.read()
