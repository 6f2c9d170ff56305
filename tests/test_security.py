"""The runtime's promise, tested as an unprivileged user: no way to become root, no way to read
what the user could not read outside, no way to change the host's mounts or the host's files.

Where an attack needs a tool that could be broken (a program with file capabilities, a
setuid newuidmap), the test first shows the tool working on the host, so a refusal inside
means the container held, not that the tool was broken."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, HPCRUN, PYTHON, SIF_CORPUS, Unprivileged
from leftovers import HostState, leftovers

PROGRAMS = {
    "euid": r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("%d %d %d %d\n", (int)getuid(), (int)geteuid(), (int)getgid(), (int)getegid());
    return 0;
}
""",
    # what file capabilities (cap_setuid, cap_dac_read_search) would give: uid 0, and reading
    # a file only root may read (argv[1])
    "caps": r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    printf("read %d\n", open(argv[1], O_RDONLY) >= 0);
    printf("setuid %d\n", setuid(0) == 0);
    return 0;
}
""",
    # a child enters a new user namespace; newuidmap (argv[1]) is asked to map uid 0 there to
    # uid argv[2] of the parent namespace; the child prints the map it got
    "mapper": r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int ready[2], mapped[2], status;
    char byte, pid[16], line[128] = "none\n";
    if (argc != 3 || pipe(ready) || pipe(mapped)) return 2;
    pid_t child = fork();
    if (child == 0) {
        if (unshare(CLONE_NEWUSER)) { perror("unshare"); _exit(2); }
        if (write(ready[1], "r", 1) != 1 || read(mapped[0], &byte, 1) != 1) _exit(2);
        FILE *map = fopen("/proc/self/uid_map", "r");
        if (map && !fgets(line, sizeof line, map)) snprintf(line, sizeof line, "none\n");
        printf("map %s", line);
        fflush(stdout);
        _exit(0);
    }
    if (read(ready[0], &byte, 1) != 1) return 2;
    snprintf(pid, sizeof pid, "%d", (int)child);
    pid_t helper = fork();
    if (helper == 0) { execl(argv[1], argv[1], pid, "0", argv[2], "1", (char *)0); _exit(127); }
    waitpid(helper, &status, 0);
    printf("newuidmap %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
    if (write(mapped[1], "m", 1) != 1) return 2;
    waitpid(child, &status, 0);
    return 0;
}
""",
}
FILE_CAPS = "cap_setuid,cap_dac_read_search+ep"
# where the hostile image's runscript link climbs to: a host file, absent from the image
OUTSIDE_RUNSCRIPT = "/var/tmp/hpcbind-outside-runscript"


def build_program(name: str, out: Path) -> None:
    source = out.with_suffix(".c")
    source.write_text(PROGRAMS[name])
    built = subprocess.run(["gcc", "-static", "-O", "-o", str(out), str(source)],
                           capture_output=True, text=True)
    source.unlink()
    if built.returncode != 0:
        pytest.fail(f"cannot build the static test program {name}: {built.stderr[-300:]}")


def copy_with_libraries(program: str, root: Path) -> None:
    """PROGRAM and its shared libraries (as ldd lists them) at the same paths under ROOT."""
    listing = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    for path in [program, *re.findall(r"(/\S+) \(0x", listing)]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), target)


