"""Building without root (issue 13): ``hpcrun build --fakeroot`` and ``exec --fakeroot``.

Every build here runs as the unprivileged test user. What a build leaves in the image is read
back with squashfs-tools' ``unsquashfs -lln`` (the numeric owner table another runtime sees)
and compared entry by entry with the source image's, and the result then runs as the user.
The second test user, made here without subordinate ids, shows the fakeroot(1) fallback.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, REPO, Unprivileged, hpcrun_main
from oci_registry import oci_image
from hpcbind.errors import HpcbindError
from hpcbind.host import subids
from hpcbind.host.subids import Facts, Helper, IdMap, fakeroot_map, free_start, parse
from hpcbind.image.build import parse_devices, root_needed, unmapped_owner
from hpcbind.image.deffile import parse as parse_definition
from hpcbind.image.source import locate

EXAMPLE = REPO / "examples" / "example.sif"  # Debian bookworm: dpkg, useradd, coreutils
SECOND_USER = "hpcbind-test2"  # made here, without subordinate ids
MARKER_SECONDS = "3141"  # a `sleep` no other test starts, to find strays by


# ---------------------------------------------------------------------------- the plan


def facts(subuid: str = "alice:100000:65536\n", subgid: str = "alice:100000:65536\n",
          helpers: bool = True, fakeroot: str = "/usr/bin/fakeroot") -> Facts:
    tool = Helper("/usr/bin/newuidmap", True) if helpers else Helper("", False)
    gtool = Helper("/usr/bin/newgidmap", True) if helpers else Helper("", False)
    return Facts("alice", 1000, 1000, parse(subuid), parse(subgid), tool, gtool, fakeroot)


def test_root_is_the_user_and_the_rest_their_subordinate_ids() -> None:
    idmap = fakeroot_map(facts(subuid="# site\nbob:100000:65536\nalice:165536:65536\n"
                               "1000:300000:1000\n", subgid="alice:165536:65536\n"),
                         fake_owners=True)
    assert idmap == IdMap(((0, 1000, 1), (1, 165536, 65536), (65537, 300000, 1000)),
                          ((0, 1000, 1), (1, 165536, 65536)), "/usr/bin/newuidmap",
                          "/usr/bin/newgidmap", "", "")
    assert idmap.subordinate


def test_without_subordinate_ids_root_alone_with_fakeroot_or_a_refusal() -> None:
    others = "bob:100000:65536\ncarol:165536:65536\n"
    idmap = fakeroot_map(facts(subuid=others, subgid=others), fake_owners=True)
    assert (idmap.uid_map, idmap.gid_map, idmap.newuidmap, idmap.fakeroot) == \
        (((0, 1000, 1),), ((0, 1000, 1),), "", "/usr/bin/fakeroot")
    assert "no subordinate ids for alice in /etc/subuid and /etc/subgid" in idmap.note
    assert "'alice:231072:65536'" in idmap.note  # the first free block, as useradd picks
    assert fakeroot_map(facts(subuid=others, subgid=others, fakeroot=""),
                        fake_owners=False).fakeroot == ""  # exec: root alone suffices
    with pytest.raises(HpcbindError) as refused:
        fakeroot_map(facts(subuid="alice:100000:65536\n", subgid=others, fakeroot=""),
                     fake_owners=True)
    assert str(refused.value) == (
        "--fakeroot: alice has no subordinate ids in /etc/subgid, and fakeroot(1) is not "
        "installed to fake file owners instead; ask the site to add the line "
        "'alice:231072:65536' to /etc/subuid and /etc/subgid (or to install fakeroot)")


@pytest.mark.parametrize("subuid, helpers, words", [
    ("bob:100000:65536\nalice:150000:65536\n", True,
     ["subordinate uids 150000-215535 (/etc/subuid:2) overlap those of bob (100000-165535, "
      "/etc/subuid:1)", "'alice:215536:65536'"]),
    ("alice:900:200\n", True, ["subordinate uids 900-1099 (/etc/subuid:1) include your own "
                               "uid 1000"]),
    ("alice:100000:65536\nalice:100000:65536\n", True, ["/etc/subuid:1 and /etc/subuid:2 "
                                                         "overlap"]),
    ("alice:100000:65536\n", False, ["newuidmap is not installed", "apt-get install uidmap"]),
])
def test_bad_site_set_ups_are_one_line(subuid: str, helpers: bool, words: list[str]) -> None:
    with pytest.raises(HpcbindError) as refused:
        fakeroot_map(facts(subuid=subuid, helpers=helpers), fake_owners=True)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--fakeroot: ")
    for word in words:
        assert word in message


def test_a_helper_that_is_not_setuid_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "newuidmap"
    shutil.copyfile("/usr/bin/newuidmap", copy)
    copy.chmod(0o755)  # what a site's broken package or copy leaves: no setuid bit
    assert subids.helper("/usr/bin/newuidmap") == Helper("/usr/bin/newuidmap", True)
    assert subids.helper(str(copy)) == Helper(str(copy), False)
    found = facts()._replace(newuidmap=subids.helper(str(copy)))
    with pytest.raises(HpcbindError, match=rf"{copy} is neither setuid root nor given "
                                           rf"cap_setuid.*chmod u\+s {copy}"):
        fakeroot_map(found, fake_owners=True)


def test_free_start_skips_every_taken_block() -> None:
    assert free_start(()) == 100000
    assert free_start(parse("a:100000:65536\nb:165536:10\nc:300000:5\n")) == 165546
    assert free_start(parse("a:0:99999\nb:120000:1\n")) == 120001


def test_device_nodes_become_pseudo_definitions() -> None:
    listing = ("drwxr-xr-x 0/0                  40 2024-01-01 00:00 squashfs-root/dev\n"
               "crw-rw-rw- 0/0              1,  3 2024-01-01 00:00 squashfs-root/dev/null\n"
               "brw-rw---- 0/6              8,  0 2024-01-01 00:00 squashfs-root/dev/sda\n"
               "-rw-r--r-- 0/0                   5 2024-01-01 00:00 squashfs-root/etc/x\n")
    assert [d.pseudo for d in parse_devices(listing)] == ["/dev/null c 666 0 0 1 3",
                                                          "/dev/sda b 660 0 6 8 0"]


def test_owners_beyond_the_namespace_are_found() -> None:
    listing = ("drwxr-xr-x 0/0        40 2024-01-01 00:00 squashfs-root\n"
               "lrwxrwxrwx 65536/0    3 2024-01-01 00:00 squashfs-root/ok -> x\n"
               "-rw-r--r-- 0/70000    5 2024-01-01 00:00 squashfs-root/a b\n")
    assert unmapped_owner(listing, (65536, 65536)) == ("/a b", 0, 70000)
    assert unmapped_owner(listing, (70000, 70000)) is None
    idmap = fakeroot_map(facts(subuid="alice:100000:65536\nalice:200000:10\n"),
                         fake_owners=True)
    assert idmap.highest == (65546, 65536)


@pytest.mark.parametrize("sections, why", [
    ("%files\n    a /a\n%environment\n    export A=1\n%runscript\n    echo hi\n"
     "%labels\n    A b\n%help\n    help\n%setup\n    true\n", ""),
    ("%files\n    a /a\n%post\n    useradd x\n", "x.def:5: %post runs as root in the image"),
    ("%test\n    true\n", "x.def:3: %test runs as root in the image"),
])
def test_what_needs_root(sections: str, why: str) -> None:
    definition = parse_definition(f"Bootstrap: localimage\nFrom: x.sif\n{sections}", "x.def")
    assert root_needed(definition) == why
    debootstrap = parse_definition("Bootstrap: debootstrap\nOSVersion: bookworm\n"
                                   "MirrorURL: http://deb.debian.org/debian\n", "d.def")
    assert root_needed(debootstrap) == "d.def:1: debootstrap installs packages as root in " \
                                       "the image"


# ------------------------------------------------------------------------ test set-up


def table(image: Path) -> dict[str, tuple[str, str]]:
    """path -> (type and mode, uid/gid) of an image's squashfs, as ``unsquashfs -lln``."""
    found = locate(str(image))
    out = subprocess.run(["unsquashfs", "-lln", "-o", str(found.offset), found.path],
                         check=True, capture_output=True, text=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "squashfs-root" in fields[5]:
            path = fields[5][fields[5].index("squashfs-root") + 13:].split(" -> ")[0] or "/"
            entries[path] = (fields[0], fields[1])
    return entries


def subordinate_range(user: str) -> tuple[int, int]:
    entry = next((e for e in parse(Path("/etc/subuid").read_text()) if e.owner == user), None)
    if entry is None:
        pytest.fail(f"{user} has no /etc/subuid line: run 'make test-user'")
    return entry.start, entry.count


@pytest.fixture(scope="module")
def example(unprivileged: Unprivileged) -> Path:
    """The example image (Debian, built by 'make example'), where the test users read it."""
    if not EXAMPLE.is_file():
        pytest.fail(f"{EXAMPLE} missing: run 'make example' (make test does)")
    copy = unprivileged.root / "example.sif"
    if not copy.exists():
        shutil.copyfile(EXAMPLE, copy)
        copy.chmod(0o644)
    return copy


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A small .deb made here with dpkg-deb: a program, and a setgid directory and a file
    owned by 4242 (dpkg-deb records the owners it finds)."""
    root = tmp_path_factory.mktemp("deb") / "hello-fakeroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: hello-fakeroot\nVersion: 1.0\nArchitecture: all\nMaintainer: hpcbind "
        "<hpcbind@example.org>\nDescription: says hello\n a test package\n")
    program = root / "usr/bin/hello-fakeroot"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\necho hello from a package \"$@\"\n")
    program.chmod(0o755)
    data = root / "var/lib/hello-fakeroot"
    data.mkdir(parents=True)
    (data / "state").write_text("4242's\n")
    for path in (data, data / "state"):
        os.chown(path, 4242, 4242)
    data.chmod(0o2775)
    (data / "state").chmod(0o640)
    deb = root.parent / "hello-fakeroot.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    deb.chmod(0o644)
    return deb


DEFINITION = """\
Bootstrap: localimage
From: {image}

%setup
    touch "$APPTAINER_ROOTFS/from-setup"
    ! chown 4242 "$APPTAINER_ROOTFS/from-setup"

%files
    hello-fakeroot.deb /opt/hello-fakeroot.deb
    tool.sh /opt/tool.sh
    secret.txt /opt/secret.txt

%post
    test "$(id -u)" = 0
    groupadd -g 4242 crew
    useradd -u 4242 -g crew -m builder
    mkdir /shared
    chown builder /shared
    chgrp crew /shared
    chmod 2770 /shared
    touch /shared/inherits
    dpkg -i /opt/hello-fakeroot.deb
    rm /opt/hello-fakeroot.deb

%test
    test "$(id -u)" = 0
    test "$(stat -c %U:%G:%a /shared)" = builder:crew:2770

%runscript
    exec hello-fakeroot "$@"
"""

# What the definition adds or changes, by path: (type and mode, uid/gid)
ADDED = {
    "/shared": ("drwxrws---", "4242/4242"),
    "/shared/inherits": ("-rw-r--r--", "0/4242"),  # the setgid directory's group
    "/home/builder": ("drwxr-xr-x", "4242/4242"),
    "/var/lib/hello-fakeroot": ("drwxrwsr-x", "4242/4242"),
    "/var/lib/hello-fakeroot/state": ("-rw-r-----", "4242/4242"),
    "/usr/bin/hello-fakeroot": ("-rwxr-xr-x", "0/0"),
    "/opt/tool.sh": ("-rwxr-x---", "0/0"),  # %files keeps modes; owned by root inside
    "/opt/secret.txt": ("-rw-------", "0/0"),
    "/from-setup": ("-rw-r--r--", "0/0"),
    "/etc/passwd-": ("-rw-r--r--", "0/0"),  # useradd's backup takes /etc/passwd's mode
}


def write_build_files(directory: Path, image: Path, package: Path, owner: int) -> Path:
    shutil.copy(package, directory / "hello-fakeroot.deb")
    (directory / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (directory / "tool.sh").chmod(0o750)
    (directory / "secret.txt").write_text("secret\n")
    (directory / "secret.txt").chmod(0o600)
    definition = directory / "app.def"
    definition.write_text(DEFINITION.format(image=image))
    for path in directory.iterdir():
        os.chown(path, owner, owner)
    return definition


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 255, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("hpcrun: error: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def stray_sleeps() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", MARKER_SECONDS.encode()]:
            found.append(pid)
    return found


def no_stray_sleeps(timeout: float = 10) -> bool:
    """True once no marked sleep is left; the kernel ends a PID namespace's processes
    asynchronously after its first process dies."""
    deadline = time.monotonic() + timeout
    while stray_sleeps():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def work(unprivileged: Unprivileged) -> Iterator[Path]:
    """A directory of the test user's for one test: its TMPDIR inside, to see it emptied."""
    directory = Path(tempfile.mkdtemp(prefix="fakeroot-", dir=unprivileged.root))
    (directory / "tmp").mkdir()
    for path in (directory, directory / "tmp"):
        os.chown(path, unprivileged.uid, unprivileged.gid)
        path.chmod(0o755)
    yield directory
    # what a namespace build leaves is owned by subordinate ids: root removes it
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def second_user(unprivileged: Unprivileged) -> Iterator[Unprivileged]:
    """A user with no line in /etc/subuid or /etc/subgid, made for these tests."""
    made = False
    try:
        pwd.getpwnam(SECOND_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "-K", "SUB_UID_COUNT=0", "-K",
                        "SUB_GID_COUNT=0", SECOND_USER], check=True, capture_output=True)
        made = True
    user = pwd.getpwnam(SECOND_USER)
    for name in ("/etc/subuid", "/etc/subgid"):
        assert not any(e.owner in (SECOND_USER, str(user.pw_uid))
                       for e in parse(Path(name).read_text())), f"{SECOND_USER} in {name}"
    root = Path(tempfile.mkdtemp(prefix="hpcbind-second-"))
    os.chown(root, user.pw_uid, user.pw_gid)
    root.chmod(0o755)
    yield Unprivileged(root, unprivileged.launcher, unprivileged.busybox_sif, user.pw_uid,
                       user.pw_gid)
    shutil.rmtree(root, ignore_errors=True)
    if made:
        subprocess.run(["userdel", "--remove", SECOND_USER], capture_output=True)


