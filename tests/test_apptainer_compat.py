"""What an Apptainer user types or sets, and what it does under hpcrun, as the plain user.

One row per habit: the command line and variables as a job script or site module writes
them, and the effect seen from inside the container. Then the bad input Apptainer users
make, each refused in one line with exit 255.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Unprivileged

IMG = "{img}"  # the busybox SIF, filled in per run


@dataclass(frozen=True)
class Habit:
    what: str  # as the user would say it
    args: tuple[str, ...]
    expect: str  # standard output
    env: dict[str, str] = field(default_factory=dict)
    stderr_has: str = ""
    code: int = 0


@pytest.fixture(scope="module")
def place(unprivileged: Unprivileged) -> Path:
    """A data directory, a workdir, a site configuration, owned by the test user."""
    base = unprivileged.root / "compat"
    for d in ("data", "work", "site"):
        (base / d).mkdir(parents=True, exist_ok=True)
    (base / "data" / "f").write_text("payload\n")
    (base / "hpcbind.toml").write_text(
        f'[bind]\npaths = ["{base}/site:/site", "/no/such/lustre"]\n')
    (base / "site" / "module").write_text("site module\n")
    (base / "work" / "tmp").mkdir(exist_ok=True)
    (base / "work" / "tmp" / "seed").write_text("seeded\n")
    for path in [base, *base.rglob("*")]:
        os.chown(path, unprivileged.uid, unprivileged.gid)
    return base


DATA, WORK = "{base}/data", "{base}/work"
HABITS = [
        Habit("global -q before the command", ("-q", "exec", IMG, "echo", "hi"), "hi\n"),
        Habit("global --silent before the command", ("--silent", "exec", IMG, "echo", "hi"),
              "hi\n"),
        Habit("global -v before the command: the mounts are told",
              ("-v", "exec", IMG, "true"), "", stderr_has="hpcrun: bind /proc -> /proc"),
        Habit("global -d before the command: a traceback with the error",
              ("-d", "exec", "--pwd", "relative", IMG, "true"), "",
              stderr_has="Traceback", code=255),
        Habit("--env keeps commas in a value", ("exec", "--env", "OMPI_MCA_btl=self,vader,tcp",
                                                IMG, "sh", "-c", "echo $OMPI_MCA_btl"),
              "self,vader,tcp\n"),
        Habit("--env still splits NAME=VALUE items",
              ("exec", "--env", "A=1,2,B=3", IMG, "sh", "-c", "echo $A $B"), "1,2 3\n"),
        Habit("APPTAINER_BIND", ("exec", IMG, "cat", "/mnt/f"), "payload\n",
              env={"APPTAINER_BIND": f"{DATA}:/mnt"}),
        Habit("SINGULARITY_BIND", ("exec", IMG, "cat", "/mnt/f"), "payload\n",
              env={"SINGULARITY_BIND": f"{DATA}:/mnt"}),
        Habit("SINGULARITY_BINDPATH, with the empty item a module's BIND=\"$BIND,...\" leaves",
              ("exec", IMG, "cat", "/mnt/f"), "payload\n",
              env={"SINGULARITY_BINDPATH": f",{DATA}:/mnt"}),
        Habit("--bind on the same destination as APPTAINER_BIND wins",
              ("exec", "--bind", f"{DATA}:/mnt:ro", IMG, "sh", "-c",
               "touch /mnt/x 2>/dev/null || echo ro"), "ro\n",
              env={"APPTAINER_BIND": f"{DATA}:/mnt"}),
        Habit("APPTAINER_ wins over SINGULARITY_", ("exec", IMG, "pwd"), "/etc\n",
              env={"APPTAINER_PWD": "/etc", "SINGULARITY_PWD": "/"}),
        Habit("a flag wins over the variable", ("exec", "--pwd", "/", IMG, "pwd"), "/\n",
              env={"APPTAINER_PWD": "/etc"}),
        Habit("APPTAINER_CLEANENV", ("exec", IMG, "sh", "-c", "echo [$HOST_VAR]"), "[]\n",
              env={"APPTAINER_CLEANENV": "1", "HOST_VAR": "host"}),
        Habit("APPTAINER_CONTAIN: no host /tmp", ("exec", IMG, "sh", "-c",
                                                  f"test -e {DATA} || echo contained"),
              "contained\n", env={"APPTAINER_CONTAIN": "true"}),
        Habit("APPTAINER_CONTAINALL", ("exec", IMG, "sh", "-c",
                                       f"test -e {DATA} || echo [$HOST_VAR]"), "[]\n",
              env={"APPTAINER_CONTAINALL": "1", "HOST_VAR": "host"}),
        Habit("APPTAINER_HOME", ("exec", IMG, "sh", "-c", "echo $HOME; cat ~/f"),
              "/data\npayload\n", env={"APPTAINER_HOME": f"{DATA}:/data"}),
        Habit("APPTAINER_NO_HOME", ("exec", IMG, "sh", "-c", "ls -A $HOME | wc -l"),
              "0\n", env={"APPTAINER_NO_HOME": "1"}),
        Habit("APPTAINER_NV on a host without a GPU: one warning, and it runs",
              ("exec", IMG, "echo", "ran"), "ran\n", env={"APPTAINER_NV": "1"},
              stderr_has="hpcrun: warning: nvidia-driver: no NVIDIA driver found"),
        Habit("APPTAINER_ROCM likewise", ("exec", IMG, "echo", "ran"), "ran\n",
              env={"APPTAINER_ROCM": "1"}, stderr_has="hpcrun: warning: amdgpu-driver"),
        Habit("exec --nv with -s: no warning", ("-s", "exec", "--nv", IMG, "echo", "ran"),
              "ran\n"),
        Habit("APPTAINER_WRITABLE_TMPFS: the root takes writes, not kept",
              ("exec", IMG, "sh", "-c", "echo w > /new && cat /new"), "w\n",
              env={"APPTAINER_WRITABLE_TMPFS": "1"}),
        Habit("APPTAINER_WORKDIR with --contain: /tmp lives in the workdir",
              ("exec", "--contain", IMG, "sh", "-c",
               "cat /tmp/seed"), "seeded\n",
              env={"APPTAINER_WORKDIR": WORK}),
        Habit("APPTAINER_SCRATCH: an empty private directory",
              ("exec", IMG, "sh", "-c", "echo s > /scr/x && cat /scr/x"), "s\n",
              env={"APPTAINER_SCRATCH": "/scr"}),
        Habit("APPTAINER_CACHEDIR holds hpcrun's cache", ("cache", "list"),
              "0 images, 0 B in {base}/cache/hpcbind\n",
              env={"APPTAINER_CACHEDIR": "{base}/cache"}),
        Habit("bind.paths: the site's binds, a missing source skipped with a -v note",
              ("exec", "-v", IMG, "cat", "/site/module"), "site module\n",
              env={"HPCBIND_CONFIG": "{base}/hpcbind.toml"},
              stderr_has="skipped /no/such/lustre: missing and optional"),
        Habit("shell sets SHELL to the shell it runs", ("shell", IMG, "-c", "echo $SHELL"),
              "/bin/sh\n"),
        Habit("a missing command is named", ("exec", IMG, "no-such-command"), "",
              stderr_has="can't execute no-such-command in ", code=127),
]


@pytest.mark.parametrize("habit", HABITS, ids=[h.what for h in HABITS])
def test_habit(unprivileged: Unprivileged, place: Path, habit: Habit):
    def fill(text: str) -> str:
        return text.replace(IMG, str(unprivileged.busybox_sif)).replace("{base}", str(place))

    r = unprivileged.run(*map(fill, habit.args),
                         env={k: fill(v) for k, v in habit.env.items()})
    assert (r.returncode, r.stdout) == (habit.code, fill(habit.expect)), (habit.what, r.stderr)
    assert habit.stderr_has in r.stderr, (habit.what, r.stderr)
    if not habit.stderr_has:
        assert r.stderr == "", (habit.what, r.stderr)


def test_workdir_keeps_contained_tmp_and_home(unprivileged: Unprivileged, place: Path):
    work = place / "work2"
    work.mkdir(exist_ok=True)
    os.chown(work, unprivileged.uid, unprivileged.gid)
    r = unprivileged.run("exec", "--contain", "--workdir", str(work), "--scratch", "/s1,/s2",
                         str(unprivileged.busybox_sif), "sh", "-c",
                         "echo t > /tmp/t; echo v > /var/tmp/v; echo h > ~/h; echo s > /s2/s")
    assert r.returncode == 0, r.stderr
    assert (work / "tmp/t").read_text() == "t\n"
    assert (work / "var_tmp/v").read_text() == "v\n"
    assert (work / "home/h").read_text() == "h\n"
    assert (work / "scratch/s2/s").read_text() == "s\n"


def test_writable_sandbox_keeps_writes(unprivileged: Unprivileged, place: Path):
    sandbox = place / "sandbox"
    if not sandbox.exists():
        import subprocess

        subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(sandbox),
                        str(unprivileged.busybox_sif)], check=True, capture_output=True)
        subprocess.run(["chown", "-R", f"{unprivileged.uid}:{unprivileged.gid}", str(sandbox)],
                       check=True)
    r = unprivileged.run("exec", "--writable", str(sandbox), "sh", "-c", "echo kept > /kept")
    assert r.returncode == 0, r.stderr
    assert (sandbox / "kept").read_text() == "kept\n"
    r = unprivileged.run("exec", str(sandbox), "sh", "-c", "echo gone > /kept")
    assert r.returncode == 0, r.stderr
    assert (sandbox / "kept").read_text() == "kept\n", "without --writable the sandbox is read-only"


BAD_INPUT = [
    (("--pwd", "/nonexistent"), "can't change to --pwd /nonexistent"),
    (("--pwd", "relative"), "--pwd 'relative': not an absolute path"),
    (("--home", "{data}:relative"), "--home 'relative': not an absolute path"),
    (("--bind", "{data}:/proc"), "bind destination /proc"),
    (("--bind", "{data}:/sys"), "bind destination /sys"),
    (("--bind", "{data}:/dev"), "bind destination /dev"),
    (("--bind", "{data}:/"), "bind destination / in"),
    (("--bind", ""), "empty --bind value"),
    (("--overlay", "{data}", "--overlay", "{data}"), "more than one writable --overlay"),
    (("--writable",), "--writable needs a sandbox directory"),
    (("--workdir", "/no/such/dir"), "--workdir /no/such/dir: no such directory"),
    (("--scratch", "relative"), "--scratch 'relative': not an absolute path"),
]


@pytest.mark.parametrize("options,message", BAD_INPUT)
def test_bad_input_is_one_line(unprivileged: Unprivileged, place: Path, options, message):
    args = [o.replace("{data}", str(place / "data")) for o in options]
    r = unprivileged.run("exec", *args, str(unprivileged.busybox_sif), "echo", "ran")
    assert r.returncode == 255, (options, r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr.count("\n") == 1, (options, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr, (options, r.stderr)


def test_bad_option_variable_is_one_line(unprivileged: Unprivileged):
    r = unprivileged.run("exec", str(unprivileged.busybox_sif), "echo", "ran",
                         env={"APPTAINER_CONTAIN": "yes please"})
    assert (r.returncode, r.stdout, r.stderr.count("\n")) == (255, "", 1), r.stderr
    assert "APPTAINER_CONTAIN" in r.stderr


def test_contain_over_an_image_whose_dev_has_links(unprivileged: Unprivileged, tmp_path):
    """--contain's /dev is a tmpfs of its own, whose links (/dev/fd, /dev/stdin, ...) hide
    what the image has there: a debootstrap image's /dev/fd, itself a link to /proc/self/fd,
    was followed into the host's /proc (a traceback, EPERM), and removing an image entry
    through the overlay failed for a plain user (EOVERFLOW) and, for /dev/ptmx, root."""
    import subprocess

    root = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(root),
                    str(unprivileged.busybox_sif)], check=True, capture_output=True)
    (root / "dev" / "fd").symlink_to("/proc/self/fd")
    (root / "dev" / "stdin").symlink_to("/nonexistent")
    image = unprivileged.root / "dev-links.sqfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress",
                    "-all-root"], check=True, capture_output=True)
    image.chmod(0o644)
    r = unprivileged.run("exec", "--contain", str(image), "sh", "-c",
                         "readlink /dev/fd; readlink /dev/stdin; ls /dev/fd/ | head -n 1")
    assert (r.returncode, r.stdout) == (0, "/proc/self/fd\n/proc/self/fd/0\n0\n"), r.stderr


def test_unpack_fallback_skips_device_nodes(unprivileged: Unprivileged, place: Path, tmp_path):
    """Without FUSE the image is unpacked into the cache; its device nodes (debootstrap's
    /dev/zero, ...) only root may create: skipped with a note, the rest runs."""
    import subprocess

    root = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-no-xattrs", "-o", "45056", "-d", str(root),
                    str(unprivileged.busybox_sif)], check=True, capture_output=True)
    image = unprivileged.root / "with-devices.sqfs"
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress",
                    "-all-root", "-p", "dev/zero c 666 root root 1 5",
                    "-p", "dev/sda b 660 root root 8 0"], check=True, capture_output=True)
    image.chmod(0o644)
    config = place / "no-fuse.toml"
    config.write_text('[image]\nsquashfuse = "no-such-squashfuse"\n')
    env = {"HPCBIND_CONFIG": str(config), "HPCRUN_CACHEDIR": str(place / "unpacked")}
    r = unprivileged.run("exec", str(image), "echo", "ran", env=env)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    assert "skipped 2 device node(s) (/dev/sda, /dev/zero)" in r.stderr
    assert r.stderr.count("\n") == 1
    r = unprivileged.run("-q", "exec", str(image), "echo", "again", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "again\n", "")


SIF_IMAGES = Path(__file__).parent / "data" / "sif" / "sylabs-sif" / "images"
PGP_KEY = SIF_IMAGES.parent / "keys" / "private.asc"


def test_sif_takes_siftools_order():
    """``siftool info ID IMAGE``; the older ``IMAGE ID`` still reads the same."""
    import subprocess

    from conftest import HPCRUN

    image = str(SIF_IMAGES / "one-group.sif")
    for action in ("info", "dump"):
        siftool_order, older = (subprocess.run([HPCRUN, "sif", action, *args], timeout=60,
                                               capture_output=True)
                                for args in (("2", image), (image, "2")))
        assert siftool_order.returncode == 0 and siftool_order.stdout, siftool_order.stderr
        assert (older.returncode, older.stdout) == (0, siftool_order.stdout)


@pytest.mark.parametrize("image,options,code,said", [
    ("one-group.sif", (), 255, "one-group.sif is not signed (it has no signature object)"),
    # Singularity <= 3.5 signed the primary partition alone (object 2 here, signature 3)
    ("one-group-signed-legacy.sif", ("--legacy",), 0,
     "object 2: verified objects 2 (signature object 3)"),
    ("one-group-signed-legacy.sif", ("--legacy-insecure",), 0, "object 2: verified objects 2"),
    # a legacy signature of the whole group is still checked as the group's
    ("one-group-signed-legacy-group.sif", ("--legacy",), 0,
     "object group 1: verified objects 1, 2"),
])
def test_verify_as_singularity_users_expect(image, options, code, said):
    from conftest import hpcrun_main

    result, out, err = hpcrun_main("verify", *options, "--key", str(PGP_KEY),
                                   str(SIF_IMAGES / image))
    assert result == code, err
    assert said in out + err


def test_apptainer_tmpdir_holds_temporary_files(tmp_path, monkeypatch):
    """APPTAINER_TMPDIR (else SINGULARITY_TMPDIR) is where builds and pulls stage files."""
    import tempfile

    from conftest import hpcrun_main

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("SINGULARITY_TMPDIR", str(tmp_path / "singularity"))
    monkeypatch.setenv("APPTAINER_TMPDIR", str(tmp_path))
    assert hpcrun_main("config")[0] == 0
    assert tempfile.gettempdir() == str(tmp_path)
