"""``--overlay``: a directory and an ext3 image (``hpcrun overlay create``) keep the root's
writes across runs, for the plain user (an image through fuse2fs and fuse-overlayfs) and for
root (the kernel's ext4); a writable overlay serves one container at a time."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import HPCRUN, Unprivileged
from leftovers import HostState, leftovers


def _mine(unprivileged: Unprivileged, name: str) -> Path:
    path = unprivileged.root / name
    path.mkdir()
    os.chown(path, unprivileged.uid, unprivileged.gid)
    return path


@pytest.fixture
def overlay_dir(unprivileged: Unprivileged, request) -> Path:
    return _mine(unprivileged, f"ovdir-{request.node.name}")


@pytest.fixture
def overlay_img(unprivileged: Unprivileged, request) -> Path:
    path = unprivileged.root / f"ov-{request.node.name}.img"
    r = unprivileged.run("overlay", "create", "--size", "32", "--sparse", str(path))
    assert r.returncode == 0, r.stderr
    return path


def _write_then_read(unprivileged: Unprivileged, overlay: Path) -> None:
    sif = str(unprivileged.busybox_sif)
    before = unprivileged.busybox_sif.read_bytes()
    r = unprivileged.run("exec", "--overlay", str(overlay), sif, "sh", "-c",
                         "echo kept > /kept && mkdir -p /opt/new && echo n > /opt/new/f")
    assert r.returncode == 0, r.stderr
    r = unprivileged.run("exec", "--overlay", str(overlay), sif, "cat", "/kept", "/opt/new/f")
    assert (r.returncode, r.stdout) == (0, "kept\nn\n"), r.stderr
    r = unprivileged.run("exec", sif, "sh", "-c", "test -e /kept || echo not-without")
    assert r.stdout == "not-without\n"
    r = unprivileged.run("exec", "--overlay", f"{overlay}:ro", sif, "cat", "/kept")
    assert (r.returncode, r.stdout) == (0, "kept\n"), r.stderr
    assert unprivileged.busybox_sif.read_bytes() == before


def test_directory_overlay_keeps_writes(unprivileged: Unprivileged, overlay_dir: Path):
    _write_then_read(unprivileged, overlay_dir)
    assert (overlay_dir / "upper" / "kept").read_text() == "kept\n"


@pytest.mark.skipif(os.getuid() != 0, reason="a writable ext3 overlay needs root (kernel ext4)")
def test_ext3_image_overlay_keeps_writes(unprivileged: Unprivileged, overlay_img: Path):
    """Written as root (the kernel's ext4 over a loop device), read by the plain user
    through fuse2fs; the filesystem is clean afterwards."""
    def as_root(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([HPCRUN, *args], capture_output=True, text=True, timeout=60,
                              cwd=str(unprivileged.root))

    sif = str(unprivileged.busybox_sif)
    r = as_root("exec", "--overlay", str(overlay_img), sif, "sh", "-c",
                "echo kept > /kept && mkdir -p /opt/new && echo n > /opt/new/f")
    assert r.returncode == 0, r.stderr
    r = as_root("exec", "--overlay", str(overlay_img), sif, "cat", "/kept", "/opt/new/f")
    assert (r.returncode, r.stdout) == (0, "kept\nn\n"), r.stderr
    r = unprivileged.run("exec", "--overlay", f"{overlay_img}:ro", sif, "cat", "/opt/new/f")
    assert (r.returncode, r.stdout) == (0, "n\n"), r.stderr
    assert _written_back(overlay_img, "kept") == "kept\n"


def test_ext3_image_overlay_keeps_writes_as_plain_user(unprivileged: Unprivileged,
                                                       overlay_img: Path):
    """fuse2fs under fuse-overlayfs: files written, a file of the image deleted (a
    whiteout), a copied program run, all kept across runs; a killed program's writes are
    written back too, and e2fsck finds the image clean. No server is left behind."""
    before = HostState.now(unprivileged.uid)
    _write_then_read(unprivileged, overlay_img)
    img, sif = str(overlay_img), str(unprivileged.busybox_sif)
    r = unprivileged.run("exec", "--overlay", img, sif, "sh", "-c",
                         "rm /bin/cat && cp /bin/busybox /opt/new/cat && echo w > /opt/new/w "
                         "&& kill -9 $$")
    assert r.returncode == -9, r.stderr  # the program is hpcrun's process: no shell between
    r = unprivileged.run("exec", "--overlay", img, sif, "sh", "-c",
                         "test -e /bin/cat || /opt/new/cat /opt/new/w /kept")
    assert (r.returncode, r.stdout) == (0, "w\nkept\n"), r.stderr
    assert _written_back(overlay_img, "opt/new/w") == "w\n"
    assert leftovers(unprivileged.uid, before) == {}


def _written_back(image: Path, path: str) -> str:
    """The content of ``path`` in the image's upper layer, read with debugfs once the image
    is clean (e2fsck -fn): fuse2fs writes back after the program has gone."""
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.returncode == 0, r.stdout + r.stderr
    return subprocess.run(["debugfs", "-R", f"cat /upper/{path}", str(image)],
                          capture_output=True, text=True).stdout


def test_overlay_create_sizes_and_layout(unprivileged: Unprivileged):
    full, sparse = unprivileged.root / "full.img", unprivileged.root / "sparse.img"
    for path, extra in ((full, ()), (sparse, ("--sparse",))):
        r = unprivileged.run("overlay", "create", "--size", "16", *extra,
                             "--create-dir", "/var/cache/app", str(path))
        assert r.returncode == 0, r.stderr
        assert path.stat().st_size == 16 * 1024 * 1024
    assert full.stat().st_blocks * 512 >= 16 * 1024 * 1024
    assert sparse.stat().st_blocks * 512 < 8 * 1024 * 1024
    r = subprocess.run(["debugfs", "-R", "stat /upper/var/cache/app", str(full)],
                       capture_output=True, text=True)
    assert f"User: {unprivileged.uid:>5}" in r.stdout
    r = unprivileged.run("overlay", "create", "--size", "16", str(full))
    assert (r.returncode, r.stderr.count("\n")) == (255, 1) and "already exists" in r.stderr


@pytest.mark.parametrize("writable", ("directory", "ext3 image"))
def test_stacked_read_only_layers(unprivileged: Unprivileged, overlay_dir: Path,
                                  overlay_img: Path, writable: str):
    """Read-only layers (an ext3 image, a directory) under the writable directory or ext3
    image: the later the higher, the writable one on top; nothing written below it."""
    lower = _mine(unprivileged, f"lower-{overlay_dir.name}")
    for name in ("from-lower", "both"):
        (lower / name).write_text("lower\n")
        os.chown(lower / name, unprivileged.uid, unprivileged.gid)
    if writable == "directory":
        stack = ("--overlay", f"{overlay_img}:ro", "--overlay", f"{lower}:ro", "--overlay",
                 str(overlay_dir))
    else:
        ro_img = unprivileged.root / f"ro-{overlay_img.name}"
        r = unprivileged.run("overlay", "create", "--size", "8", str(ro_img))
        assert r.returncode == 0, r.stderr
        stack = ("--overlay", f"{ro_img}:ro", "--overlay", f"{lower}:ro", "--overlay",
                 str(overlay_img))
    r = unprivileged.run("exec", *stack, str(unprivileged.busybox_sif), "sh", "-c",
                         "cat /from-lower /both && test -d /upper || echo upper > /both")
    assert (r.returncode, r.stdout) == (0, "lower\nlower\n"), r.stderr
    r = unprivileged.run("exec", *stack, str(unprivileged.busybox_sif), "cat", "/both")
    assert r.stdout == "upper\n"
    assert (lower / "both").read_text() == "lower\n"
    if writable == "directory":
        assert (overlay_dir / "upper" / "both").read_text() == "upper\n"
    else:
        assert _written_back(overlay_img, "both") == "upper\n"


@pytest.mark.parametrize("kind", ("directory", "ext3 image"))
def test_one_writer_at_a_time(unprivileged: Unprivileged, overlay_dir: Path,
                              overlay_img: Path, kind: str):
    """A second container is refused the overlay a first one writes, read-only too (after
    overlays.LOCK_WAIT_S); once the first has exited, the next one gets it and sees its
    writes."""
    overlay = str(overlay_dir if kind == "directory" else overlay_img)
    sif = str(unprivileged.busybox_sif)
    holder = unprivileged.popen("exec", "--overlay", overlay, sif, "sh", "-c",
                                "echo first > /owner; echo ready; sleep 10",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "ready\n", holder.stderr.read()
    for mode in ("", ":ro"):
        r = unprivileged.run("exec", "--overlay", overlay + mode, sif, "sh", "-c",
                             "echo second > /owner")
        assert r.returncode == 255 and r.stderr.count("\n") == 1, r.stderr
        assert f"--overlay {overlay} is in use by another container" in r.stderr
    assert holder.wait(timeout=30) == 0, holder.stderr.read()
    r = unprivileged.run("exec", "--overlay", overlay, sif, "cat", "/owner")
    assert (r.returncode, r.stdout) == (0, "first\n"), r.stderr


def test_bad_overlays_are_one_line(unprivileged: Unprivileged):
    not_ext = unprivileged.root / "not-ext3.img"
    not_ext.write_bytes(b"\0" * 4096)
    os.chown(not_ext, unprivileged.uid, unprivileged.gid)
    for overlay, message in ((unprivileged.root / "missing", "can't open --overlay"),
                             (not_ext, "neither a directory nor an ext3 image")):
        r = unprivileged.run("exec", "--overlay", str(overlay), str(unprivileged.busybox_sif),
                             "true")
        assert (r.returncode, r.stderr.count("\n")) == (255, 1), r.stderr
        assert message in r.stderr and "Traceback" not in r.stderr