# ---------------------------------------------------------------- builds as a plain user


@pytest.fixture(scope="module")
def namespace_build(unprivileged: Unprivileged, example: Path, package: Path,
                    tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The definition built with --fakeroot by the test user (who has subordinate ids)."""
    directory = Path(tempfile.mkdtemp(prefix="fakeroot-build-", dir=unprivileged.root))
    os.chown(directory, unprivileged.uid, unprivileged.gid)
    (directory / "tmp").mkdir()
    os.chown(directory / "tmp", unprivileged.uid, unprivileged.gid)
    definition = write_build_files(directory, example, package, unprivileged.uid)
    out = directory / "app.sif"
    r = unprivileged.run("build", "--fakeroot", "--compression", "lz4", str(out),
                         str(definition), cwd=str(directory), timeout=300,
                         env={"TMPDIR": str(directory / "tmp")})
    return out, r


def test_fakeroot_build_keeps_the_images_owners(namespace_build, example: Path,
                                                unprivileged: Unprivileged) -> None:
    """groupadd, useradd, chown, chgrp, a setgid directory and dpkg -i in %post: the squashfs
    holds the image's own ids, entry by entry; none of the subordinate or host ids. %setup
    has the user's rights only: its chown fails. Seen red: %setup run with the namespace's
    capabilities chowns, and the build stops there."""
    out, r = namespace_build
    assert r.returncode == 0, r.stderr
    assert "Running testscript" in r.stderr and "NOTE" not in r.stderr
    source, built = table(example), table(out)
    for path, expected in ADDED.items():
        assert built.get(path) == expected, path
    changed = {path: (source[path], built[path]) for path in source.keys() & built.keys()
               if built[path] != ADDED.get(path, source[path])}
    assert changed == {}
    assert source.keys() <= built.keys()
    ids = {int(n) for _, owner in built.values() for n in owner.split("/")}
    source_ids = {int(n) for _, owner in source.values() for n in owner.split("/")}
    assert ids - source_ids == {4242}  # nothing of 100000+, nothing of the host's uid
    assert not list((out.parent / "tmp").iterdir())
    assert out.stat().st_uid == unprivileged.uid


def test_the_built_image_runs_as_the_user(namespace_build, unprivileged: Unprivileged) -> None:
    out, _ = namespace_build
    r = unprivileged.run("run", str(out), "there")
    assert (r.returncode, r.stdout) == (0, "hello from a package there\n"), r.stderr
    r = unprivileged.run("exec", str(out), "sh", "-c", "id -u; stat -c '%u %a' /shared")
    # the user is themselves inside, and 4242 is nobody they can map
    assert r.stdout.split("\n") == [str(unprivileged.uid), "65534 2770", ""], r.stderr


def test_exec_fakeroot_is_root_with_the_images_owners(namespace_build,
                                                       unprivileged: Unprivileged) -> None:
    out, _ = namespace_build
    start, count = subordinate_range(pwd.getpwuid(unprivileged.uid).pw_name)
    r = unprivileged.run("exec", "--fakeroot", str(out), "sh", "-c",
                         "cat /proc/self/uid_map; id -u; stat -c %U:%G /shared; "
                         "touch /shared/new && stat -c %u:%g /shared/new")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", str(unprivileged.uid), "1", "1", str(start), str(count),
                                "0", "builder:crew", "0:4242"]
    r = unprivileged.run("shell", "-f", str(out), "-c", "whoami")
    assert (r.returncode, r.stdout) == (0, "root\n"), r.stderr


def test_without_subordinate_ids_fakeroot1_keeps_the_owners(
        second_user: Unprivileged, example: Path, package: Path, namespace_build) -> None:
    """The user has no /etc/subuid line: root maps to them alone and fakeroot(1) records the
    owners, as Apptainer falls back; the image is the same, entry by entry."""
    definition = write_build_files(second_user.root, example, package, second_user.uid)
    (second_user.root / "tmp").mkdir(exist_ok=True)
    os.chown(second_user.root / "tmp", second_user.uid, second_user.gid)
    out = second_user.root / "app.sif"
    r = second_user.run("build", "--fakeroot", "--compression", "lz4", str(out),
                        str(definition), timeout=300,
                        env={"TMPDIR": str(second_user.root / "tmp")})
    assert r.returncode == 0, r.stderr
    taken = parse(Path("/etc/subuid").read_text()) + parse(Path("/etc/subgid").read_text())
    suggested = f"{SECOND_USER}:{free_start(taken)}:65536"
    assert f"NOTE: no subordinate ids for {SECOND_USER}" in r.stderr
    assert f"'{suggested}'" in r.stderr
    built, reference = table(out), table(namespace_build[0])
    # fakeroot(1) records the group chgrp gave /shared but the kernel, which gives a new file
    # its setgid directory's group, knows only the real one: its one known difference
    assert {path: built[path] for path in built if built[path] != reference.get(path)} == \
        {"/shared/inherits": ("-rw-r--r--", "0/0")}
    assert built.keys() == reference.keys()
    assert not list((second_user.root / "tmp").iterdir())
    r = second_user.run("exec", "--fakeroot", str(out), "sh", "-c",
                        "cat /proc/self/uid_map; id -u")
    assert r.stdout.split() == ["0", str(second_user.uid), "1", "0"], r.stderr


# --------------------------------------------------------------------------- bad input


def test_failing_post_reports_and_leaves_nothing(unprivileged: Unprivileged,
                                                  work: Path) -> None:
    definition = work / "fail.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {unprivileged.busybox_sif}\n\n"
                          f"%post\n    sleep {MARKER_SECONDS} &\n"
                          "    echo 'E: Unable to locate package nope' >&2\n    exit 100\n")
    out = work / "fail.sif"
    r = unprivileged.run("build", "--fakeroot", str(out), str(definition),
                         env={"TMPDIR": str(work / "tmp")})
    line = one_line_error(r)
    assert f"{definition}:4: %post failed (exit code 100; its last lines: " in line
    assert "'E: Unable to locate package nope'" in line
    assert not out.exists()
    assert not list((work / "tmp").iterdir())
    assert no_stray_sleeps()


def test_disk_full_in_the_build_directory(unprivileged: Unprivileged, work: Path) -> None:
    full = work / "small"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "hpcbind-full",
                    str(full)], check=True)
    try:
        definition = work / "x.def"
        definition.write_text(f"Bootstrap: localimage\nFrom: {unprivileged.busybox_sif}\n"
                              "%post\n    true\n")
        out = work / "x.sif"
        r = unprivileged.run("build", "--fakeroot", str(out), str(definition),
                             env={"TMPDIR": str(full)})
        line = one_line_error(r)
        assert f"building {out} failed: no space left on the file system of {full}" in line
        assert "set TMPDIR" in line
        assert not out.exists() and not list(full.iterdir())
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_site_set_up_errors(unprivileged: Unprivileged, second_user: Unprivileged,
                            work: Path) -> None:
    """newuidmap without its setuid bit, newuidmap or fakeroot(1) missing, an image owner
    beyond the subordinate range, and ranges overlapping another user's: one line each,
    exit 255, nothing written. Seen red: without the overlap check the build goes ahead."""
    definition = work / "x.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {unprivileged.busybox_sif}\n"
                          "%post\n    true\n")
    out = work / "x.sif"
    plain = work / "plain-newuidmap"
    plain.mkdir()
    shutil.copyfile("/usr/bin/newuidmap", plain / "newuidmap")
    (plain / "newuidmap").chmod(0o755)  # no setuid bit
    # every tool of /usr/bin but the helpers and fakeroot
    farm = work / "bin"
    farm.mkdir()
    for tool in os.listdir("/usr/bin"):
        if tool not in ("newuidmap", "newgidmap", "fakeroot"):
            (farm / tool).symlink_to(f"/usr/bin/{tool}")
    cases = [
        (unprivileged, f"{plain}:/usr/bin:/bin",
         f"{plain}/newuidmap is neither setuid root nor given cap_setuid"),
        (unprivileged, f"{farm}", "newuidmap is not installed"),
        (second_user, f"{farm}", f"{SECOND_USER} has no subordinate ids in /etc/subuid and "
                                 "/etc/subgid, and fakeroot(1) is not installed"),
    ]
    for user, path, words in cases:
        r = user.run("build", "--fakeroot", str(out), str(definition),
                     env={"PATH": path, "TMPDIR": str(work / "tmp")}, cwd=str(work))
        assert words in one_line_error(r)
        assert not out.exists() and not list((work / "tmp").iterdir())

    # an image owning a file by an id beyond the namespace's
    image_root = work / "high-root"
    found = locate(str(unprivileged.busybox_sif))
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(image_root), "-o", str(found.offset),
                    found.path], check=True, capture_output=True)
    (image_root / "high").touch()
    os.chown(image_root / "high", 70000, 70000)
    high = work / "high.sqfs"
    subprocess.run(["mksquashfs", str(image_root), str(high), "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    high.chmod(0o644)
    (work / "high.def").write_text(f"Bootstrap: localimage\nFrom: {high}\n")
    r = unprivileged.run("build", "--fakeroot", str(out), str(work / "high.def"),
                         env={"TMPDIR": str(work / "tmp")})
    assert f"{high}: /high is owned by 70000:70000, beyond the ids your subordinate ranges " \
           "give the namespace (0-65536 and 0-65536)" in one_line_error(r)
    assert not out.exists() and not list((work / "tmp").iterdir())

    # another user's range over the test user's (removed again by usermod)
    start, _ = subordinate_range(pwd.getpwuid(unprivileged.uid).pw_name)
    clash = f"{start + 500}-{start + 999}"
    subprocess.run(["usermod", "--add-subuids", clash, SECOND_USER], check=True)
    try:
        r = unprivileged.run("build", "--fakeroot", str(out), str(definition),
                             env={"TMPDIR": str(work / "tmp")})
    finally:
        subprocess.run(["usermod", "--del-subuids", clash, SECOND_USER], check=True)
    line = one_line_error(r)
    assert re.search(rf"overlap those of {SECOND_USER} \({clash}, /etc/subuid:\d+\)", line)
    assert not out.exists()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_interrupted_build_leaves_nothing(unprivileged: Unprivileged, work: Path,
                                          signal_name: str) -> None:
    """SIGTERM (a batch system's time limit) during %post: the namespace's processes end and
    the work directory, owned by subordinate ids, is removed from inside the namespace.
    SIGKILL leaves the directory (nothing runs to remove it), but no process. Seen red:
    without setpriv --pdeathsig before unshare, the %post's sleep outlives a SIGKILL."""
    definition = work / "slow.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {unprivileged.busybox_sif}\n"
                          f"%post\n    chown 4242 /bin\n    sleep {MARKER_SECONDS}\n")
    out = work / "slow.sif"
    proc = unprivileged.popen("build", "--fakeroot", str(out), str(definition),
                              env={"TMPDIR": str(work / "tmp")}, stderr=subprocess.PIPE,
                              text=True)
    try:
        for line in proc.stderr:
            if line.startswith(f"%post| + sleep {MARKER_SECONDS}"):
                break
        deadline = time.monotonic() + 10  # the trace comes just before the sleep starts
        while not stray_sleeps() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stray_sleeps(), "the %post never started"
        proc.send_signal(getattr(signal, signal_name))
        assert proc.wait(timeout=60) == (130 if signal_name == "SIGTERM" else -9)
    finally:
        proc.kill()
        proc.wait()
    assert no_stray_sleeps()
    assert not out.exists()
    if signal_name == "SIGTERM":
        assert not list((work / "tmp").iterdir())


# ------------------------------------------------------------ other sources and outputs


def test_oci_layers_keep_their_owners(unprivileged: Unprivileged, work: Path) -> None:
    """Bootstrap: oci (the registry bootstraps share its unpacking): the layer's owners stay,
    %post chowns, a device node of the layer becomes the noted empty file."""
    rootfs = work / "layer-root"
    found = locate(str(unprivileged.busybox_sif))
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(rootfs), "-o", str(found.offset),
                    found.path], check=True, capture_output=True)
    (rootfs / "owned").write_text("layer\n")
    os.chown(rootfs / "owned", 4242, 4343)
    os.mknod(rootfs / "dev/console", 0o600 | 0o020000, os.makedev(5, 1))  # S_IFCHR
    layout = work / "layout"
    oci_image(rootfs, layout, "1")
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    definition = work / "oci.def"
    definition.write_text(f"Bootstrap: oci\nFrom: {layout}:1\n\n%post\n    touch /posted\n"
                          "    chown 4444:4445 /posted\n")
    out = work / "oci.sif"
    r = unprivileged.run("build", "--fakeroot", str(out), str(definition),
                         env={"TMPDIR": str(work / "tmp"), "HPCRUN_CACHEDIR": str(work / "c")})
    assert r.returncode == 0, r.stderr
    assert "device node /dev/console skipped" in r.stderr
    built = table(out)
    assert (built["/owned"], built["/posted"], built["/bin/busybox"]) == (
        ("-rw-r--r--", "4242/4343"), ("-rw-r--r--", "4444/4445"), ("-rwxr-xr-x", "0/0"))
    assert built["/dev/console"] == ("-rw-------", "0/0")
    assert not list((work / "tmp").iterdir())


