"""``hpcrun build`` against the real Singularity 3.8.1 busybox image of the conformance corpus.

Built images are read back with hpcbind's SIF reader and squashfs-tools' ``unsquashfs``, the
tool Apptainer falls back to, so every check is on what another runtime would see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hpcbind import cli
from hpcbind.errors import HpcbindError
from hpcbind.image import build as builder
from hpcbind.image.build import (
    LAUNCH_SCRIPT,
    LineProgress,
    build,
    build_date,
    inspect_metadata,
    labels_json,
    make_base_env,
)
from hpcbind.image.sif import DataType, FsType, PartType, SifImage

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "tests" / "data" / "sif" / "singularityce" / "images"
BUSYBOX = IMAGES / "busybox_amd64.sif"
BUSYBOX_CREATED = 1627931376  # its header's CreatedAt, 2021-08-02 14:09:36 CDT

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="building from a definition file "
                                "runs %post as root in a chroot")


class Recorder:
    """A Progress that keeps what it is told."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.lines: list[tuple[str, str, bool]] = []

    def step(self, text: str) -> None:
        self.steps.append(text)

    def output(self, tag: str, line: str, transient: bool) -> None:
        self.lines.append((tag, line, transient))


# ---------------------------------------------------------------------------------- helpers


def objects(path: Path) -> dict[str, tuple[object, bytes]]:
    """Descriptor kind -> (descriptor, data) for a built SIF (one of each kind expected)."""
    with SifImage.open(path) as image:
        found = {d.data_type.name: (d, image.read(d)) for d in image.descriptors
                 if d.data_type != DataType.PARTITION}
        part = image.primary_partition()
        found["PARTITION"] = (part, b"")
    return found


def partition_offset(path: Path) -> int:
    with SifImage.open(path) as image:
        return image.primary_partition().offset


def cat(path: Path, inner: str) -> str:
    """A file of the image's root filesystem, read by unsquashfs."""
    return subprocess.run(["unsquashfs", "-o", str(partition_offset(path)), "-cat", str(path),
                           inner.lstrip("/")], check=True, capture_output=True, text=True).stdout


