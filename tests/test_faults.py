"""Faults, as the unprivileged user: hpcrun killed at each step of its set-up (alone, or under a
launcher where a holder sets the node's container up), its FUSE server killed under a running
program, a full session layer, and 200 launches at once on one node.

Besides its own assertions, each test shows that afterwards nothing of the user's is left
running, nothing new is mounted on the host, and nothing new is in the host's temporary
directories or the user's home (``leftovers``).

Killing "during set-up" is made deterministic, not timed (set-up is ~5 ms of a ~35 ms launch
here): hpcrun is stopped at a known step and killed there, either by a stand-in for a helper
it runs (``Gate``: the FUSE server, unsquashfs) that waits for the test before going on, or by
``-v`` with a stderr pipe that has room for the log lines up to a step and not for the next
line: hpcrun logs each step once done, so it blocks right after that step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import FUSE_SERVER, Unprivileged, user_processes
from leftovers import HostState, leftovers

FUSE_GATE = """\
echo >> {started}
read line < {go}
exec squashfuse_ll "$@"
"""
# the real unsquashfs first, so that a partial tree exists when hpcrun is killed
UNSQUASHFS_GATE = """\
{unsquashfs} "$@" || exit
echo >> {started}
read line < {go}
"""


class Gate:
    """A stand-in, installed at ``path``, for a program hpcrun starts during set-up: it
    appends a line to ``started``, then waits for the test to let it through. It never forks,
    so if it outlives a killed hpcrun, hpcrun failed to tie it to its own life
    (PR_SET_PDEATHSIG)."""

    def __init__(self, path: Path, script: str, owner: Unprivileged):
        self.path = path
        self.started = path.with_name(f"{path.name}.started")
        go = path.with_name(f"{path.name}.go")
        os.mkfifo(go, 0o600)
        os.chown(go, owner.uid, owner.gid)
        # held open for writing, so the gate's open of it returns and its read waits for a line
        self._go = os.open(go, os.O_RDWR | os.O_CLOEXEC)
        path.write_text("#!/bin/sh\n" + script.format(started=self.started, go=go,
                                                      unsquashfs=shutil.which("unsquashfs")))
        path.chmod(0o755)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._go)  # a gate still waiting reads end-of-file and stops

    def wait_started(self, count: int = 1) -> None:
        wait_for(lambda: self.started.exists()
                 and len(self.started.read_text().splitlines()) >= count,
                 f"{self.path.name} started {count} time(s)")

    def let_through(self) -> None:
        os.write(self._go, b"\n")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def blocked_in(pid: int, function: str) -> bool:
    """Whether process PID sleeps in a kernel function whose name contains ``function``."""
    try:
        return function in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


@pytest.fixture
def workdir(unprivileged: Unprivileged) -> Iterator[Path]:
    """The test user's directory outside /tmp: the session tmpfs covers /tmp while hpcrun
    starts its helpers, so they and what they use must be elsewhere."""
    path = Path(tempfile.mkdtemp(prefix="hpcbind-faults-", dir="/var/tmp"))
    path.chmod(0o755)
    os.chown(path, unprivileged.uid, unprivileged.gid)
    yield path
    shutil.rmtree(path)


def site_config(workdir: Path, text: str) -> dict[str, str]:
    path = workdir / "hpcbind.toml"
    path.write_text(text)
    path.chmod(0o644)
    return {"HPCBIND_CONFIG": str(path)}


def start(unprivileged: Unprivileged, *args: str, env: dict[str, str] | None = None,
          **popen) -> subprocess.Popen:
    """``Unprivileged.popen``, with an environment for hpcrun."""
    return subprocess.Popen(unprivileged.argv(*args, env=env), cwd=str(unprivileged.root),
                            **popen)


@contextlib.contextmanager
def stopped_after(unprivileged: Unprivileged, args: tuple[str, ...], log: list[bytes],
                  step: int) -> Iterator[subprocess.Popen]:
    """hpcrun ARGS (with -v), blocked for good right after the step it logs as log[step]."""
    read_end, write_end = os.pipe()
    # one page, so the pipe holds exactly that many bytes: writes merge into it while they fit
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, os.sysconf("SC_PAGE_SIZE"))
    capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
    logged = sum(map(len, log[:step]))
    filler = capacity - logged - len(log[step]) + 1
    assert filler > 0
    os.write(write_end, b"#" * filler)
    proc = start(unprivileged, *args, stdout=subprocess.DEVNULL, stderr=write_end)
    os.close(write_end)
    try:
        def stopped() -> bool:
            pending = bytearray(4)
            fcntl.ioctl(read_end, termios.FIONREAD, pending)
            return (blocked_in(proc.pid, "pipe_write")
                    and int.from_bytes(pending, "little") == filler + logged)

        wait_for(stopped, f"hpcrun blocks logging {log[step]!r}")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        os.close(read_end)


@pytest.mark.parametrize("overlay", ("", "ext3 image"))
def test_killed_after_each_step_of_its_set_up(unprivileged: Unprivileged, workdir: Path,
                                              overlay: str):
    """From the image mounted (FUSE server serving, overlay on it) to the last bind. (The
    apply log, printed before anything is set up, comes first.) With a writable ext3
    overlay (fuse2fs and fuse-overlayfs), the image is left clean each time."""
    layer = workdir / "overlay.img"
    if overlay:
        r = unprivileged.run("overlay", "create", "--size", "16", "--sparse", str(layer))
        assert r.returncode == 0, r.stderr
    args = ("exec", "-v", *(("--overlay", str(layer)) if overlay else ()),
            str(unprivileged.busybox_sif), "true")
    reference = unprivileged.run(*args)
    assert reference.returncode == 0, reference.stderr
    log = [line.encode() for line in reference.stderr.splitlines(keepends=True)]
    mounted = next(i for i, line in enumerate(log) if b"mounted by squashfuse" in line)
    assert len(log) > mounted + 1
    before = HostState.now(unprivileged.uid)
    for step, line in enumerate(log[mounted:], mounted):
        with stopped_after(unprivileged, args, log, step) as proc:
            proc.kill()
            assert proc.wait(timeout=10) == -signal.SIGKILL
        assert leftovers(unprivileged.uid, before) == {}, line
        if overlay:  # its servers have gone (no leftovers): fuse2fs has written back
            r = subprocess.run(["e2fsck", "-fn", str(layer)], capture_output=True, text=True)
            assert r.returncode == 0, (line, r.stdout)


def test_killed_while_its_fuse_server_starts(unprivileged: Unprivileged, workdir: Path):
    """hpcrun holds its namespaces, the session tmpfs and the FUSE mount, and waits for the
    server's first answer; the server is its child, not yet serving."""
    with Gate(workdir / "fuse-gate", FUSE_GATE, unprivileged) as gate:
        env = site_config(workdir, f'[image]\nsquashfuse = "{gate.path}"\n')
        before = HostState.now(unprivileged.uid)
        proc = start(unprivileged, "exec", str(unprivileged.busybox_sif), "true", env=env)
        gate.wait_started()
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert leftovers(unprivileged.uid, before) == {}