def root_device() -> tuple[int, int]:
    """The block device holding the host's root filesystem (or /dev/null's numbers where / has
    none): a node for it, writable by all, is what a hostile image would ship to read the disk."""
    dev = os.stat("/").st_dev
    return (os.major(dev), os.minor(dev)) if os.major(dev) else (1, 3)


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory, unprivileged: Unprivileged) -> Path:
    """busybox plus: a setuid-root program, a program with file capabilities, a
    setuid newuidmap with an /etc/subuid granting the user host uid 0, a world-writable node
    of the host's disk, and links that point out of the root."""
    work = tmp_path_factory.mktemp("hostile")
    root = work / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(root),
                    str(BUSYBOX_SIF)], check=True, capture_output=True)
    for name in ("euid", "caps", "mapper"):
        build_program(name, root / "bin" / name)
    os.chmod(root / "bin/euid", 0o6755)
    subprocess.run(["setcap", FILE_CAPS, str(root / "bin/caps")], check=True)
    copy_with_libraries("/usr/bin/newuidmap", root)
    os.chmod(root / "usr/bin/newuidmap", 0o4755)
    (root / "etc/subuid").write_text(f"{user_name(unprivileged)}:0:65536\n")
    os.mknod(root / "disk", 0o666 | 0o060000, os.makedev(*root_device()))  # S_IFBLK
    os.chmod(root / "disk", 0o666)
    os.symlink("../../../../../../etc", root / "climb")
    (root / ".singularity.d/runscript").unlink()
    os.symlink(f"../../../../../..{OUTSIDE_RUNSCRIPT}", root / ".singularity.d/runscript")
    os.symlink("/etc", root / "abs")
    image = unprivileged.root / "hostile.sqfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-all-root",
                    "-no-progress"], check=True, capture_output=True)
    image.chmod(0o644)
    return image


@pytest.fixture
def root_secret() -> Path:
    """A host file only root may read."""
    secret = Path("/var/tmp") / f"hpcbind-secret-{os.getpid()}"
    secret.write_text("TOP-SECRET\n")
    secret.chmod(0o600)
    yield secret
    secret.unlink()


def user_name(unprivileged: Unprivileged) -> str:
    return pwd.getpwuid(unprivileged.uid).pw_name


def test_setuid_root_binary_runs_without_privilege(unprivileged: Unprivileged, hostile_image):
    """Seen red: the same setuid-root program on the host (a mount without nosuid) reports
    euid 0, so the ids inside are the container's doing."""
    control = unprivileged.root / "euid-on-the-host"
    build_program("euid", control)
    os.chown(control, 0, 0)
    os.chmod(control, 0o6755)
    uid, gid = unprivileged.uid, unprivileged.gid
    r = subprocess.run(unprivileged.command(str(control)), capture_output=True, text=True)
    assert r.stdout.split() == [str(uid), "0", str(gid), "0"], "setuid works on the host"

    r = unprivileged.run("exec", str(hostile_image), "sh", "-c",
                         "ls -l /bin/euid; /bin/euid; grep CapEff /proc/self/status")
    assert r.returncode == 0, r.stderr
    listing, ids, caps = r.stdout.splitlines()
    assert listing.startswith("-rwsr-sr-x"), "the test image must carry the setuid/setgid bits"
    assert ids.split() == [str(uid), str(uid), str(gid), str(gid)]
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
def test_cannot_read_what_is_unreadable_outside(unprivileged: Unprivileged, root_secret):
    r = unprivileged.run("exec", "--bind", f"{root_secret}:/s", str(unprivileged.busybox_sif),
                         "cat", "/s")
    assert "TOP-SECRET" not in r.stdout and "Permission denied" in r.stderr
    r = unprivileged.run("exec", "--bind", "/root:/r", str(unprivileged.busybox_sif), "ls", "/r")
    assert r.returncode != 0


@pytest.fixture
def shared_mount(unprivileged: Unprivileged) -> Iterator[Path]:
    """A host tmpfs marked shared, with an empty ``sub`` directory: a mount made on any copy
    of it in its peer group shows on the host."""
    shared = Path(tempfile.mkdtemp(prefix="shared-", dir=unprivileged.root))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0777", "hpcbind-test", str(shared)],
                   check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        (shared / "sub").mkdir(mode=0o777)
        yield shared
    finally:
        subprocess.run(["umount", "-R", str(shared)], check=True)


