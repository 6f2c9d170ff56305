"""Shared fixtures: the conformance data, and running hpcrun as an unprivileged user.

The runtime's promise is about unprivileged users, so its tests run hpcrun as the user
``hpcbind-test`` (created by ``make test``). CI may clone the repository under /root (0700),
out of that user's reach, so the package and the images those tests use are copied to a
world-readable temporary directory and run with Debian's python3: the exec path needs only
the standard library.
"""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the corpora the suite reads (tests/data/README.md)
SIF_CORPUS = DATA / "sif"
BUSYBOX_SIF = SIF_CORPUS / "singularityce" / "images" / "busybox_amd64.sif"
TEST_USER = "hpcbind-test"
# what hpcrun imports beyond the standard library outside the plain exec path
PURE_PYTHON_DEPENDENCIES = ("elftools", "yaml", "rich", "pygments", "markdown_it", "mdurl")
PYTHON = "/usr/bin/python3"
HPCRUN = str(Path(sys.executable).with_name("hpcrun"))  # the venv's launcher


@pytest.fixture(scope="session")
def data() -> Path:
    if not SIF_CORPUS.is_dir():
        pytest.fail(f"test data missing at {DATA}: the repository ships it; restore tests/data")
    return DATA


@dataclass(frozen=True)
class Unprivileged:
    """hpcrun as the unprivileged test user, from a world-readable copy of the package."""

    root: Path  # world-readable scratch directory owned by the test user
    launcher: Path
    busybox_sif: Path
    uid: int
    gid: int

    def run(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args, env=env), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or str(self.root), input=input)

    def argv(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        return self.command(str(self.launcher), *args, env=env)

    def command(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """ARGV run on the host as the test user, with the environment hpcrun gets."""
        user_env = {"HOME": pwd.getpwuid(self.uid).pw_dir, "PATH": "/usr/bin:/bin",
                    "LANG": "C.UTF-8", **(env or {})}
        prefix = [] if os.getuid() == self.uid else ["setpriv", f"--reuid={self.uid}",
                                                     f"--regid={self.gid}", "--clear-groups"]
        return prefix + ["env", "-i", *(f"{k}={v}" for k, v in user_env.items()), *argv]

    def launcher_run_by(self, python: str, path: Path) -> Path:
        """Another hpcrun launcher of this copy of the package, at ``path``, started by
        ``python`` (a Python the user owns, the venv's)."""
        return write_launcher(path, self.root / "pkg", python)

    def rank_command(self, via: str, key: str, *args: str) -> list[str]:
        """A rank as hpcrun mpirun|srun start it, ``hpcrun exec --node-session KEY ARGS``,
        ARGS being the image and the command: straight ("python"), or behind
        hpcrun-starter ("starter"), which takes the Python path only to start the holder."""
        hpcrun = [str(self.launcher), "exec", "--node-session", key, args[0]]
        if via == "starter":
            hpcrun = [str(self.root / "hpcrun-starter"), key, str(len(hpcrun)), *hpcrun]
        return [*hpcrun, *args[1:]]

    def popen(self, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args, env=env), cwd=str(self.root), **kw)


def write_launcher(path: Path, package: Path, python: str) -> Path:
    """An hpcrun launcher at ``path``: ``python`` runs hpcbind from ``package``, as
    scripts/hpcrun.in does from the checkout."""
    path.write_text(f"#!{python} -IS\nimport sys\nsys.path.insert(0, {str(package)!r})\n"
                    "from hpcbind.cli import main\nsys.exit(main())\n")
    return path


# tests/data holds other projects' files, mpi4py's own test suite among them: data, run by
# the tests that need it, never collected here
collect_ignore = ["data"]

EXECUTABLES = ("hpcrun", "hpcrun-starter", "hpcbind-squashfuse", "hpcbind-spawn.so")
# hpcbind-squashfuse as /proc names it (a command name keeps 15 characters)
FUSE_SERVER = "hpcbind-squashf"


def build_helpers(where: Path) -> None:
    """The compiled helpers, beside hpcrun where hpcbind looks for them (``make starter``
    puts them in .venv/bin, with the same flags): built from this checkout's sources, which
    the tests are of."""
    fuse = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                          text=True, check=True).stdout.split()
    helpers = {
        "hpcrun-starter": ("runtime/starter.c", []),
        "hpcbind-squashfuse": ("runtime/squashfs_server.c",
                               ["-lsquashfuse_ll", "-lsquashfuse", *fuse]),
        "hpcbind-spawn.so": ("mpi/spawn.c", ["-shared", "-fPIC", "-nostdlib",
                                                 "-ffreestanding", "-fno-stack-protector"]),
    }
    for name, (source, flags) in helpers.items():
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(where / name),
                        str(REPO / "hpcbind" / source), *flags], check=True)


@pytest.fixture(scope="session")
def unprivileged(data: Path) -> Iterator[Unprivileged]:
    if os.getuid() == 0:
        try:
            user = pwd.getpwnam(TEST_USER)
        except KeyError:
            # a skip would pass the runtime and security suites without running them
            pytest.fail(f"user {TEST_USER} missing: run 'make test-user' (make test does)")
        uid, gid = user.pw_uid, user.pw_gid
    else:
        uid, gid = os.getuid(), os.getgid()
    root = Path(tempfile.mkdtemp(prefix="hpcbind-unpriv-"))
    shutil.copytree(REPO / "hpcbind", root / "pkg" / "hpcbind",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for module in PURE_PYTHON_DEPENDENCIES:  # the launcher's preflight reads ELF files
        source = Path(importlib.import_module(module).__path__[0])
        shutil.copytree(source, root / "pkg" / module, ignore=shutil.ignore_patterns("__pycache__"))
    launcher = write_launcher(root / "hpcrun", root / "pkg", PYTHON)
    build_helpers(root)
    sif = root / "busybox.sif"
    shutil.copyfile(BUSYBOX_SIF, sif)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.parent == root and path.name in EXECUTABLES
                   else 0o644)
        os.chown(path, uid, gid)
    yield Unprivileged(root, launcher, sif, uid, gid)
    shutil.rmtree(root, ignore_errors=True)


def user_processes(uid: int, name: str) -> list[int]:
    """PIDs of live (not zombie) processes of ``uid`` whose command name is ``name``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if (fields.get("Name", "").strip() == name and fields.get("Uid", "").split()[0] == str(uid)
                and not fields.get("State", "").startswith("Z")):
            pids.append(int(entry))
    return pids


def hpcrun_main(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (for commands that do not exec), capturing output."""
    import contextlib
    import io

    from hpcbind.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()