@pytest.mark.skipif(not shutil.which("unsquashfs"), reason="unsquashfs (squashfs-tools) missing")
def test_killed_while_unpacking_the_image(unprivileged: Unprivileged, workdir: Path):
    """Without FUSE the image is unpacked into the user's cache. unsquashfs dies with hpcrun;
    its partial tree cannot be removed by a killed process, so the next launch of the image
    removes it before unpacking (under the lock that lets one launch unpack at a time)."""
    (workdir / "bin").mkdir(mode=0o755)
    os.chown(workdir / "bin", unprivileged.uid, unprivileged.gid)
    cache = workdir / "cache"
    env = {**site_config(workdir, '[image]\nsquashfuse = "absent"\n'),
           "XDG_CACHE_HOME": str(cache)}
    with Gate(workdir / "bin" / "unsquashfs", UNSQUASHFS_GATE, unprivileged) as gate:
        before = HostState.now(unprivileged.uid)
        proc = start(unprivileged, "exec", str(unprivileged.busybox_sif), "true",
                     env={**env, "PATH": f"{workdir / 'bin'}:/usr/bin:/bin"})
        gate.wait_started()  # the listing that finds device nodes to leave out
        gate.let_through()
        gate.wait_started(2)  # the unpacking
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert leftovers(unprivileged.uid, before) == {}
    rootfs = cache / "hpcbind" / "rootfs"
    (partial,) = rootfs.glob("*.partial")
    key = partial.name.removesuffix(".partial")
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "cat", "/.singularity.d/runscript",
                         env=env)
    assert r.returncode == 0 and r.stdout, r.stderr
    assert sorted(p.name for p in rootfs.iterdir()) == [key, f"{key}.lock"]
    assert leftovers(unprivileged.uid, before) == {}


