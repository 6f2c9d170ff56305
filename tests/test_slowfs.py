"""The import storm's slow filesystem (benchmarks/importstorm/slowfs.c) as a model.

A small tree is mounted through the real slowfs (compiled here with gcc and libfuse3) and
the kernel's real FUSE requests are counted. What each system call costs follows from the
model's zero cache timeouts: a path walk looks every component up again and checks the
permission of every directory it passes (default_permissions: a getattr), the mount
point's own attributes being the one thing cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "benchmarks" / "importstorm" / "run.py"
SLOW_US = 50_000  # long enough that scheduling noise on a shared 2-core VM cannot hide it


def _load_runner():
    # the runner holds slowfs's build, mount and counters; benchmarks/ is not a package
    spec = importlib.util.spec_from_file_location("importstorm_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


importstorm = _load_runner()


@pytest.fixture(scope="session")
def slowfs(tmp_path_factory) -> Path:
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse here")
    if shutil.which("gcc") is None or subprocess.run(
            ["pkg-config", "--exists", "fuse3"]).returncode != 0:
        pytest.skip("building slowfs needs gcc and libfuse3-dev")
    return importstorm.build_slowfs(tmp_path_factory.mktemp("slowfs") / "slowfs")


def _tree(root: Path) -> Path:
    backing = root / "backing"
    (backing / "d").mkdir(parents=True)
    for i in range(10):
        (backing / f"f{i}").write_text(f"top {i}\n")
        (backing / "d" / f"f{i}").write_text(f"in d {i}\n")
    (backing / "link").symlink_to("d/f0")
    return backing


@contextmanager
def _mounted(slowfs: Path, root: Path,
             *options: str) -> Iterator[tuple[Path, Path, subprocess.Popen]]:
    """(backing, mount point, server) of slowfs over a fresh tree in ``root``."""
    backing, mountpoint = _tree(root), root / "mnt"
    mountpoint.mkdir()
    with importstorm.mounted(slowfs, backing, mountpoint, *options) as server:
        yield backing, mountpoint, server


@pytest.fixture
def mount(slowfs: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing, mount point) of slowfs with its defaults (1 ms a metadata request)."""
    with _mounted(slowfs, tmp_path) as (backing, mountpoint, _):
        yield backing, mountpoint