def test_sandbox_work_with_fakeroot(unprivileged: Unprivileged, work: Path) -> None:
    """A sandbox built with --fakeroot holds the user's subordinate ids on the host; exec
    --fakeroot shows them as the image's ids; --force rebuilds over it (the namespace may
    remove what the user alone could not)."""
    start, _ = subordinate_range(pwd.getpwuid(unprivileged.uid).pw_name)
    definition = work / "box.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {unprivileged.busybox_sif}\n"
                          "%post\n    mkdir -m 2770 /shared\n    chown 4242:4242 /shared\n"
                          "    echo private > /shared/file\n    chmod 600 /shared/file\n")
    sandbox = work / "box"
    for _ in range(2):  # the second time over the first
        r = unprivileged.run("build", "--fakeroot", "--sandbox", "--force", str(sandbox),
                             str(definition), env={"TMPDIR": str(work / "tmp")})
        assert r.returncode == 0, r.stderr
    shared = (sandbox / "shared").stat()
    assert (shared.st_uid, shared.st_gid) == (start + 4241, start + 4241)
    assert (sandbox / "bin/busybox").stat().st_uid == unprivileged.uid
    r = unprivileged.run("exec", "--fakeroot", str(sandbox), "sh", "-c",
                         "stat -c '%u:%g %a' /shared; cat /shared/file")
    assert (r.returncode, r.stdout) == (0, "4242:4242 2770\nprivate\n"), r.stderr
    assert [p.name for p in work.iterdir() if p.name.startswith(".hpcrun-build-")] == []