def listing(path: Path) -> set[str]:
    out = subprocess.run(["unsquashfs", "-o", str(partition_offset(path)), "-l", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return {line.removeprefix("squashfs-root") or "/" for line in out.splitlines()
            if line.startswith("squashfs-root")}


def metadata(path: Path) -> dict:
    return json.loads(objects(path)["GENERIC_JSON"][1])["data"]["attributes"]


@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image's root filesystem, as a sandbox directory."""
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    subprocess.run(["unsquashfs", "-q", "-d", str(root), "-o", str(partition_offset(BUSYBOX)),
                    str(BUSYBOX)], check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def busybox_squashfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image's partition, as a bare squashfs file."""
    path = tmp_path_factory.mktemp("squashfs") / "busybox.sqfs"
    with SifImage.open(BUSYBOX) as image:
        path.write_bytes(image.read(image.primary_partition()))
    return path


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Build work directories go here, so a test can see that none is left behind."""
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return work


# ------------------------------------------------------------ Singularity's own layout


def test_inspect_metadata_is_singularitys(busybox_root: Path) -> None:
    """The rootfs Singularity 3.8.1 built gives back, byte for byte, its inspect-metadata.json."""
    with SifImage.open(BUSYBOX) as image:
        (reference,) = [image.read(d) for d in image.of_type(DataType.GENERIC_JSON)
                        if d.name_str == "inspect-metadata.json"]
    assert inspect_metadata(busybox_root) == reference


def test_labels_json_is_gos(busybox_root: Path) -> None:
    written = (busybox_root / ".singularity.d/labels.json").read_bytes()
    assert labels_json(json.loads(written)) == written


def test_build_date_label_format() -> None:
    cdt = timezone(timedelta(hours=-5), "CDT")
    assert build_date(datetime.fromtimestamp(BUSYBOX_CREATED, cdt)) == \
        "Monday_2_August_2021_14:9:36_CDT"  # the busybox image's org.label-schema.build-date


def test_base_env_matches_singularity(busybox_root: Path, tmp_path: Path) -> None:
    rootfs = tmp_path / "scratch"
    rootfs.mkdir()
    make_base_env(rootfs, overwrite=True)
    reference = busybox_root / ".singularity.d"
    for name in ("actions/exec", "actions/run", "actions/shell", "actions/start", "actions/test",
                 "env/01-base.sh", "env/90-environment.sh", "env/94-appsbase.sh",
                 "env/95-apps.sh", "env/99-base.sh", "env/99-runtimevars.sh", "startscript"):
        ours, theirs = rootfs / ".singularity.d" / name, reference / name
        assert ours.read_bytes() == theirs.read_bytes(), name
        assert ours.stat().st_mode & 0o7777 == theirs.stat().st_mode & 0o7777, name
    for link in ("singularity", ".run", ".exec", ".test", ".shell", "environment"):
        assert os.readlink(rootfs / link) == os.readlink(busybox_root / link), link
    for directory in ("dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc",
                      ".singularity.d/libs"):
        assert (rootfs / directory).is_dir(), directory


# ------------------------------------------------------------------- image sources


def test_build_from_sandbox(busybox_root: Path, tmp_path: Path, private_tmp: Path) -> None:
    out = tmp_path / "out.sif"
    build(out, busybox_root, progress=Recorder())
    found = objects(out)
    assert "DEFFILE" not in found  # Apptainer writes none for an image source
    desc, _ = found["GENERIC_JSON"]
    assert desc.name_str == "inspect-metadata.json"
    part, _ = found["PARTITION"]
    assert part.partition == builder.sif.Partition(FsType.SQUASHFS, PartType.PRIMSYS, "amd64")
    assert part.name_str.startswith("squashfs-")
    with SifImage.open(out) as image:
        assert image.header.launch_script_text == LAUNCH_SCRIPT
        assert image.header.primary_arch == "amd64"
    files = listing(out)
    assert {"/bin/busybox", "/.singularity.d/Singularity", "/etc/passwd",
            "/.singularity.d/bootstrap_history/Singularity0", "/.singularity.d/runscript"} <= files
    attributes = metadata(out)
    labels = attributes["labels"]
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "localimage"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == str(busybox_root)
    assert labels["org.label-schema.usage.singularity.version"] == "3.8.1"  # kept from source
    assert labels["org.label-schema.build-arch"] == "amd64"
    assert attributes["deffile"] == f"bootstrap: localimage\nfrom: {busybox_root}"
    assert attributes["runscript"] == \
        (busybox_root / ".singularity.d/runscript").read_text().rstrip("\n")
    assert cat(out, "/.singularity.d/bootstrap_history/Singularity0") == \
        "BootStrap: docker\nFrom: busybox:1.33.1\n"
    assert list(private_tmp.iterdir()) == []


def test_build_from_squashfs_with_lz4(busybox_squashfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.sif"
    build(out, busybox_squashfs, compression="lz4", progress=Recorder())
    info = subprocess.run(["unsquashfs", "-s", "-o", str(partition_offset(out)), str(out)],
                          check=True, capture_output=True, text=True).stdout
    assert "Compression lz4" in info
    assert "/bin/busybox" in listing(out)
    assert metadata(out)["labels"]["org.label-schema.usage.singularity.deffile.from"] == \
        str(busybox_squashfs)


def test_build_from_sif_is_gzip_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out.sif"
    progress = Recorder()
    build(out, BUSYBOX, progress=progress)
    info = subprocess.run(["unsquashfs", "-s", "-o", str(partition_offset(out)), str(out)],
                          check=True, capture_output=True, text=True).stdout
    assert "Compression gzip" in info
    # mksquashfs's output was streamed, its \r progress bar as transient pieces.
    assert any(tag == "mksquashfs" and "Exportable Squashfs" in line and not transient
               for tag, line, transient in progress.lines)
    assert progress.steps[-1] == f"Build complete: {out}"


def test_sandbox_output(busybox_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sandbox"
    build(out, busybox_root, sandbox=True, progress=Recorder())
    assert (out / "bin/busybox").is_file()
    labels = json.loads((out / ".singularity.d/labels.json").read_text())
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "localimage"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hpcrun-build-")] == []


def test_existing_output_needs_force(busybox_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.sif"
    out.write_text("old")
    with pytest.raises(HpcbindError, match="already exists; use --force"):
        build(out, busybox_root, progress=Recorder())
    assert out.read_text() == "old"
    build(out, busybox_root, force=True, progress=Recorder())
    assert objects(out)["PARTITION"][0].partition.fstype == FsType.SQUASHFS


def test_source_date_epoch(busybox_root: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(BUSYBOX_CREATED))
    out = tmp_path / "out.sif"
    build(out, busybox_root, progress=Recorder())
    with SifImage.open(out) as image:
        assert image.header.created_at == BUSYBOX_CREATED
    labels = metadata(out)["labels"]
    assert labels["org.label-schema.build-date"] == "Monday_2_August_2021_19:9:36_UTC"
    assert labels["org.opencontainers.image.created"] == "2021-08-02T19:09:36Z"


# -------------------------------------------------------------- definition files

DEFINITION = f"""\
Bootstrap: localimage
From: {BUSYBOX}

%setup
    echo from-setup > "$APPTAINER_ROOTFS/setup.txt"
    test "$SINGULARITY_ROOTFS" = "$APPTAINER_ROOTFS"

%files
    greeting.txt /opt/greeting.txt
    data/*.dat /opt/data/

%post
    test "$(id -u)" = 0 && test "$(pwd)" = /
    test -e /dev/null && test -d /proc/self && test -d /sys/class
    cat /opt/greeting.txt > /opt/from-post.txt
    echo kept-out > /tmp/scratch.txt
    echo 'export FROM_POST=yes' >> "$SINGULARITY_ENVIRONMENT"
    echo 'built.by post' >> "$APPTAINER_LABELS"

%environment
    export GREETING_FILE=/opt/greeting.txt

%runscript
    cat "$GREETING_FILE"

%labels
    Author hpcbind
    Version 1.0

%test
    test "$GREETING_FILE" = /opt/greeting.txt
    test "$FROM_POST" = yes
    test -f /opt/from-post.txt
    ! touch /read-only-during-test 2>/dev/null

%help
    Prints a greeting.
"""


def write_definition(directory: Path, text: str = DEFINITION) -> Path:
    (directory / "greeting.txt").write_text("hello\n")
    (directory / "data").mkdir()
    for name in ("a.dat", "b.dat", "skip.txt"):
        (directory / "data" / name).write_text(name)
    path = directory / "app.def"
    path.write_text(text)
    return path


@needs_root
def test_definition_from_localimage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    private_tmp: Path) -> None:
    monkeypatch.chdir(tmp_path)  # %files sources are relative to where the build runs
    definition = write_definition(tmp_path)
    out = tmp_path / "app.sif"
    progress = Recorder()
    build(out, definition, progress=progress)

    found = objects(out)
    assert found["DEFFILE"][1] == DEFINITION.encode()
    assert cat(out, "/.singularity.d/Singularity") == DEFINITION
    assert cat(out, "/.singularity.d/runscript") == '#!/bin/sh\n\n    cat "$GREETING_FILE"\n\n\n'
    assert cat(out, "/.singularity.d/env/90-environment.sh") == (
        "#!/bin/sh\n# Custom environment shell code should follow\n\n"
        "\n    export GREETING_FILE=/opt/greeting.txt\n\n\n")
    assert cat(out, "/.singularity.d/env/91-environment.sh") == "export FROM_POST=yes\n"
    assert cat(out, "/.singularity.d/test").startswith(
        '#!/bin/sh\n\n    test "$GREETING_FILE" = /opt/greeting.txt\n')
    assert cat(out, "/.singularity.d/runscript.help") == "    Prints a greeting.\n\n"
    assert cat(out, "/opt/greeting.txt") == "hello\n"
    assert cat(out, "/opt/from-post.txt") == "hello\n"
    assert cat(out, "/setup.txt") == "from-setup\n"
    files = listing(out)
    assert {"/opt/data/a.dat", "/opt/data/b.dat"} <= files
    assert "/opt/data/skip.txt" not in files
    assert not {"/.post.script", "/.build.labels", "/tmp/scratch.txt"} & files

    labels = json.loads(cat(out, "/.singularity.d/labels.json"))
    assert labels["Author"] == "hpcbind" and labels["Version"] == "1.0"
    assert labels["built.by"] == "post"
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "localimage"
    assert labels["org.label-schema.usage.singularity.deffile.from"] == str(BUSYBOX)
    assert labels["org.label-schema.usage"] == "/.singularity.d/runscript.help"
    attributes = metadata(out)
    assert attributes["labels"] == labels
    assert attributes["deffile"] == DEFINITION.rstrip("\n")
    assert attributes["environment"]["/.singularity.d/env/91-environment.sh"] == \
        "export FROM_POST=yes"
    assert attributes["test"] == cat(out, "/.singularity.d/test").rstrip("\n")
    assert attributes["helpfile"] == "    Prints a greeting."

    assert "Running post scriptlet" in progress.steps
    assert "Running testscript" in progress.steps
    assert list(private_tmp.iterdir()) == []
    assert run_under_squashfuse(out, tmp_path / "mnt") == "hello\n"


def run_under_squashfuse(image: Path, mountpoint: Path) -> str:
    """Mount the image as Apptainer's unprivileged path does (squashfuse_ll -o offset=N) and
    run its runscript through the image's own /.singularity.d/actions/run."""
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse here")
    mountpoint.mkdir()
    subprocess.run(["squashfuse_ll", "-o", f"offset={partition_offset(image)}", str(image),
                    str(mountpoint)], check=True)
    try:
        return subprocess.run(["chroot", str(mountpoint), "/.singularity.d/actions/run"],
                              check=True, capture_output=True, text=True,
                              env={"PATH": builder.DEFAULT_PATH}).stdout
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], check=True)


@needs_root
def test_multi_stage_files_from_stage(tmp_path: Path) -> None:
    definition = tmp_path / "multi.def"
    definition.write_text(f"""\
Bootstrap: localimage
From: {BUSYBOX}
Stage: build

%post
    mkdir -p /out/tree
    echo built > /out/tree/result.txt
    ln -s result.txt /out/tree/link

Bootstrap: localimage
From: {BUSYBOX}

%files from build
    /out/tree /opt/
""")
    out = tmp_path / "multi.sif"
    build(out, definition, progress=Recorder())
    assert cat(out, "/opt/tree/result.txt") == "built\n"
    assert "/opt/tree/link" in listing(out)
    assert "/out/tree/result.txt" not in listing(out)
    assert objects(out)["DEFFILE"][1].decode().startswith(f"Bootstrap: localimage\nFrom: "
                                                          f"{BUSYBOX}\n\n%files from build")


@needs_root
def test_files_cannot_escape_the_image(tmp_path: Path) -> None:
    """A symlink planted in the image must not send %files to the host."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "payload.txt").write_text("payload")
    definition = tmp_path / "escape.def"
    definition.write_text(f"""\
Bootstrap: localimage
From: {BUSYBOX}
%setup
    ln -s {outside} "$APPTAINER_ROOTFS/escape"
%files
    {tmp_path}/payload.txt /escape/payload.txt
""")
    out = tmp_path / "escape.sif"
    build(out, definition, progress=Recorder())
    assert list(outside.iterdir()) == []
    assert cat(out, f"{outside}/payload.txt") == "payload"


@needs_root
def test_symlinked_mount_point_is_refused(tmp_path: Path, private_tmp: Path) -> None:
    definition = tmp_path / "link.def"
    definition.write_text(f"""\
Bootstrap: localimage
From: {BUSYBOX}
%setup
    rmdir "$APPTAINER_ROOTFS/tmp" && ln -s / "$APPTAINER_ROOTFS/tmp"
%post
    true
""")
    with pytest.raises(HpcbindError, match=r"/tmp in the image is not a directory"):
        build(tmp_path / "link.sif", definition, progress=Recorder())
    assert list(private_tmp.iterdir()) == []


@needs_root
def test_failing_post_names_the_line_and_cleans_up(tmp_path: Path, private_tmp: Path) -> None:
    definition = tmp_path / "fail.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {BUSYBOX}\n\n%post -c /bin/sh\n"
                          "    echo 'E: gone' >&2\n    exit 3\n")
    out = tmp_path / "fail.sif"
    # the last lines too: with -q or under a batch system they are all the user sees
    with pytest.raises(HpcbindError, match=rf"{definition}:4: %post failed \(exit code 3; "
                                           r"its last lines: .*'E: gone'\); see its output"):
        build(out, definition, progress=Recorder())
    assert not out.exists()
    assert list(private_tmp.iterdir()) == []


@needs_root
def test_sigterm_during_post_cleans_up(tmp_path: Path, private_tmp: Path) -> None:
    definition = tmp_path / "slow.def"
    definition.write_text(f"Bootstrap: localimage\nFrom: {BUSYBOX}\n%post\n    sleep 60\n")
    progress = Recorder()

    def terminate_once_post_runs() -> None:
        if "Running post scriptlet" in progress.steps:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            threading.Timer(0.1, terminate_once_post_runs).start()

    threading.Timer(0.1, terminate_once_post_runs).start()
    started = datetime.now()
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "slow.sif", definition, progress=progress)
    assert datetime.now() - started < timedelta(seconds=30)
    assert list(private_tmp.iterdir()) == []
    assert not (tmp_path / "slow.sif").exists()


def test_unsupported_bootstrap_names_the_line(tmp_path: Path) -> None:
    definition = tmp_path / "yum.def"
    definition.write_text("# from a mirror\nBootstrap: yum\nOSVersion: 9\n")
    with pytest.raises(HpcbindError, match=rf"{definition}:2: 'Bootstrap: yum' is not "
                                           "supported; hpcrun build supports debootstrap, "
                                           "localimage, scratch, docker, oci, oci-archive, "
                                           "docker-archive"):
        build(tmp_path / "x.sif", definition, progress=Recorder())


def test_debootstrap_needs_mirror(tmp_path: Path) -> None:
    definition = tmp_path / "deb.def"
    definition.write_text("Bootstrap: debootstrap\nOSVersion: bookworm\n")
    with pytest.raises(HpcbindError, match=r"deb\.def:1: 'Bootstrap: debootstrap' needs a "
                                           "'mirrorurl:' header"):
        build(tmp_path / "x.sif", definition, progress=Recorder())


def test_scif_apps_refused(tmp_path: Path) -> None:
    definition = tmp_path / "apps.def"
    definition.write_text("Bootstrap: scratch\n%apprun foo\n    exec foo\n")
    with pytest.raises(HpcbindError, match=r"apps\.def:2: %apprun foo: SCIF apps are not"):
        build(tmp_path / "x.sif", definition, progress=Recorder())


def test_bad_inputs(tmp_path: Path, busybox_root: Path) -> None:
    with pytest.raises(HpcbindError, match="build source .* not found"):
        build(tmp_path / "x.sif", tmp_path / "missing.def", progress=Recorder())
    with pytest.raises(HpcbindError, match="unknown compression 'brotli'"):
        build(tmp_path / "x.sif", busybox_root, compression="brotli", progress=Recorder())
    with pytest.raises(HpcbindError, match="directory .*/nowhere does not exist"):
        build(tmp_path / "nowhere/x.sif", busybox_root, progress=Recorder())


def test_unprivileged_user() -> None:
    """As a real unprivileged user (setpriv): a definition file with %post is refused, as
    Singularity without --fakeroot refuses it; one that runs nothing inside builds, and so
    does converting an image, owned by root inside."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")

    def hpcrun_build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "hpcbind.cli", "build", *args], capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(directory)})

    with tempfile.TemporaryDirectory(dir="/tmp") as shared:  # pytest's tmp is root-only
        directory = Path(shared)
        directory.chmod(0o777)
        definition = directory / "x.def"
        definition.write_text("Bootstrap: scratch\n%post\n    true\n")
        refused = hpcrun_build(str(directory / "x.sif"), str(definition))
        assert refused.returncode == 255
        assert refused.stderr == f"hpcrun: error: building {definition} needs root: " \
            f"{definition}:2: %post runs as root in the image; build with --fakeroot " \
            "(hpcrun build --fakeroot OUT DEF), or as root\n"
        assert not (directory / "x.sif").exists()

        (directory / "greeting.txt").write_text("hello\n")
        plain = directory / "plain.def"
        plain.write_text(f"Bootstrap: localimage\nFrom: {BUSYBOX}\n%files\n    "
                         f"{directory}/greeting.txt /opt/greeting.txt\n%environment\n    "
                         "export A=1\n%runscript\n    cat /opt/greeting.txt\n%labels\n"
                         "    Author nobody\n")
        built = hpcrun_build(str(directory / "plain.sif"), str(plain))
        assert built.returncode == 0, built.stderr
        assert cat(directory / "plain.sif", "/opt/greeting.txt") == "hello\n"
        lines = subprocess.run(["unsquashfs", "-o", str(partition_offset(directory /
                                                                       "plain.sif")), "-ll",
                                str(directory / "plain.sif")], check=True, capture_output=True,
                               text=True).stdout
        assert {line.split()[1] for line in lines.splitlines() if "squashfs-root" in line} \
            == {"root/root"}
        for name in ("plain.sif", "plain.def", "greeting.txt"):
            (directory / name).unlink()

        converted = hpcrun_build(str(directory / "busybox.sif"), str(BUSYBOX))
        assert converted.returncode == 0, converted.stderr
        out = directory / "busybox.sif"
        assert out.stat().st_uid == 65534
        lines = subprocess.run(["unsquashfs", "-o", str(partition_offset(out)), "-ll",
                                str(out)], check=True, capture_output=True, text=True).stdout
        owners = {line.split()[1] for line in lines.splitlines() if "squashfs-root" in line}
        assert owners == {"root/root"}  # mksquashfs -all-root, as Apptainer for a user
        assert sorted(p.name for p in directory.iterdir()) == ["busybox.sif", "x.def"]


def test_scratch_with_setup(tmp_path: Path, busybox_root: Path) -> None:
    """Bootstrap: scratch gives the bare skeleton; %setup fills it (no %post: no shell)."""
    if os.geteuid() != 0:
        pytest.skip("definition-file builds need root")
    definition = tmp_path / "scratch.def"
    definition.write_text(f"Bootstrap: scratch\n%setup\n    cp -a {busybox_root}/bin "
                          '"$APPTAINER_ROOTFS/"\n%runscript\n    echo hi\n')
    out = tmp_path / "scratch.sif"
    build(out, definition, progress=Recorder())
    assert "/bin/busybox" in listing(out)
    assert cat(out, "/.singularity.d/runscript") == "#!/bin/sh\n\n    echo hi\n\n"
    assert objects(out)["PARTITION"][0].partition.arch == "amd64"  # from /bin/sh's ELF header


# ------------------------------------------------------------------------- the command


def test_command(busybox_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.sif"
    assert cli.main(["build", "--compression", "zstd", str(out), str(busybox_root)]) == 0
    assert "INFO:    Build complete" in capsys.readouterr().err
    assert "/bin/busybox" in listing(out)
    assert cli.main(["build", "--build-arg", "NOEQUALS", str(out), str(busybox_root)]) == 255
    assert "--build-arg 'NOEQUALS' is not KEY=VALUE" in capsys.readouterr().err


def test_line_progress_drops_transient_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("w") as stream:
        progress = LineProgress(stream)
        progress.step("Creating SIF file...")
        progress.output("mksquashfs", "[===   ] 1/3", True)
        progress.output("mksquashfs", "done", False)
    assert log.read_text() == "INFO:    Creating SIF file...\nmksquashfs| done\n"


# ------------------------------------------------------------------- debootstrap (slow)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCBIND_SLOW") != "1", reason="debootstraps Debian from "
                    "the network (minutes); set HPCBIND_SLOW=1")
@needs_root
def test_example_definition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "example.sif"
    build(out, REPO / "examples" / "example.def", progress=Recorder())  # %test runs mpi-hello
    files = listing(out)
    assert {"/usr/local/bin/mpi-hello", "/usr/bin/python3", "/usr/bin/mpirun",
            "/usr/lib/python3/dist-packages/mpi4py/__init__.py"} <= files
    assert "/usr/bin/gcc" not in files  # the compiler was only for the build
    attributes = metadata(out)
    assert attributes["labels"]["org.label-schema.usage.singularity.deffile.osversion"] == \
        "bookworm"
    assert "mpi4py" in attributes["runscript"]