@pytest.fixture
def slow_mount(slowfs: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with _mounted(slowfs, tmp_path, f"delay_us={SLOW_US}") as (backing, mountpoint, _):
        yield backing, mountpoint


def _counted(mountpoint: Path, action: Callable[[], object]) -> dict[str, int]:
    """The requests slowfs served during ``action``, by type, and their metadata total."""
    before = importstorm.read_stats(mountpoint)
    action()
    delta = importstorm.stats_delta(before, importstorm.read_stats(mountpoint))
    return {"metadata": delta["metadata_ops"], **{k: v for k, v in delta["ops"].items() if v}}


def _stat_all(paths: list[Path]) -> None:
    for path in paths:
        os.stat(path)


# Each system call and what the kernel asks the server for it, with zero timeouts:
# "d/f": lookup d, getattr d (search permission), lookup f, getattr f (the stat itself).
SYSCALLS = [
    ("10 stats at the top", lambda m: _stat_all([m / f"f{i}" for i in range(10)]),
     {"metadata": 20, "lookup": 10, "getattr": 10}),
    ("10 stats one level down", lambda m: _stat_all([m / "d" / f"f{i}" for i in range(10)]),
     {"metadata": 40, "lookup": 20, "getattr": 20}),
    ("the same stat 5 times", lambda m: _stat_all([m / "d" / "f3"] * 5),
     {"metadata": 20, "lookup": 10, "getattr": 10}),
    ("a readlink", lambda m: os.readlink(m / "link"),
     {"metadata": 2, "lookup": 1, "readlink": 1}),
    ("a missing name", lambda m: os.path.exists(m / "nothing"),
     {"metadata": 1, "lookup": 1}),
]


@pytest.mark.parametrize("action, expected", [pytest.param(a, e, id=name)
                                              for name, a, e in SYSCALLS])
def test_each_metadata_request_is_counted(mount, action, expected):
    _, mountpoint = mount
    assert _counted(mountpoint, lambda: action(mountpoint)) == expected


def test_a_directory_listing_is_opendir_readdir_releasedir(mount):
    backing, mountpoint = mount
    names: list[str] = []
    counts = _counted(mountpoint, lambda: names.extend(os.listdir(mountpoint / "d")))
    assert sorted(names) == sorted(os.listdir(backing / "d"))
    assert counts["lookup"] == 1 and counts["opendir"] == 1 and counts["releasedir"] == 1
    assert counts["readdir"] >= 1  # glibc reads until an empty reply
    # releasedir is not a metadata request; everything else here is
    assert counts["metadata"] == sum(v for k, v in counts.items()
                                     if k not in ("metadata", "releasedir"))


def test_the_control_file_is_free_and_unlisted(mount):
    backing, mountpoint = mount
    first = importstorm.read_stats(mountpoint)
    assert importstorm.read_stats(mountpoint) == first
    assert sorted(os.listdir(mountpoint)) == sorted(os.listdir(backing))
    assert first["delay_us"] == 1000  # the default
    assert set(first["ops"]) >= {"lookup", "getattr", "open", "opendir", "readdir", "readlink",
                                 "read", "write"}


def test_metadata_requests_are_delayed_one_at_a_time(slow_mount):
    _, mountpoint = slow_mount
    delay = SLOW_US / 1e6
    start = time.perf_counter()
    one = _counted(mountpoint, lambda: os.stat(mountpoint / "f1"))
    assert one == {"metadata": 2, "lookup": 1, "getattr": 1}
    assert time.perf_counter() - start >= 2 * delay

    barrier = threading.Barrier(2)

    def stat(path: Path) -> None:
        barrier.wait()
        os.stat(path)

    threads = [threading.Thread(target=stat, args=(mountpoint / name,)) for name in ("f2", "f3")]

    def both() -> None:
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    start = time.perf_counter()
    two = _counted(mountpoint, both)
    elapsed = time.perf_counter() - start
    assert two == {"metadata": 4, "lookup": 2, "getattr": 2}
    # one server: the four requests follow each other (two servers would take 2 x delay)
    assert elapsed >= 4 * delay


def test_data_reads_are_not_delayed(slow_mount):
    backing, mountpoint = slow_mount
    data = os.urandom(32 << 20)
    (backing / "big").write_bytes(data)
    chunks: list[bytes] = []

    def read() -> None:
        with open(mountpoint / "big", "rb", buffering=0) as f:
            while chunk := f.read(128 << 10):
                chunks.append(chunk)

    start = time.perf_counter()
    counts = _counted(mountpoint, read)
    elapsed = time.perf_counter() - start
    assert b"".join(chunks) == data
    assert counts["read"] >= 100  # the kernel asks for at most 128 KiB a request
    assert counts["metadata"] == counts["lookup"] + counts["getattr"] + counts["open"]
    # only the open's metadata requests wait: the reads, one delay each, would take >= 12 s;
    # half that leaves a loaded machine its noise
    assert elapsed - counts["metadata"] * SLOW_US / 1e6 < counts["read"] * SLOW_US / 1e6 / 2


def test_writes_pass_through_undelayed(slow_mount):
    backing, mountpoint = slow_mount
    data = os.urandom(8 << 20)
    start = time.perf_counter()
    counts = _counted(mountpoint, lambda: (mountpoint / "d" / "new").write_bytes(data))
    elapsed = time.perf_counter() - start
    assert (backing / "d" / "new").read_bytes() == data
    assert counts["create"] == 1 and counts["write"] >= 8
    assert elapsed - counts["metadata"] * SLOW_US / 1e6 < counts["write"] * SLOW_US / 1e6 / 2


def test_counters_are_dumped_on_sigusr1_and_at_unmount(slowfs, tmp_path):
    dump = tmp_path / "stats.json"
    with _mounted(slowfs, tmp_path, f"stats={dump}") as (_, mountpoint, server):
        _stat_all([mountpoint / "f1", mountpoint / "d" / "f2"])
        live = importstorm.read_stats(mountpoint)
        server.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert json.loads(dump.read_text()) == live
        os.stat(mountpoint / "f3")
        last = importstorm.read_stats(mountpoint)
    assert server.returncode == 0
    assert json.loads(dump.read_text()) == last
    assert last["ops"]["lookup"] == live["ops"]["lookup"] + 1


def test_a_missing_backing_directory_is_refused(slowfs, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = subprocess.run([str(slowfs), str(tmp_path / "absent"), str(mountpoint), "-f"],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert f"cannot open backing directory {tmp_path / 'absent'}" in result.stderr
    assert not os.path.ismount(mountpoint)