def mounts_under(prefix: Path) -> list[str]:
    """The host's mount table, at and under PREFIX or on /tmp (the session layer's place)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == "/tmp" or p == str(prefix) or p.startswith(f"{prefix}/")]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a shared host mount")
@pytest.mark.parametrize("as_root", [False, True], ids=["user", "root"])
def test_no_mount_reaches_the_host(unprivileged: Unprivileged, shared_mount, as_root):
    """While the container runs, with a shared host mount bound in and another bind under it,
    none of its mounts (image, session layer, binds) is in the host's table. Root is tried
    too: it has no user namespace, whose shared mounts the kernel would turn into slaves.
    Seen red: as root, with ``prepare``'s remount of / MS_PRIVATE removed, the container's
    mounts went through the shared peer group and its own bind under it was gone ("can't
    open '/mnt/x/sub/marker'"); the host control shows a mount made on a copy of a shared
    mount in another namespace reaching the host's table."""
    other = Path(tempfile.mkdtemp(prefix="other-", dir=unprivileged.root))
    other.chmod(0o755)
    (other / "marker").write_text("other\n")
    subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "mount", "--bind",
                    str(other), str(shared_mount / "sub")], check=True)
    assert (shared_mount / "sub/marker").exists(), "a shared mount propagates on the host"
    subprocess.run(["umount", str(shared_mount / "sub")], check=True)

    before = mounts_under(unprivileged.root)
    argv = ["exec", "--bind", f"{shared_mount}:/mnt/x", "--bind", f"{other}:/mnt/x/sub",
            str(unprivileged.busybox_sif), "sh", "-c", "cat /mnt/x/sub/marker 2>&1; read line"]
    command = [str(unprivileged.launcher), *argv] if as_root else unprivileged.argv(*argv)
    container = subprocess.Popen(command, cwd=unprivileged.root, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert container.stdout.readline() == "other\n", "the container's mounts are in place"
        during = mounts_under(unprivileged.root)
    finally:
        out, err = container.communicate("\n", timeout=60)
    assert container.returncode == 0, err
    assert during == before


def test_uid_map_is_identity_only(unprivileged: Unprivileged):
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "cat", "/proc/self/uid_map",
                         "/proc/self/gid_map")
    uid, gid = unprivileged.uid, unprivileged.gid
    if uid == 0:
        pytest.skip("root runs without a user namespace")
    assert [line.split() for line in r.stdout.splitlines()] == [[str(uid), str(uid), "1"],
                                                                [str(gid), str(gid), "1"]]


def test_file_capabilities_in_the_image_give_nothing(unprivileged: Unprivileged, hostile_image,
                                                     root_secret, tmp_path):
    subprocess.run(["unsquashfs", "-q", "-d", str(tmp_path / "x"), str(hostile_image), "bin/caps"],
                   check=True, capture_output=True)
    carried = subprocess.run(["getcap", str(tmp_path / "x/bin/caps")], capture_output=True,
                             text=True).stdout
    assert "cap_dac_read_search,cap_setuid=ep" in carried, "the image must carry the capabilities"
    control = unprivileged.root / "caps-on-the-host"
    build_program("caps", control)
    subprocess.run(["setcap", FILE_CAPS, str(control)], check=True)
    r = subprocess.run(unprivileged.command(str(control), str(root_secret)), capture_output=True,
                       text=True)
    assert r.stdout.split("\n")[:2] == ["read 1", "setuid 1"], "the capabilities work on the host"

    r = unprivileged.run("exec", "--bind", f"{root_secret}:/s", str(hostile_image), "sh", "-c",
                         "/bin/caps /s; grep -E '^Cap(Prm|Eff)' /proc/self/status")
    assert r.returncode == 0, r.stderr
    read, setuid, prm, eff = r.stdout.splitlines()
    assert (read, setuid) == ("read 0", "setuid 0")
    assert prm.split()[1] == eff.split()[1] == "0000000000000000"