def test_fakeroot_is_not_for_launcher_ranks() -> None:
    refusal = ("hpcrun: error: --fakeroot is not for the ranks of a launcher: they share one "
               "container per node, as you; run the launcher without --fakeroot\n")
    for argv in (["exec", "--dry-run", "--fakeroot", "--node-session", "k"],
                 ["--fakeroot", "mpirun", "-np", "2"]):  # before any rank starts
        assert hpcrun_main(*argv, str(BUSYBOX_SIF), "true") == (255, "", refusal)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCBIND_SLOW") != "1", reason="debootstraps Debian and "
                    "runs apt-get from the network (a minute); set HPCBIND_SLOW=1")
def test_debootstrap_and_apt_get_with_fakeroot(unprivileged: Unprivileged, work: Path) -> None:
    definition = work / "deb.def"
    definition.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n"
                          "MirrorURL: http://deb.debian.org/debian\n\n%post\n"
                          "    apt-get update\n"
                          "    apt-get install -y --no-install-recommends hello\n"
                          "    useradd -u 4242 -m alice\n%test\n    hello\n")
    out = work / "deb.sif"
    r = unprivileged.run("build", "--fakeroot", "--compression", "lz4", str(out),
                         str(definition), env={"TMPDIR": str(work / "tmp")}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    built = table(out)
    assert built["/home/alice"] == ("drwxr-xr-x", "4242/4242")
    assert built["/var/cache/apt/archives/partial"] == ("drwx------", "42/0")  # apt's _apt
    assert built["/usr/bin/hello"] == ("-rwxr-xr-x", "0/0")
    assert built["/dev/null"] == ("crw-rw-rw-", "0/0")  # as a root debootstrap makes it
    r = unprivileged.run("exec", str(out), "hello")
    assert (r.returncode, r.stdout) == (0, "Hello, world!\n"), r.stderr
