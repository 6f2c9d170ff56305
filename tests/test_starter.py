"""hpcrun-starter, the C way a rank joins its node's container (hpcbind/runtime/starter.c).

As the unprivileged user: a rank that comes through the starter gets what a rank that
comes through Python gets, byte for byte; an answer it cannot use is one line and exit 255,
never a hang. (A name squatted by another user: test_security.py, for both paths.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Unprivileged
from leftovers import HostState, leftovers

# Everything a program can see of how it was started, from inside the container.
PORTRAIT = r"""
printf 'argv:[%s]\n' "$0" "$@"
echo "cwd: $(pwd)"
env | sort
for fd in /proc/$$/fd/*; do [ -e "$fd" ] && echo "fd ${fd##*/} $(readlink "$fd")"; done
grep -E '^(Uid|Gid|Groups|SigBlk|SigIgn|NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/$$/status
echo "mnt $(readlink /proc/$$/ns/mnt) user $(readlink /proc/$$/ns/user)"
"""


def session_key() -> str:
    return f"starter-{os.getpid()}-{time.monotonic_ns()}"


def rank(unprivileged: Unprivileged, via: str, key: str, *args: str, env=None,
         **popen) -> subprocess.Popen:
    argv = unprivileged.rank_command(via, key, str(unprivileged.busybox_sif), *args)
    return subprocess.Popen(unprivileged.command(*argv, env=env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def portrait(out: str) -> str:
    """A rank's portrait without what differs between any two processes: the pipe to us."""
    return re.sub(r"pipe:\[\d+\]", "pipe", out)


def test_a_rank_through_the_starter_gets_what_a_rank_through_python_gets(
        unprivileged: Unprivileged, tmp_path: Path):
    """Same argv (spaces, empty words), environment, directory, descriptors (one inherited
    on purpose), signal dispositions, ids, capabilities, namespaces and exit status."""
    key = session_key()
    workdir = unprivileged.root / "cwd with space"
    workdir.mkdir(exist_ok=True)
    os.chown(workdir, unprivileged.uid, unprivileged.gid)
    inherited = tmp_path / "inherited"
    inherited.write_text("x")
    env = {"RANK_VALUE": "a=b c", "HPCBIND_NODE_SECRET": "s3cret"}
    before = HostState.now(unprivileged.uid)
    keeper = rank(unprivileged, "python", key, "sleep", "60", env=env)  # the holder's first
    try:
        outputs = {}
        for via in ("python", "starter"):
            with open(inherited) as kept:
                kept_fd = kept.fileno()
                proc = rank(unprivileged, via, key, "sh", "-c", PORTRAIT + "exit 7", "zero",
                            "two words", "", env=env, cwd=workdir, pass_fds=(kept_fd,))
                out, err = proc.communicate(timeout=60)
            assert (proc.returncode, err) == (7, ""), (via, err)
            outputs[via] = portrait(out)
        assert outputs["starter"] == outputs["python"]
        lines = outputs["starter"].splitlines()
        assert lines[:4] == ["argv:[zero]", "argv:[two words]", "argv:[]",
                             f"cwd: {workdir}"]
        assert "RANK_VALUE=a=b c" in lines and "NoNewPrivs:\t1" in lines
        (ignored,) = [int(line.split()[1], 16) for line in lines if line.startswith("SigIgn:")]
        assert not ignored & (1 << signal.SIGPIPE - 1)  # Python ignores it; the rank must not
        fds = [line for line in lines if line.startswith("fd ")]
        assert sorted(int(fd.split()[1]) for fd in fds) == [0, 1, 2, kept_fd], fds
        host_mnt = os.readlink("/proc/self/ns/mnt")
        assert host_mnt not in outputs["starter"]
    finally:
        keeper.kill()
        keeper.wait()
    assert leftovers(unprivileged.uid, before, timeout=20) == {}


@pytest.mark.parametrize("via", ["python", "starter"])
def test_a_signal_reaches_the_program_as_it_would_outside(unprivileged: Unprivileged, via: str):
    """The rank is the program (the starter execs): a signal kills it as it would kill the
    program started by the launcher, and its exit status says so."""
    key = session_key()
    before = HostState.now(unprivileged.uid)
    proc = rank(unprivileged, via, key, "sh", "-c", "echo up; exec sleep 60")
    assert proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert leftovers(unprivileged.uid, before, timeout=20) == {}


def test_128_ranks_of_one_node(unprivileged: Unprivileged):
    """hpcrun mpirun starts the node's holder; the 128 ranks join it through the starter,
    and every one of them runs in the one container."""
    r = unprivileged.run("mpirun.openmpi", "--oversubscribe", "-np", "128",
                         str(unprivileged.busybox_sif), "sh", "-c",
                         "echo $OMPI_COMM_WORLD_RANK $(readlink /proc/self/ns/mnt)", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ranks = sorted(int(line.split()[0]) for line in r.stdout.splitlines())
    assert ranks == list(range(128))
    assert len({line.split()[1] for line in r.stdout.splitlines()}) == 1


FAKE_HOLDER = """
import os, socket, struct, sys
key, answer = sys.argv[1], sys.argv[2]
view = os.stat("/proc/self/ns/mnt").st_ino
name = f"\\0hpcbind/{os.getuid()}/{key}/{os.environ.get('HPCBIND_NODE_SECRET', '')}/{view:x}"
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(name.encode())
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
conn.recv(1 << 20)
if answer == "cut":      # promises 100 bytes, sends 4, dies
    conn.sendall(struct.pack("=I", 100) + b"exec")
elif answer == "fields":  # a whole message whose argc points past the end, no namespaces
    body = b"exec\\0\\0/\\0/\\0\\0\\0a\\0b\\0" + b"99\\0true\\0"
    conn.sendall(struct.pack("=I", len(body)) + body)
elif answer == "huge":
    conn.sendall(struct.pack("=I", 1 << 30))
conn.close()
"""


def fake_holder(unprivileged: Unprivileged, key: str, answer: str) -> subprocess.Popen:
    script = unprivileged.root / "fake-holder.py"
    script.write_text(textwrap.dedent(FAKE_HOLDER))
    script.chmod(0o644)
    argv = [sys.executable, str(script), key, answer]
    holder = subprocess.Popen(unprivileged.command(*argv), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "listening\n"
    return holder


@pytest.mark.parametrize("answer, message", [
    ("cut", "went away in the middle of its answer"),
    ("fields", "sent a malformed answer"),
    ("huge", "sent an answer of 1073741824 bytes"),
])
def test_bad_answers_are_one_line_and_exit_255(unprivileged: Unprivileged, answer: str,
                                               message: str):
    key = session_key()
    holder = fake_holder(unprivileged, key, answer)
    try:
        proc = rank(unprivileged, "starter", key, "echo", "must not run")
        out, err = proc.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert (proc.returncode, out, err.count("\n")) == (255, "", 1), err
    assert err.startswith("hpcrun: error: ") and f"node session {key} " in err and message in err


@pytest.mark.parametrize("argv", [[], ["KEY"], ["KEY", "x", "hpcrun", "exec"],
                                  ["KEY", "9", "hpcrun", "exec"]])
def test_a_bad_command_line_is_one_line_and_exit_255(unprivileged: Unprivileged, argv):
    r = subprocess.run(unprivileged.command(str(unprivileged.root / "hpcrun-starter"), *argv),
                       capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (255, "", 1), r.stderr
    assert r.stderr.startswith("hpcrun: error: ")