def test_setuid_newuidmap_cannot_map_host_root(unprivileged: Unprivileged, hostile_image):
    """The image ships newuidmap (setuid root) and an /etc/subuid granting the user uid 0: with
    setuid honoured, the user's namespace would map its root to the host's root. Seen red:
    the same mapper and newuidmap on the host (the control) exit 0 and map the user's
    subordinate ids; inside, newuidmap runs as the user and the kernel refuses its write."""
    entry = next((line.split(":") for line in Path("/etc/subuid").read_text().splitlines()
                  if line.startswith(f"{user_name(unprivileged)}:")), None)
    assert entry, "make test-user gives the test user subordinate ids"
    mapper = unprivileged.root / "mapper-on-the-host"
    build_program("mapper", mapper)
    r = subprocess.run(unprivileged.command(str(mapper), "/usr/bin/newuidmap", entry[1]),
                       capture_output=True, text=True)
    assert r.stdout.split() == ["newuidmap", "0", "map", "0", entry[1], "1"], r.stderr

    r = unprivileged.run("exec", str(hostile_image), "sh", "-c",
                         "ls -l /usr/bin/newuidmap; /bin/mapper /usr/bin/newuidmap 0")
    listing, *rest = r.stdout.splitlines()
    assert listing.startswith("-rwsr-xr-x")
    assert rest == ["newuidmap 1", "map none"], r.stderr
    assert r.stderr == "newuidmap: write to uid_map failed: Operation not permitted\n"


def test_device_node_in_the_image_cannot_be_opened(unprivileged: Unprivileged, hostile_image):
    r = unprivileged.run("exec", str(hostile_image), "sh", "-c",
                         "ls -l /disk; head -c 512 /disk | wc -c")
    listing, count = r.stdout.splitlines()
    assert listing[0] in "bc" and listing[1:10] == "rw-rw-rw-"
    assert count == "0" and "Permission denied" in r.stderr


def test_program_inherits_no_descriptor_of_the_runtime(unprivileged: Unprivileged):
    """A leaked descriptor of a host directory (the image's, the session's, /dev/fuse) would
    let the program walk out of the container, as in runc's CVE-2024-21626."""
    # ls itself is the program: a shell would list the pipes it makes for itself
    bare = subprocess.run(unprivileged.command("ls", "/proc/self/fd"), capture_output=True,
                          text=True, cwd=unprivileged.root)
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "ls", "/proc/self/fd")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == bare.stdout.split() == ["0", "1", "2", "3"]  # 3: ls's own
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "readlink", "/proc/self/cwd")
    assert r.stdout == f"{unprivileged.root}\n"  # the bound working directory, no host fd