def node_rank(unprivileged: Unprivileged, key: str, env: dict[str, str],
              via: str) -> subprocess.Popen:
    argv = unprivileged.rank_command(via, key, str(unprivileged.busybox_sif), "echo", "in")
    return subprocess.Popen(unprivileged.command(*argv, env=env), cwd=str(unprivileged.root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


VIAS = ["python", "starter"]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("reaped", [False, True], ids=["zombie-beside-a-rank", "reaped-alone"])
def test_a_rank_killed_while_its_node_container_is_set_up(unprivileged: Unprivileged,
                                                          workdir: Path, reaped: bool, via: str):
    """Under a launcher the first rank of a node forks a holder that sets the container up for
    all of them. A rank killed while it waits must neither take the holder down with it (a
    zombie's socket failed the holder's reply with EPIPE, and the other ranks with it) nor
    keep it waiting (a reaped rank alone left the holder idle for 60 s)."""
    key = f"faults-{os.getpid()}-{time.monotonic_ns()}"
    with Gate(workdir / "fuse-gate", FUSE_GATE, unprivileged) as gate:
        env = site_config(workdir, f'[image]\nsquashfuse = "{gate.path}"\n')
        before = HostState.now(unprivileged.uid)
        killed = node_rank(unprivileged, key, env, via)
        gate.wait_started()
        others = [] if reaped else [node_rank(unprivileged, key, env, via)]
        wait_for(lambda: all(blocked_in(r.pid, "unix_stream_read") for r in [killed, *others]),
                 "the ranks wait for the holder")
        killed.kill()
        if reaped:
            killed.wait()
        gate.let_through()
        for rank in others:
            out, err = rank.communicate(timeout=30)
            assert (rank.returncode, out, err) == (0, "in\n", "")
        assert killed.wait(timeout=10) == -signal.SIGKILL
        assert leftovers(unprivileged.uid, before) == {}


@pytest.mark.parametrize("via", VIAS)
def test_ranks_start_over_when_their_holder_is_killed_during_set_up(unprivileged: Unprivileged,
                                                                    workdir: Path, via: str):
    """The waiting ranks see the holder's connection reset: one of them starts a new holder
    and both run (they used to fail with a ConnectionResetError traceback)."""
    key = f"faults-{os.getpid()}-{time.monotonic_ns()}"
    with Gate(workdir / "fuse-gate", FUSE_GATE, unprivileged) as gate:
        env = site_config(workdir, f'[image]\nsquashfuse = "{gate.path}"\n')
        before = HostState.now(unprivileged.uid)
        ranks = [node_rank(unprivileged, key, env, via)]
        gate.wait_started()
        ranks.append(node_rank(unprivileged, key, env, via))
        wait_for(lambda: all(blocked_in(r.pid, "unix_stream_read") for r in ranks),
                 "both ranks wait for the holder")
        (holder,) = set(user_processes(unprivileged.uid, "hpcrun")) - {r.pid for r in ranks}
        os.kill(holder, signal.SIGKILL)
        gate.wait_started(2)  # the new holder's FUSE server
        gate.let_through()
        for rank in ranks:
            out, err = rank.communicate(timeout=30)
            assert (rank.returncode, out, err) == (0, "in\n", "")
        assert leftovers(unprivileged.uid, before) == {}


def test_fuse_server_killed_under_a_running_program(unprivileged: Unprivileged):
    """The image's mount fails every request from then on: the program sees errors and
    decides what to do; nothing hangs. A request in flight when the server dies fails with
    ECONNABORTED, every later one with ENOTCONN. (Each round looks up a name never seen:
    what the kernel has cached, /bin/busybox's pages included, needs no server, and a loop
    of cached reads alone ran on after the kill, once in a full run.)"""
    before = HostState.now(unprivileged.uid)
    proc = start(unprivileged, "exec", str(unprivileged.busybox_sif), "sh", "-c",
                 "echo up; i=0; while cat /bin/busybox >/dev/null && "
                 "cat /absent-$i 2>&1 | grep -q 'No such file'; do i=$((i + 1)); sleep 0.05; "
                 "done; ls; exit 3",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    (server,) = user_processes(unprivileged.uid, FUSE_SERVER)
    os.kill(server, signal.SIGKILL)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert err.splitlines()[-1] == f"sh: ls: {os.strerror(errno.ENOTCONN)}"
    assert leftovers(unprivileged.uid, before) == {}


@pytest.mark.parametrize("options, target", [((), "/fault-fill"),
                                             (("--contain",), "$HOME/fault-fill")],
                         ids=["root", "contained-home"])
def test_full_session_layer(unprivileged: Unprivileged, workdir: Path, options: tuple[str, ...],
                            target: str):
    """The writable layer over the image is a tmpfs of session.size_mb, private to the
    container: filling it fails the writer with ENOSPC and nothing reaches the host. (The
    container's /tmp is not in it: by default it is the host's /tmp, bound.)"""
    env = site_config(workdir, "[session]\nsize_mb = 4\n")
    home = pwd.getpwuid(unprivileged.uid).pw_dir
    before = HostState.now(unprivileged.uid)
    r = unprivileged.run("exec", *options, str(unprivileged.busybox_sif), "sh", "-c",
                         f"df -k {os.path.dirname(target)} | tail -n 1; "
                         f"dd if=/dev/zero of={target} bs=1M count=100", env=env)
    assert r.returncode == 1
    written = target.replace("$HOME", home)
    assert f"dd: error writing '{written}': {os.strerror(errno.ENOSPC)}" in r.stderr
    assert r.stdout.split()[:2] == ["hpcbind", "4096"]  # the session tmpfs, in 1 KiB blocks
    assert not any(Path(p).exists() for p in ("/fault-fill", f"{home}/fault-fill"))
    assert leftovers(unprivileged.uid, before) == {}


@pytest.mark.parametrize("mode", ["squashfuse", "extracted", "node-session", "starter"])
def test_200_launches_at_once(unprivileged: Unprivileged, workdir: Path, mode: str):
    """200 containers at once (200 FUSE servers; one unpacking, shared, when there is no
    FUSE), or 200 ranks joining one node's container, in Python or through hpcrun-starter."""
    count = 200
    env = {}
    if mode == "extracted":
        env = {**site_config(workdir, '[image]\nsquashfuse = "absent"\n'),
               "XDG_CACHE_HOME": str(workdir / "cache")}
    key = f"faults-{os.getpid()}-{time.monotonic_ns()}"

    def argv(i: int) -> list[str]:
        args = (str(unprivileged.busybox_sif), "sh", "-c",
                'echo "$0 $(id -un) $(wc -c < /bin/busybox)"', str(i))
        if mode in ("node-session", "starter"):
            return unprivileged.rank_command("python" if mode == "node-session" else mode, key,
                                             *args)
        return [str(unprivileged.launcher), "exec", *args]

    before = HostState.now(unprivileged.uid)
    procs = [subprocess.Popen(unprivileged.command(*argv(i), env=env), cwd=str(unprivileged.root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    size = "".join(results[0][0].split()[-1:])  # the same file for all
    name = pwd.getpwuid(unprivileged.uid).pw_name
    assert [(i, r) for i, r in enumerate(results) if r != (f"{i} {name} {size}\n", "", 0)] == []
    if mode == "extracted":  # one tree, unpacked once
        rootfs = workdir / "cache" / "hpcbind" / "rootfs"
        assert sorted(p.suffix for p in rootfs.iterdir()) == ["", ".lock"]
    assert leftovers(unprivileged.uid, before) == {}