def test_ranks_inherit_no_descriptor_of_the_node_session(unprivileged: Unprivileged):
    launcher = ["mpirun.openmpi", "--oversubscribe", "-np", "2"]
    listing = ["ls", "--color=never", "/proc/self/fd"]  # Open MPI gives ranks a terminal
    bare = subprocess.run(unprivileged.command(*launcher, *listing),
                          capture_output=True, text=True, cwd=unprivileged.root, timeout=120)
    r = unprivileged.run(*launcher, str(unprivileged.busybox_sif), *listing, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(bare.stdout.split()), bare.stderr


# CVE-2019-5736's way round "Text file busy": hold each process's executable open through
# /proc/PID/exe, wait until that process is gone, then reopen the descriptor for writing.
# Only executables the user may write are tried: those of the job's runtime, here.
OVERWRITE_ATTACK = r"""
for exe in /proc/[0-9]*/exe; do
  pid=${exe#/proc/}; pid=${pid%/exe}
  setsid sh -c '
    exec 3< "$1" 2>/dev/null && [ -w /proc/self/fd/3 ] || exit 0
    echo "target $2"
    while [ -e "/proc/$2" ]; do sleep 0.05; done
    if printf X >> /proc/self/fd/3; then echo "wrote $2"; else echo "refused $2"; fi
  ' - "$exe" "$pid" >> "$1" 2>/dev/null &
done
echo tried
"""


def _executable(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def overwrite_attempts(report: Path) -> list[str]:
    """The attack's report once every process it targeted is gone and was written (or not)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = report.read_text().split()
        if lines.count("target") == lines.count("wrote") + lines.count("refused"):
            return report.read_text().splitlines()
        time.sleep(0.1)
    pytest.fail(f"the attack did not finish: {report.read_text()!r}")


@pytest.fixture
def own_interpreter(unprivileged: Unprivileged) -> Iterator[Path]:
    """A copy of Python the test user owns (as a user's own build or conda's would be), and
    an hpcrun launcher started by it: the runtime and the node's holder run this file."""
    scratch = Path(tempfile.mkdtemp(prefix="own-python-", dir=unprivileged.root))
    python = scratch / "python3"
    shutil.copy(os.path.realpath(PYTHON), python)
    launcher = unprivileged.launcher_run_by(str(python), scratch / "hpcrun")
    for path in (scratch, python, launcher):
        path.chmod(0o755)
        os.chown(path, unprivileged.uid, unprivileged.gid)
    yield launcher


def test_runtime_cannot_be_overwritten_through_proc(unprivileged: Unprivileged, own_interpreter):
    """runc's CVE-2019-5736: a container process reopens the runtime's executable through
    /proc/PID/exe and writes it, so the user's next launch runs the image's code on the
    host. The interpreter is the user's own, so only the container can stop it; every
    process of the job, the node session's holder included, is tried. Seen red: the same
    attack on the host (the control) appends to the interpreter; inside, with a patched
    holder that drops its capabilities in the container's user namespace (capset to none)
    and no PR_SET_DUMPABLE 0, it wrote the holder's interpreter ("wrote PID"); either
    protection alone keeps it green."""
    python = own_interpreter.with_name("python3")
    script = unprivileged.root / "overwrite-attack.sh"
    script.write_text(OVERWRITE_ATTACK)
    script.chmod(0o755)
    control = unprivileged.root / "control-python3"
    shutil.copy(python, control)
    os.chown(control, unprivileged.uid, unprivileged.gid)
    victim = subprocess.Popen(unprivileged.command(str(control), "-c", "input()"),
                              stdin=subprocess.PIPE, text=True)
    # setpriv and env exec the interpreter in turn: the attack must find it already there
    deadline = time.monotonic() + 30
    while _executable(victim.pid) != str(control) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _executable(victim.pid) == str(control), "the control interpreter did not start"
    report = unprivileged.root / "control-report"
    subprocess.run(unprivileged.command("sh", str(script), str(report)), check=True)
    victim.communicate("\n", timeout=60)
    assert f"wrote {victim.pid}" in overwrite_attempts(report), "the attack works outside"
    assert control.read_bytes().endswith(b"X")

    before = hashlib.sha256(python.read_bytes()).hexdigest()
    report = unprivileged.root / "report"
    r = subprocess.run(unprivileged.command(
        str(own_interpreter), "exec", "--node-session", secrets.token_hex(8),
        str(unprivileged.busybox_sif), "sh", str(script), str(report),
        env={**rank_env(secrets.token_hex(16)), "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}),
        capture_output=True, text=True, cwd=unprivileged.root, timeout=60)
    assert (r.returncode, r.stdout) == (0, "tried\n"), r.stderr
    attempts = overwrite_attempts(report)
    assert not [line for line in attempts if line.startswith("wrote")], attempts
    assert hashlib.sha256(python.read_bytes()).hexdigest() == before


def test_inspect_follows_sandbox_links_inside_the_sandbox(unprivileged: Unprivileged, tmp_path):
    host_dir = unprivileged.root / "host-metadata"  # what a link out of the sandbox would reach
    host_dir.mkdir()
    (host_dir / "runscript").write_text("the host's\n")
    sandbox = unprivileged.root / "linking-sandbox"
    (sandbox / "etc").mkdir(parents=True)
    (sandbox / "etc/hostname").write_text("the sandbox's own\n")
    (sandbox / "meta/env").mkdir(parents=True)
    (sandbox / "meta/runscript").symlink_to("/etc/hostname")
    (sandbox / "meta/env/90-environment.sh").symlink_to("../../../../../../etc/hostname")
    (sandbox / "meta/labels.json").symlink_to("/proc/self/environ")
    (sandbox / ".singularity.d").symlink_to(host_dir)
    r = unprivileged.run("inspect", "--runscript", str(sandbox))
    assert "the host's" not in r.stdout
    (sandbox / ".singularity.d").unlink()
    (sandbox / ".singularity.d").symlink_to("/meta")
    r = unprivileged.run("inspect", "--json", str(sandbox))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("the sandbox's own") == 2  # runscript and environment
    assert "HOME=" not in r.stdout


def test_runscript_linked_out_of_the_image_stays_inside(unprivileged: Unprivileged,
                                                        hostile_image):
    host_script = Path(OUTSIDE_RUNSCRIPT)
    host_script.write_text("#!/bin/sh\necho the host's runscript\n")
    host_script.chmod(0o755)
    try:
        r = unprivileged.run("run", "--contain", str(hostile_image))
    finally:
        host_script.unlink()
    assert "the host's runscript" not in r.stdout
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr


def rank_env(secret: str) -> dict[str, str]:
    """What ``hpcrun mpirun`` gives the two ranks of one node: the launch's secret, and the
    local size, so the holder waits for both and they always share one container."""
    return {"HPCBIND_NODE_SECRET": secret, "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}


def test_launcher_gives_every_rank_a_secret_for_the_session_name(unprivileged: Unprivileged):
    """Seen red: without the launcher's ``os.environ[SECRET_VARIABLE] = ...``, 0 and 0."""
    r = unprivileged.run("mpirun.openmpi", "--oversubscribe", "-np", "2",
                         str(unprivileged.busybox_sif), "sh", "-c",
                         'echo "${#HPCBIND_NODE_SECRET}"', timeout=120)
    assert (r.returncode, r.stdout) == (0, "32\n32\n"), r.stderr


def test_a_squatted_node_session_name_harms_nothing(unprivileged: Unprivileged):
    """Another user (root here) reads a rank's KEY from /proc/PID/cmdline and binds the name
    it would give, first: the ranks still share one container (the name carries the
    launch's secret), and nothing is said. Seen red: with ``socket_name`` ignoring
    HPCBIND_NODE_SECRET, the ranks were refused ("held by another user") before the
    fallback, and ran in two containers with the note after it."""
    key, secret = secrets.token_hex(8), secrets.token_hex(16)
    view = os.stat("/proc/self/ns/mnt").st_ino
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(f"\0hpcbind/{unprivileged.uid}/{key}//{view:x}".encode())
    squatter.listen(8)
    with squatter:
        ranks = [unprivileged.popen("exec", "--node-session", key,
                                    str(unprivileged.busybox_sif), "readlink",
                                    "/proc/self/ns/mnt", env=rank_env(secret),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outputs = [rank.communicate(timeout=60) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert [err for _, err in outputs] == ["", ""]
    first, second = (out for out, _ in outputs)
    assert first == second and first.startswith("mnt:["), "one container for both ranks"


@pytest.mark.parametrize("via", ["python", "starter"])
def test_a_squatter_who_knows_the_name_only_costs_the_sharing(unprivileged: Unprivileged,
                                                              via: str):
    """Should another user hold the very name (a rank started without the secret, or a
    name read from /proc/net/unix and bound after its holder left), each rank runs in a
    container of its own, with a note, and takes nothing from the squatter, even one that
    never accepts. Seen red: with ``_receive`` raising on another user's name again (the old
    behaviour), exit 255; without the connect timeout, the rank hung in connect."""
    key = secrets.token_hex(8)
    view = os.stat("/proc/self/ns/mnt").st_ino
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(f"\0hpcbind/{unprivileged.uid}/{key}//{view:x}".encode())
    squatter.listen(0)  # and never accepts: its backlog fills at once
    with squatter:
        argv = unprivileged.rank_command(via, key, str(unprivileged.busybox_sif), "echo", "ran")
        r = subprocess.run(unprivileged.command(*argv), capture_output=True, text=True,
                           timeout=60)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    assert r.stderr == (f"hpcrun: note: could not join the node session {key}; this rank "
                        "runs in a container of its own\n")


def test_another_user_cannot_join_a_node_session(unprivileged: Unprivileged):
    """Another user (root here, who can read the secret) connects to a running holder: the
    holder hangs up with nothing sent, no namespace descriptor above all. Seen red: with the
    holder's peer-uid check removed, the connection received the holder's user and mount
    namespaces (2 descriptors)."""
    key, secret = secrets.token_hex(8), secrets.token_hex(16)
    view = os.stat("/proc/self/ns/mnt").st_ino
    rank = unprivileged.popen("exec", "--node-session", key, str(unprivileged.busybox_sif),
                              "sh", "-c", "echo joined; read line", env=rank_env(secret),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert rank.stdout.readline() == "joined\n"  # the holder is up and serving
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as intruder:
            intruder.connect(f"\0hpcbind/{unprivileged.uid}/{key}/{secret}/{view:x}".encode())
            message, fds, _, _ = socket.recv_fds(intruder, 1 << 20, 2)
        for fd in fds:
            os.close(fd)
        assert (message, len(fds)) == (b"", 0)
    finally:
        rank.communicate("\n", timeout=60)
    assert rank.returncode == 0


@pytest.fixture
def signed_busybox(unprivileged: Unprivileged) -> Iterator[Path]:
    """Outside /tmp (the session tmpfs covers it while helpers start): a SIF of the busybox
    root signed with the sylabs/sif unit-test key (fingerprint 12045C8C...), that key as the
    keyring, a FUSE server that leaves a mark before it serves the image, and an hpcrun
    started by the venv's Python, as ``make`` installs it: verifying needs pgpy and a
    newer cryptography than Debian's, which the fixture's system Python lacks."""
    work = Path(tempfile.mkdtemp(prefix="hpcbind-signer-", dir="/var/tmp"))
    launcher = unprivileged.launcher_run_by(sys.executable, work / "hpcrun")
    image, squashfs = work / "busybox.sif", work / "busybox.sqfs"
    with open(squashfs, "wb") as f:  # the corpus's SIF is signed by a key nobody has
        subprocess.run([HPCRUN, "sif", "dump", "4", str(BUSYBOX_SIF)], stdout=f, check=True)
    subprocess.run([HPCRUN, "build", str(image), str(squashfs)], check=True,
                   capture_output=True)
    key = SIF_CORPUS / "sylabs-sif" / "keys" / "private.asc"
    shutil.copyfile(key, work / "keyring.asc")
    subprocess.run([HPCRUN, "sign", "--key", str(key), str(image)], check=True,
                   capture_output=True)
    server = work / "tripwire-squashfuse"
    server.write_text(f"#!/bin/sh\ntouch {work}/mounted\nexec squashfuse_ll \"$@\"\n")
    for path in (work, image, work / "keyring.asc", server, launcher):
        path.chmod(0o755 if path in (work, server, launcher) else 0o644)
    os.chown(work, unprivileged.uid, unprivileged.gid)
    yield work
    shutil.rmtree(work)


@pytest.mark.parametrize("allowed, runs", [
    ("12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84", True),  # the control: the tripwire works
    ("0000000000000000000000000000000000000000", False),
])
def test_unallowed_signer_is_refused_before_anything_is_mounted(
        unprivileged: Unprivileged, signed_busybox: Path, allowed: str, runs: bool):
    """An image verified as signed, but by a key the site does not allow, is refused before
    its FUSE server starts (the tripwire server leaves no mark) and leaves nothing behind.
    Seen red with the protection removed: with ``check_signers`` moved in ``launch.py`` from
    before ``assemble`` to after ``prepare`` (the container set up, the image mounted), the
    refusal still came, but the mark was there."""
    config = signed_busybox / "hpcbind.toml"
    config.write_text(f'[trust]\nallowed_signers = ["{allowed}"]\n'
                      f'keyrings = ["{signed_busybox}/keyring.asc"]\n'
                      f'[image]\nsquashfuse = "{signed_busybox}/tripwire-squashfuse"\n')
    config.chmod(0o644)
    before = HostState.now(unprivileged.uid)
    r = subprocess.run(unprivileged.command(str(signed_busybox / "hpcrun"), "exec",
                                            str(signed_busybox / "busybox.sif"), "true",
                                            env={"HPCBIND_CONFIG": str(config)}),
                       capture_output=True, text=True, timeout=60, cwd=str(unprivileged.root))
    assert (signed_busybox / "mounted").exists() is runs, r.stderr
    if runs:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 255 and r.stderr.count("\n") == 1, r.stderr
        assert "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84" in r.stderr
    assert leftovers(unprivileged.uid, before) == {}
