"""``hpcrun build``: SIF images (or sandboxes) from definition files, sandboxes, squashfs, SIFs.

This mirrors Apptainer's build (``internal/pkg/build``) so that Apptainer and SingularityCE run
what it makes and ``inspect`` it as their own. Each stage of a definition file is built in a
temporary root filesystem, in Apptainer's order:

1. ``%pre`` on the host; bootstrap (``debootstrap``, ``localimage`` or ``scratch``), then the
   ``/.singularity.d`` skeleton (actions, env scripts, runscript) as SingularityCE 3.8 writes it;
2. ``%files from STAGE``; ``%setup`` on the host with ``$APPTAINER_ROOTFS``; ``%files`` from the
   host;
3. ``%post`` as root inside the root filesystem (see ``_ENTER``);
4. metadata: ``runscript.help``, ``labels.json`` (``org.label-schema.*``), the definition file
   as ``/.singularity.d/Singularity``, ``%environment`` in ``env/90-environment.sh``,
   ``startscript``, ``runscript``, ``test``;
5. ``%test``, read-only.

The last stage becomes a sandbox directory (``--sandbox``) or is squashed with ``mksquashfs``
into a SIF: the definition (Deffile), ``inspect-metadata.json`` (GenericJSON, the schema of
``apptainer inspect --json --all``) and the squashfs as the primary system partition, with
the launch script ``#!/usr/bin/env run-singularity``. A sandbox, squashfs or SIF SOURCE is
built as Apptainer does: as ``Bootstrap: localimage`` from it, without a Deffile object.

Everything happens in one temporary directory, removed on success, error, Ctrl-C or SIGTERM;
nothing is mounted in the caller's mount namespace, so removing it never reaches the host.

Who builds (``Privilege``): root; a plain user, for what runs nothing inside (files owned by
root in the image, as Apptainer's ``-all-root``); or, with ``--fakeroot``, a user who is root
of a user namespace that the command entered before calling ``build``. There the kernel keeps
the owners within the user's subordinate ids and mksquashfs, in the same namespace, records
the image's own ids; without subordinate ids fakeroot(1) records them in a file shared by
every tool that touches the root filesystem. Device nodes, which only real root makes, are
left out of the extraction and given to mksquashfs as pseudo definitions.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import json
import os
import posixpath
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections import deque, namedtuple
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from hpcbind import __version__
from hpcbind.errors import HpcbindError
from hpcbind.host.conventions import DEFAULT_PATH
from hpcbind.image.gojson import go_json
from hpcbind.hostroot import HostRoot
from hpcbind.image import deffile, oci, sif
from hpcbind.image.deffile import Definition, FileCopy, HeaderField, Script, Stage
from hpcbind.image.source import SIF_MAGIC, SQUASHFS_MAGIC, locate

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

# mksquashfs -comp values offered. gzip is Apptainer's and SingularityCE's default and every
# squashfuse and kernel reads it. The others trade size for start-up speed and need a
# squashfuse or kernel built with the codec on every node. Measured on examples/example.def
# (2-core VM, squashfuse_ll, reading every file): gzip 108 MiB, 2.2 s; lz4 152 MiB, 1.3-2.0 s
# (and built in 1.5 s instead of 48); zstd 98 MiB, 1.6-2.2 s; xz 90 MiB, 6.6 s.
COMPRESSIONS = ("gzip", "lz4", "zstd", "xz")
BOOTSTRAPS = ("debootstrap", "localimage", "scratch", *oci.TRANSPORTS)
LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
INSPECT_METADATA = "inspect-metadata.json"

# What %post may append to: Apptainer's build-time names for them (stage.go).
POST_ENVIRONMENT = "/.singularity.d/env/91-environment.sh"
POST_LABELS = "/.build.labels"

# Apptainer's debootstrap arguments (conveyorPacker_debootstrap.go) and its map from Go to
# Debian architecture names.
_DEBOOTSTRAP_ARGS = ("--variant=minbase", "--exclude=openssl,udev,debconf-i18n,e2fsprogs")
_DEBIAN_ARCH = {"386": "i386", "amd64": "amd64", "arm": "armhf", "arm64": "arm64",
                "ppc64le": "ppc64el", "mipsle": "mipsel", "mips64le": "mips64el",
                "s390x": "s390x"}

# ELF e_machine -> Go architecture name, for the image's own /bin/sh (Apptainer's
# machine.ArchFromContainer): an image extracted from an arm64 SIF stays arm64 on amd64.
_ELF_ARCH = {
    ("EM_X86_64", 64): "amd64", ("EM_386", 32): "386", ("EM_AARCH64", 64): "arm64",
    ("EM_ARM", 32): "arm", ("EM_PPC64", 64): "ppc64", ("EM_S390", 64): "s390x",
    ("EM_RISCV", 64): "riscv64", ("EM_LOONGARCH", 64): "loong64", ("EM_MIPS", 32): "mips",
    ("EM_MIPS", 64): "mips64",
}
_ARCH_PROBES = ("/bin/sh", "/bin/bash", "/usr/bin/env", "/bin/busybox")


# --------------------------------------------------------------------------------- progress


class Progress(Protocol):
    """Where a build reports its steps and streams the output of long ones."""

    def step(self, text: str) -> None: ...

    def output(self, tag: str, line: str, transient: bool) -> None:
        """A line of ``tag``'s output; ``transient`` ones (``\\r`` progress bars) may be dropped."""


@dataclass(frozen=True, slots=True)
class LineProgress:
    """Plain lines: ``INFO:`` steps, tool output prefixed with the tool's name."""

    stream: IO[str]

    def step(self, text: str) -> None:
        self.stream.write(f"INFO:    {text}\n")
        self.stream.flush()

    def output(self, tag: str, line: str, transient: bool) -> None:
        if not transient:
            self.stream.write(f"{tag}| {line}\n")
            self.stream.flush()


class SilentProgress:
    """Nothing but errors: a pull that is not on a terminal, or -q."""

    def step(self, text: str) -> None:
        pass

    def output(self, tag: str, line: str, transient: bool) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _RichProgress:
    """On a terminal: the same lines, dimmed, under a spinner that shows progress bars."""

    console: Console  # rich is imported only when there is a terminal
    status: Status

    def step(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[bold blue]INFO:[/]    {escape(text)}", highlight=False)
        self.status.update(escape(text))

    def output(self, tag: str, line: str, transient: bool) -> None:
        from rich.markup import escape

        if transient:
            self.status.update(f"{tag}: {escape(line.strip())}")
        else:
            self.console.print(f"[dim]{tag}|[/] {escape(line)}", highlight=False)


@contextmanager
def console_progress() -> Iterator[Progress]:
    """Progress for a person: a spinner on a terminal, prefixed lines in logs."""
    if not sys.stderr.isatty():
        yield LineProgress(sys.stderr)
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting build") as status:
        yield _RichProgress(console, status)


# ------------------------------------------------------------------------------------ build


class Privilege(Enum):
    """Who the build runs as, and so how the owners of the image's files reach it."""

    ROOT = "root"  # real root: the kernel keeps every owner, device nodes are made
    # --fakeroot: root of a user namespace holding the user's subordinate ids; the kernel
    # keeps owners within them, mksquashfs records the namespace's ids
    NAMESPACE = "namespace"
    # --fakeroot without subordinate ids: root maps to the user alone, fakeroot(1) records
    # the owners in a file that the tools touching the root filesystem share
    FAKED = "faked"
    USER = "user"  # a plain user, nothing run inside: every file root's in the image


@dataclass(frozen=True, slots=True)
class _Build:
    """What every step of one build needs."""

    definition: Definition
    given: bool  # a definition file was given (not synthesised for an image SOURCE)
    work: Path
    progress: Progress
    force: bool
    now: datetime
    fetch: oci.FetchOptions  # for the docker, oci, ... bootstraps
    out: Path
    privilege: Privilege
    fakeroot: str  # fakeroot(1), for Privilege.FAKED
    mapped: tuple[int, int]  # Privilege.NAMESPACE: the highest uid and gid it holds

    @property
    def owners_state(self) -> Path:
        """fakeroot(1)'s record of the owners it faked, kept from tool to tool."""
        return self.work / "fakeroot.state"


def build(
    out: Path,
    source: Path | str,
    *,
    force: bool = False,
    sandbox: bool = False,
    compression: str = "gzip",
    build_args: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    fetch: oci.FetchOptions | None = None,
    privilege: Privilege | None = None,
    fakeroot: str = "",
    mapped: tuple[int, int] = (0, 0),
) -> None:
    """Build ``out`` (a SIF, or a sandbox directory) from ``source``.

    ``source`` is a definition file, a sandbox directory, a squashfs file, a SIF or an image
    reference (``docker://...``, ``oci:...``: fetched with ``fetch``'s options).
    ``privilege`` says who this process is (default: ROOT or USER by its uid); a plain user
    builds definitions that run nothing inside, the other modes any. ``fakeroot`` is
    fakeroot(1) for Privilege.FAKED; ``mapped`` the highest uid and gid the namespace of
    Privilege.NAMESPACE holds. ``SOURCE_DATE_EPOCH`` fixes the build time recorded in
    labels and the SIF header.
    """
    progress = progress or LineProgress(sys.stderr)
    if privilege is None:
        privilege = Privilege.ROOT if os.geteuid() == 0 else Privilege.USER
    if compression not in COMPRESSIONS:
        raise HpcbindError(f"unknown compression {compression!r}",
                           f"use one of {', '.join(COMPRESSIONS)}")
    out = out.absolute()
    _check_output(out, force)
    definition, given = _load(source, build_args or {})
    _check_buildable(definition)
    _check_privilege(definition, privilege)
    progress.step("Starting build...")
    parent = out.parent if sandbox else None  # a sandbox is renamed into place: same fs
    try:
        with _umask(0o022), _sigterm_as_interrupt(), _workdir(parent, progress) as work:
            job = _Build(definition, given, work, progress, force, _build_time(),
                         fetch or oci.FetchOptions(), out, privilege, fakeroot, mapped)
            if privilege is Privilege.FAKED:
                job.owners_state.touch()
            roots: dict[str, Path] = {}
            for index, stage in enumerate(definition.stages):
                rootfs = _build_stage(job, stage, index, roots)
                roots[stage.name or str(index)] = rootfs
            if sandbox:
                _note_sandbox_losses(job, rootfs)
                _remove(out)
                rootfs.rename(out)
            else:
                _assemble_sif(job, rootfs, out, compression)
    except OSError as err:  # the tools report their own failures; this is our own file I/O
        if err.errno == errno.ENOSPC:
            raise disk_full(out, parent or Path(tempfile.gettempdir())) from None
        raise HpcbindError(f"building {out} failed: {err.strerror}: {err.filename}",
                           "check the free space and permissions there (work files go to "
                           "$TMPDIR, or beside OUT for --sandbox)") from None
    progress.step(f"Build complete: {out}")


def _check_privilege(definition: Definition, privilege: Privilege) -> None:
    if privilege is Privilege.USER:
        reason = root_needed(definition)
        if reason:
            raise HpcbindError(f"building {definition.path} needs root: {reason}",
                               "build with --fakeroot (hpcrun build --fakeroot OUT DEF), or "
                               "as root")
    if privilege is Privilege.FAKED:
        for stage in definition.stages:
            if stage.bootstrap == "debootstrap":
                raise HpcbindError(
                    f"{definition.path}:{stage.line}: 'Bootstrap: debootstrap' under "
                    "--fakeroot needs subordinate ids (debootstrap's own chroot cannot load "
                    "fakeroot(1))", "ask the site for a line in /etc/subuid and /etc/subgid, "
                    "or bootstrap from an image (localimage, docker)")


def root_needed(definition: Definition) -> str:
    """Why building ``definition`` needs root (file:line and what), or "" when a plain user
    can: bootstrapping from an image, files, metadata and host scripts need nobody's ids."""
    for stage in definition.stages:
        if stage.bootstrap == "debootstrap":
            return (f"{definition.path}:{stage.line}: debootstrap installs packages as root "
                    "in the image")
        for name in ("post", "test"):
            script = stage.script(name)
            if script is not None and script.body.strip():
                return f"{definition.path}:{script.line}: %{name} runs as root in the image"
    return ""


def disk_full(out: Path, work_parent: Path) -> HpcbindError:
    return HpcbindError(f"building {out} failed: no space left on the file system of "
                        f"{work_parent}, where the build unpacks the image",
                        "free space there, or set TMPDIR (for --sandbox: build beside OUT) to "
                        "a file system with room for the unpacked image and the squashfs")


def _note_sandbox_losses(job: _Build, rootfs: Path) -> None:
    """What a sandbox built without real root cannot hold, said once."""
    devices = _devices_path(rootfs)
    if devices.is_file():
        count = len(devices.read_text().splitlines())
        job.progress.step(f"NOTE: the sandbox lacks the image's {count} device node(s): only "
                          "root makes them (containers get the host's /dev)")
    if job.privilege is Privilege.FAKED:
        job.progress.step("NOTE: file owners set under fakeroot(1) are not kept in a sandbox: "
                          "its files are yours")


def _check_output(out: Path, force: bool) -> None:
    try:
        if not out.parent.is_dir():
            raise HpcbindError(f"can't build {out}: directory {out.parent} does not exist",
                               "create it first")
        exists = out.exists() or out.is_symlink()
    except OSError as err:
        raise HpcbindError(f"can't build {out}: {err.strerror}",
                           "check the permissions of its directory") from None
    if exists and not force:
        raise HpcbindError(f"build target {out} already exists", "use --force to overwrite it")


def _load(source: Path | str, build_args: Mapping[str, str]) -> tuple[Definition, bool]:
    """The definition to build, and whether it came from a definition file."""
    reference = oci.parse(str(source))
    if reference is not None:
        # Apptainer's types.NewDefinitionFromURI: "Bootstrap: docker", "From: busybox".
        target = reference.target.removeprefix("//")
        return _image_definition(reference.transport, target), False
    source = Path(source)
    if not (source.exists() or source.is_symlink()):
        raise HpcbindError(f"build source {source} not found", "check the path")
    if source.is_dir() or _has_image_magic(source):
        return _image_definition("localimage", str(source)), False
    return deffile.parse_file(source, build_args), True


def _image_definition(bootstrap: str, source: str) -> Definition:
    """Apptainer builds an image SOURCE as this definition (types.NewDefinitionFromURI)."""
    raw = f"bootstrap: {bootstrap}\nfrom: {source}\n\n"
    header = (HeaderField("bootstrap", bootstrap, 1), HeaderField("from", source, 2))
    return Definition(source, (Stage(header, (), (), (), (), raw, 1),), raw)


def _has_image_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as err:
        raise HpcbindError(f"can't read build source {path}: {err.strerror}",
                           "check its permissions") from None
    return head[32:42] == SIF_MAGIC or head[:4] == SQUASHFS_MAGIC


def _check_buildable(definition: Definition) -> None:
    """Refuse what this builder cannot do before anything slow has started."""
    path = definition.path
    for stage in definition.stages:
        bootstrap = stage.field("bootstrap")
        if bootstrap is None:
            raise HpcbindError(f"{path}:{stage.line}: no 'Bootstrap:' header",
                               f"start the definition with 'Bootstrap: {BOOTSTRAPS[0]}'")
        if stage.bootstrap not in BOOTSTRAPS:
            raise HpcbindError(
                f"{path}:{bootstrap.line}: 'Bootstrap: {bootstrap.value}' is not supported",
                f"hpcrun build supports {', '.join(BOOTSTRAPS)}; build other sources with "
                "Apptainer and use its image with 'Bootstrap: localimage'")
        required = {"debootstrap": ("osversion", "mirrorurl"), "localimage": ("from",),
                    **{transport: ("from",) for transport in oci.TRANSPORTS}}
        for key in required.get(stage.bootstrap, ()):
            if not stage.get(key):
                raise HpcbindError(f"{path}:{bootstrap.line}: 'Bootstrap: {stage.bootstrap}' "
                                   f"needs a '{key}:' header", f"add '{key}: ...' to the header")
        image = stage.field("from")
        if stage.bootstrap == "localimage" and image and not os.path.exists(image.value):
            raise HpcbindError(f"{path}:{image.line}: local image {image.value} not found",
                               "give its path, relative to where hpcrun build runs")
        if stage.apps:
            app = stage.apps[0]
            raise HpcbindError(f"{path}:{app.line}: %{app.name} {app.args}: SCIF apps are not "
                               "supported by hpcrun build",
                               "install the app in %post, or build with Apptainer")


def _build_time() -> datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return datetime.now().astimezone()
    try:
        return datetime.fromtimestamp(int(epoch), timezone.utc)
    except ValueError:
        raise HpcbindError(f"SOURCE_DATE_EPOCH={epoch!r} is not a number of seconds",
                           "set it to a Unix time, e.g. $(git log -1 --format=%ct)") from None


def _build_stage(job: _Build, stage: Stage, index: int, roots: Mapping[str, Path]) -> Path:
    rootfs = job.work / f"rootfs-{index}"
    rootfs.mkdir()
    _run_host_script(job, stage.script("pre"), rootfs)
    _bootstrap(job, stage, rootfs)
    for files in stage.files:
        if files.stage:
            for copy in files.copies:
                _copy_from_stage(job, copy, files.stage, roots[files.stage], rootfs)
    _run_host_script(job, stage.script("setup"), rootfs)
    for files in stage.files:
        if not files.stage:
            for copy in files.copies:
                _copy_from_host(job, copy, rootfs)
    post = stage.script("post")
    if post is not None and post.body.strip():
        _run_post(job, post, rootfs)
    _insert_metadata(job, stage, rootfs)
    test = stage.script("test")
    if test is not None and test.body.strip():
        job.progress.step("Running testscript")
        _run_inside(job, rootfs, ["/.singularity.d/actions/test"], "%test", read_only=True)
    return rootfs


# -------------------------------------------------------------------------------- bootstrap


def _bootstrap(job: _Build, stage: Stage, rootfs: Path) -> None:
    if stage.bootstrap == "debootstrap":
        _debootstrap(job, stage, rootfs)
        make_base_env(rootfs, overwrite=True)
        # Apptainer's debootstrap packer replaces the default runscript with a bare shebang.
        _write(rootfs, "/.singularity.d/runscript", b"#!/bin/sh\n", 0o755)
    elif stage.bootstrap == "localimage":
        _extract(job, Path(stage.get("from")), rootfs)
        make_base_env(rootfs, overwrite=False)
    elif stage.bootstrap in oci.TRANSPORTS:
        _unpack_oci(job, stage, rootfs)
    else:
        make_base_env(rootfs, overwrite=True)


def _debootstrap(job: _Build, stage: Stage, rootfs: Path) -> None:
    arch = sif.host_arch()
    if arch not in _DEBIAN_ARCH:
        raise HpcbindError(f"debootstrap: no Debian port for this {arch} machine",
                           f"build on one of {', '.join(_DEBIAN_ARCH)}")
    include = ",".join(["apt", *stage.get("include").replace(",", " ").split()])
    argv = ["debootstrap", *_DEBOOTSTRAP_ARGS, f"--include={include}",
            f"--arch={_DEBIAN_ARCH[arch]}", stage.get("osversion"), str(rootfs),
            stage.get("mirrorurl")]
    job.progress.step(f"Running debootstrap {stage.get('osversion')} from "
                      f"{stage.get('mirrorurl')}")
    # In private mount and PID namespaces: debootstrap mounts /proc and /sys in the target,
    # and an interrupted run must not leave them mounted where the clean-up would reach them.
    # debootstrap and the chroot it calls are in /usr/sbin, on no plain user's PATH
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{DEFAULT_PATH}"}
    if job.privilege is Privilege.NAMESPACE:
        # debootstrap's own switch for hosts that cannot make device nodes (LXC's): no mknod
        # test of the target, the host's nodes bound on a tmpfs /dev there instead
        env["container"] = "lxc"
    _run(job, [*_PRIVATE_NAMESPACES, *argv], "debootstrap", "debootstrap failed",
         "see its output above; check OSVersion and MirrorURL, and that the mirror is reachable",
         env=env)
    rootfs.chmod(0o755)
    if job.privilege is not Privilege.ROOT:
        _debootstrap_devices(rootfs)


# debootstrap's setup_devices_simple: the nodes a root debootstrap makes in /dev
_DEBOOTSTRAP_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                        ("urandom", 1, 9), ("tty", 5, 0), ("console", 5, 1))


def _debootstrap_devices(rootfs: Path) -> None:
    """The nodes debootstrap could not make, as pseudo definitions for mksquashfs; the empty
    files that its chroot's ``> /dev/null`` left in their place go."""
    lines = []
    for name, major, minor in _DEBOOTSTRAP_DEVICES:
        placeholder = rootfs / "dev" / name
        if placeholder.is_file() and not placeholder.is_symlink() and \
                placeholder.stat().st_size == 0:
            placeholder.unlink()
        lines.append(f"/dev/{name} c 666 0 0 {major} {minor}\n")
    _devices_path(rootfs).write_text("".join(lines))


def _extract(job: _Build, image: Path, rootfs: Path) -> None:
    found = locate(str(image))
    job.progress.step(f"Extracting local image {image}...")
    if found.is_squashfs:
        options: list[str] = []
        if job.privilege is not Privilege.ROOT:
            # Not real root: no security.* or trusted.* xattrs (the user.* ones are kept), and
            # no device nodes; those go into the SIF as mksquashfs pseudo files instead.
            options.append("-user-xattrs")
            listing = _squashfs_listing(found.path, found.offset)
            if job.privilege is Privilege.NAMESPACE:
                _check_owners(image, listing, job.mapped)
            devices = parse_devices(listing)
            if devices:
                _devices_path(rootfs).write_text("".join(d.pseudo + "\n" for d in devices))
                excluded = job.work / f"{rootfs.name}.excluded"
                excluded.write_text("".join(d.path.lstrip("/") + "\n" for d in devices))
                options += ["-no-wildcards", "-exclude-file", str(excluded)]
        argv = ["unsquashfs", "-f", *options, "-d", str(rootfs), "-o", str(found.offset),
                found.path]
        _run(job, argv, "unsquashfs", f"extracting {image} failed",
             "see the unsquashfs output above; check that the image is not truncated",
             faked=True)
    else:
        # cp -a keeps owners, modes, links, devices and xattrs, as Apptainer's tar copy does.
        _run(job, ["cp", "-a", f"{found.path}/.", str(rootfs)], "cp",
             f"copying sandbox {image} failed", "see the cp output above", faked=True)


class Device(namedtuple("Device", "path pseudo")):
    """A device node of an image: its path, and the mksquashfs pseudo definition making it."""

    __slots__ = ()


# unsquashfs -lln: "crw-rw-rw- 0/0   1,  3 2024-01-01 00:00 squashfs-root/dev/null"
_LISTED_DEVICE = re.compile(r"([cb])([-rwxsStT]{9}) +(\d+)/(\d+) +(\d+), *(\d+) +\S+ +\S+ "
                            r"squashfs-root(/\S+)$")


def parse_devices(listing: str) -> list[Device]:
    """The device nodes of an ``unsquashfs -lln`` listing (names with spaces or odd bytes,
    which no system puts in /dev, are left out rather than quoted)."""
    devices = []
    for line in listing.splitlines():
        match = _LISTED_DEVICE.match(line)
        if match:
            kind, perms, uid, gid, major, minor, path = match.groups()
            devices.append(Device(path, f"{path} {kind} {_octal(perms)} {uid} {gid} {major} "
                                        f"{minor}"))
    return devices


def _octal(perms: str) -> str:
    """"rw-rw-rw-" -> "666" (special bits dropped: nobody needs them on a device node; s
    and t stand for x plus one, S and T for one alone)."""
    bits = 0
    for index, char in enumerate(perms):
        if char in "rwxst":
            bits |= 1 << (8 - index)
    return f"{bits:o}"


def _squashfs_listing(path: str, offset: int) -> str:
    try:
        return subprocess.run(["unsquashfs", "-lln", "-o", str(offset), path],
                              capture_output=True, text=True, errors="replace",
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""  # the extraction itself then says what is wrong with the image


# unsquashfs -lln: the mode, then "uid/gid"
_LISTED_OWNER = re.compile(r"\S{10} +(\d+)/(\d+) .*?squashfs-root(/.*)$")


def unmapped_owner(listing: str, mapped: tuple[int, int]) -> tuple[str, int, int] | None:
    """The first entry of an ``unsquashfs -lln`` listing owned beyond ``mapped`` (the highest
    uid and gid a namespace holds), as (path, uid, gid); None when all fit."""
    for line in listing.splitlines():
        match = _LISTED_OWNER.match(line)
        if match and (int(match[1]) > mapped[0] or int(match[2]) > mapped[1]):
            return match[3].split(" -> ")[0], int(match[1]), int(match[2])
    return None


def _check_owners(image: Path, listing: str, mapped: tuple[int, int]) -> None:
    beyond = unmapped_owner(listing, mapped)
    if beyond is not None:
        path, uid, gid = beyond
        raise HpcbindError(f"{image}: {path} is owned by {uid}:{gid}, beyond the ids your "
                           f"subordinate ranges give the namespace (0-{mapped[0]} and "
                           f"0-{mapped[1]})", "ask the site for larger ranges in /etc/subuid "
                           "and /etc/subgid, or build as root")


def _devices_path(rootfs: Path) -> Path:
    """The pseudo definitions of the device nodes left out of ``rootfs``, beside it."""
    return rootfs.with_name(rootfs.name + ".devices")


def _unpack_oci(job: _Build, stage: Stage, rootfs: Path) -> None:
    """Apptainer's OCI conveyor packer: layers, base environment, runscript, ENV, labels; the
    image config is kept beside the root filesystem for the SIF (``_oci_config_path``)."""
    from hpcbind.image import cache

    reference = oci.from_header(stage.bootstrap, stage.get("from"), stage.get("registry"),
                                stage.get("namespace"))
    job.progress.step(f"Fetching OCI image {reference}...")
    fetched = cache.fetch(reference, job.fetch, job.work)
    job.progress.step("Extracting OCI image...")
    rootfs.rmdir()  # umoci makes it
    keep = job.privilege in (Privilege.ROOT, Privilege.NAMESPACE)
    for note in cache.unpack(fetched, rootfs, keep_owners=keep,
                             make_devices=job.privilege is Privilege.ROOT):
        sys.stderr.write(f"hpcrun: note: {note}\n")
    make_base_env(rootfs, overwrite=True)
    _write(rootfs, "/.singularity.d/runscript", oci.runscript(fetched.config), 0o755)
    _write(rootfs, oci.DOCKER_ENV, oci.environment(fetched.config), 0o755)
    _write(rootfs, "/.singularity.d/labels.json", labels_json(oci.labels(fetched.config)), 0o644)
    _oci_config_path(rootfs).write_bytes(fetched.config_json)


def _oci_config_path(rootfs: Path) -> Path:
    return rootfs.with_name(rootfs.name + "." + oci.CONFIG_OBJECT)


# ------------------------------------------------------------------------------------ files


def _copy_from_host(job: _Build, copy: FileCopy, rootfs: Path) -> None:
    """Apptainer's files.CopyFromHost: glob on the host, ``cp -fLr`` into the image."""
    hint = "paths are relative to the directory hpcrun build runs in"
    for src in _expand(job, copy, Path(copy.src), hint):
        dst = _inside_keep_slash(rootfs, copy.dst or str(src))
        job.progress.step(f"Copying {src} to {copy.dst or src}")
        _make_parent(dst)
        _run(job, ["cp", "-fLr", str(src), dst], "cp", f"{_where(job, copy)}: copying {src} "
             "failed", "see the cp output above")


def _copy_from_stage(job: _Build, copy: FileCopy, stage: str, src_root: Path,
                     rootfs: Path) -> None:
    """Apptainer's files.CopyFromStage: links inside copied directories stay links."""
    source_root = HostRoot(src_root)
    hint = f"paths are absolute in stage {stage}'s image"
    for match in _expand(job, copy, src_root / copy.src.lstrip("/"), hint):
        inner = "/" + match.relative_to(src_root).as_posix()
        src = source_root.real(source_root.resolve(inner))
        dst = Path(_inside_keep_slash(rootfs, copy.dst or inner))
        _make_parent(str(dst) + ("/" if copy.dst.endswith("/") else ""))
        if dst.is_dir():
            dst = dst / match.name
        job.progress.step(f"Copying {inner} from stage {stage} to {copy.dst or inner}")
        _run(job, ["cp", "-aT", str(src), str(dst)], "cp",
             f"{_where(job, copy)}: copying {inner} failed", "see the cp output above",
             faked=True)


def _expand(job: _Build, copy: FileCopy, pattern: Path, hint: str) -> list[Path]:
    # Python's glob in place of Apptainer's "for n in PATTERN" in /bin/sh: the same *?[]
    # matching, without running a shell on the definition file's text.
    if not any(c in str(pattern) for c in "*?["):
        if not (pattern.exists() or pattern.is_symlink()):
            raise HpcbindError(f"{_where(job, copy)}: %files source {copy.src} not found",
                               hint)
        return [pattern]
    found = sorted(Path(p) for p in glob.glob(str(pattern)))
    if not found:
        raise HpcbindError(f"{_where(job, copy)}: %files pattern {copy.src} matches nothing",
                           hint)
    return found


def _where(job: _Build, copy: FileCopy) -> str:
    return f"{job.definition.path}:{copy.line}"


def _inside(rootfs: Path, path: str) -> Path:
    """The host path of ``path`` in the image, every symlink resolved inside the image."""
    root = HostRoot(rootfs)
    real = root.real(root.resolve(path))
    if real.is_symlink():  # HostRoot stops after 40 links and returns the link itself
        raise HpcbindError(f"{path} in the image: too many levels of symbolic links",
                           "fix the image's symbolic links")
    return real


def _inside_keep_slash(rootfs: Path, path: str) -> str:
    # A trailing slash tells cp (and Apptainer) that the destination is a directory.
    return str(_inside(rootfs, path)) + ("/" if path.endswith("/") else "")


def _make_parent(dst: str) -> None:
    if os.path.lexists(dst.rstrip("/")):
        return
    Path(dst.rstrip("/") if dst.endswith("/") else os.path.dirname(dst)).mkdir(
        parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------- scripts


_NO_CAPABILITIES = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")


def _run_host_script(job: _Build, script: Script | None, rootfs: Path) -> None:
    """%pre and %setup: on the host, with the root filesystem's path in the environment."""
    if script is None or not script.body.strip():
        return
    path = job.work / script.name
    path.write_text(script.body)
    env = {**os.environ, **_paired("ROOTFS", str(rootfs)),
           **_paired("ENVIRONMENT", POST_ENVIRONMENT)}
    job.progress.step(f"Running {script.name} scriptlet")
    argv = deffile.section_argv(script.name, str(path), script.args)
    if job.privilege in (Privilege.NAMESPACE, Privilege.FAKED):
        # On the host as the user: uid 0 of the namespace is the user, and without its
        # capabilities it has exactly the user's rights there.
        argv = [*_NO_CAPABILITIES, *argv]
    try:
        _run(job, argv, f"%{script.name}",
             f"{job.definition.path}:{script.line}: %{script.name} failed",
             "see its output above", env=env)
    finally:
        path.unlink()


def _run_post(job: _Build, post: Script, rootfs: Path) -> None:
    script = _inside(rootfs, "/.post.script")
    script.write_text(post.body)
    script.chmod(0o755)
    job.progress.step("Running post scriptlet")
    argv = deffile.section_argv("post", "/.post.script", post.args)
    env = {**_paired("ENVIRONMENT", POST_ENVIRONMENT), **_paired("LABELS", POST_LABELS)}
    try:
        _run_inside(job, rootfs, ["/.singularity.d/actions/exec", *argv], "%post", env=env,
                    failure=f"{job.definition.path}:{post.line}: %post failed")
    finally:
        script.unlink(missing_ok=True)


def _paired(name: str, value: str) -> dict[str, str]:
    """Both spellings: scripts written for SingularityCE read SINGULARITY_*."""
    return {f"APPTAINER_{name}": value, f"SINGULARITY_{name}": value}


# Run as PID 1 of new mount and PID namespaces (util-linux unshare), so every mount below
# disappears when the step ends, even when it is killed, and none is ever visible in the
# caller's namespace, where the temporary directory is removed. unshare itself gets SIGKILL
# when the build dies (setpriv --pdeathsig), even by SIGKILL, and takes the namespace along:
# nothing of a %post outlives the build. Written as a fixed shell
# script over Debian's mount and chroot rather than ctypes mount(2) calls: the paths arrive as
# arguments, never in the script's text. A tmpfs /dev with the usual nodes, not the host's
# /dev, and a read-only /sys: a '%post rm -rf /dev/*' must not reach the host. /tmp and
# /var/tmp are tmpfs, so their contents stay out of the image, as with Apptainer, which binds
# the host's there.
_ENTER = r"""
set -eu
root=$1 mode=$2 resolv=$3 resolv_at=$4 hosts=$5 hosts_at=$6
shift 6
if [ "$mode" = ro ]; then
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
fi
mount -t proc proc "$root/proc"
if ! mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" 2>/dev/null; then
    # in a user namespace (--fakeroot) sysfs needs a network namespace of its own
    mount --rbind /sys "$root/sys"
    mount -o remount,bind,ro,nosuid,nodev,noexec "$root/sys"
fi
mount -t tmpfs -o nosuid,mode=0755 dev "$root/dev"
if [ -n "${FAKEROOTKEY:-}" ]; then
    # fakeroot(1)'s library must load in the image too: a copy on this tmpfs, first on the
    # library path (the host's after it, for the tools of this script)
    mkdir "$root/dev/.fakeroot"
    for dir in $(echo "$LD_LIBRARY_PATH" | tr : ' '); do
        if [ -f "$dir/$LD_PRELOAD" ]; then cp "$dir/$LD_PRELOAD" "$root/dev/.fakeroot/"; break; fi
    done
    export LD_LIBRARY_PATH="/dev/.fakeroot:$LD_LIBRARY_PATH"
fi
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s fd/0 "$root/dev/stdin"
ln -s fd/1 "$root/dev/stdout"
ln -s fd/2 "$root/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmp "$root/tmp"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmp "$root/var/tmp"
if [ -n "$resolv" ]; then mount --bind "$resolv" "$resolv_at"; fi
if [ -n "$hosts" ]; then mount --bind "$hosts" "$hosts_at"; fi
exec chroot "$root" "$@"
"""
_PRIVATE_NAMESPACES = ("setpriv", "--pdeathsig", "KILL", "--", "unshare", "--mount",
                       "--propagation", "private", "--pid", "--fork", "--kill-child")
_MOUNT_POINTS = ("/proc", "/sys", "/dev", "/tmp", "/var/tmp")


def _run_inside(job: _Build, rootfs: Path, argv: list[str], tag: str, *,
                env: Mapping[str, str] | None = None, read_only: bool = False,
                failure: str = "") -> None:
    """Run ``argv`` as root chrooted in ``rootfs``, with /proc, /sys, /dev, DNS and hosts."""
    for point in _MOUNT_POINTS:
        _ensure_mount_point(job, rootfs, point)
    staged = [_stage_host_file(job, rootfs, name) for name in ("/etc/resolv.conf", "/etc/hosts")]
    # --cleanenv, as Apptainer runs %post; the image's env scripts set the rest.
    clean = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C",
             **{k: os.environ[k] for k in ("TERM",) if k in os.environ}, **(env or {})}
    mode = "ro" if read_only else "rw"
    enter = [*_PRIVATE_NAMESPACES, "/bin/sh", "-c", _ENTER, "enter", str(rootfs), mode,
             *[str(p) for pair in staged for p in pair]]
    _run(job, [*enter, *argv], tag, failure or f"{tag} failed", "see its output above",
         env=clean, cwd="/", faked=True)


def _ensure_mount_point(job: _Build, rootfs: Path, point: str) -> None:
    # The mounts are made by host paths: a symlink on the way could point them at the host.
    target = rootfs / point.lstrip("/")
    if HostRoot(rootfs).resolve(point) != point or target.exists() and not target.is_dir():
        raise HpcbindError(f"{job.definition.path}: {point} in the image is not a directory",
                           f"make {point} a directory; hpcrun build mounts a file system there")
    target.mkdir(parents=True, exist_ok=True)


def _stage_host_file(job: _Build, rootfs: Path, name: str) -> tuple[str, str]:
    """(copy of the host's ``name``, where to bind it in the image), or ("", "")."""
    target = _inside(rootfs, name)
    if not target.is_file() or target.is_symlink():
        return "", ""
    staged = job.work / Path(name).name
    try:
        # The extra newline is Apptainer's (util.go, #5250): yum leaves a "modified" file alone.
        staged.write_bytes(Path(name).read_bytes() + b"\n")
    except OSError:
        return "", ""
    return str(staged), str(target)


# --------------------------------------------------------------------------------- metadata


def _insert_metadata(job: _Build, stage: Stage, rootfs: Path) -> None:
    """Apptainer's stage.insertMetadata, in its order."""
    help_ = stage.script("help")
    if help_ is not None and help_.body:
        _insert_help(job, rootfs, help_)
    _insert_labels(job, stage, rootfs)
    _insert_definition(job, rootfs)
    environment = stage.script("environment")
    if environment is not None and environment.body:
        _append_environment(job, rootfs, environment.body)
    for name in ("startscript", "runscript", "test"):
        script = stage.script(name)
        if script is not None and script.body:
            job.progress.step(f"Adding {name}")
            shebang, body = deffile.split_shebang(script)
            _write(rootfs, f"/.singularity.d/{name}", f"{shebang}\n\n{body}\n".encode(), 0o755)


def _insert_help(job: _Build, rootfs: Path, help_: Script) -> None:
    target = _inside(rootfs, "/.singularity.d/runscript.help")
    if target.exists() and not job.force:
        job.progress.step("Help message already exists and --force is not set, not overwriting")
        return
    job.progress.step("Adding help info")
    _write(rootfs, "/.singularity.d/runscript.help", f"{help_.body}\n".encode(), 0o644)


def _insert_labels(job: _Build, stage: Stage, rootfs: Path) -> None:
    labels: dict[str, str] = {}
    existing = _inside(rootfs, "/.singularity.d/labels.json")
    if existing.is_file():
        labels.update(_string_map(existing.read_text(errors="replace")))
    from_post = _inside(rootfs, POST_LABELS)
    if from_post.is_file():
        labels.update(deffile.parse_labels(from_post.read_text(errors="replace")))
        from_post.unlink()
    help_ = stage.script("help")
    has_help = help_ is not None and bool(help_.body)
    labels.update(build_labels(stage.header, job.now, rootfs_arch(rootfs), has_help))
    if stage.labels:
        job.progress.step("Adding labels")
    for label in stage.labels:
        if label.key in labels and not job.force:
            job.progress.step(f"Label {label.key} already exists and --force is not set, "
                              "not overwriting")
            continue
        labels[label.key] = label.value
    _write(rootfs, "/.singularity.d/labels.json", labels_json(labels), 0o644)


def build_labels(header: tuple[HeaderField, ...], now: datetime, arch: str,
                 has_help: bool) -> dict[str, str]:
    """The labels a build adds, as Apptainer's addBuildLabels (with hpcbind's version)."""
    labels = {
        "org.label-schema.schema-version": "1.0",
        "org.opencontainers.image.created": _rfc3339(now),
        "org.label-schema.build-date": build_date(now),
        "org.label-schema.usage.hpcbind.version": __version__,
    }
    if has_help:
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
        labels["org.label-schema.usage.singularity.runscript.help"] = \
            "/.singularity.d/runscript.help"
    for field in header:
        labels[f"org.label-schema.usage.singularity.deffile.{field.key}"] = field.value
    labels["org.opencontainers.image.architecture"] = arch
    labels["org.label-schema.build-arch"] = arch
    return labels


def build_date(now: datetime) -> str:
    """Singularity's build-date label: "Monday_2_August_2021_14:9:36_CDT" (nothing padded)."""
    return (f"{now:%A}_{now.day}_{now:%B}_{now.year}_{now.hour}:{now.minute}:{now.second}_"
            f"{now.tzname() or 'UTC'}")


def _rfc3339(now: datetime) -> str:
    text = now.isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text  # Go's time.RFC3339


def _insert_definition(job: _Build, rootfs: Path) -> None:
    """The whole definition file; a previous one moves to bootstrap_history (SingularityCE)."""
    current = _inside(rootfs, "/.singularity.d/Singularity")
    if current.is_file():
        history = _inside(rootfs, "/.singularity.d/bootstrap_history")
        history.mkdir(mode=0o755, exist_ok=True)
        current.rename(history / f"Singularity{len(os.listdir(history))}")
    _write(rootfs, "/.singularity.d/Singularity", job.definition.raw.encode(), 0o644)


def _append_environment(job: _Build, rootfs: Path, body: str) -> None:
    job.progress.step("Adding environment to container")
    target = _inside(rootfs, "/.singularity.d/env/90-environment.sh")
    if not target.is_file():
        _write(rootfs, "/.singularity.d/env/90-environment.sh",
               f"#!/bin/sh\n\n{body}\n".encode(), 0o755)
        return
    with target.open("a") as stream:
        stream.write(f"\n{body}\n")


def rootfs_arch(rootfs: Path) -> str:
    """Go architecture of the image's own binaries; the host's when none can be read."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    for probe in _ARCH_PROBES:
        path = _inside(rootfs, probe)
        try:
            with path.open("rb") as stream:
                elf = ELFFile(stream)
                key = (elf["e_machine"], elf.elfclass)
                little = elf.little_endian
        except (OSError, ELFError):
            continue
        arch = _ELF_ARCH.get(key)
        if arch is not None:
            return _endian(arch, little)
    return sif.host_arch()


def _endian(arch: str, little: bool) -> str:
    if arch in ("ppc64", "mips", "mips64") and little:
        return arch + "le"
    return arch


def _string_map(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def labels_json(labels: Mapping[str, str]) -> bytes:
    """``labels.json`` as Go's ``json.MarshalIndent(labels, "", "\\t")``."""
    return go_json(dict(sorted(labels.items())), indent="\t")


def inspect_metadata(rootfs: Path) -> bytes:
    """``inspect-metadata.json``: what ``apptainer inspect --json --all`` reads from a sandbox.

    Go's ``json.Marshal`` of its ``inspect.Metadata``: fields in struct order, empty ones left
    out, maps sorted, file contents without trailing newlines.
    """
    root = HostRoot(rootfs)
    attributes = _attributes(root, "/.singularity.d", top=True)
    apps = {name: _attributes(root, f"/scif/apps/{name}/scif", top=False)
            for name in root.listdir("/scif/apps") if root.is_dir(f"/scif/apps/{name}/scif")}
    if apps:
        attributes = {"apps": apps, **attributes}
    return go_json({"data": {"attributes": attributes}, "type": "container"})


def _attributes(root: HostRoot, base: str, top: bool) -> dict[str, object]:
    def text(name: str) -> str:
        path = root.real(root.resolve(f"{base}/{name}"))
        return path.read_text(errors="replace").rstrip("\n") if path.is_file() else ""

    # The shell globs of Apptainer's inspect script, matched here without leaving the root.
    patterns = ["10-docker*.sh", "9*-environment.sh"] if top else ["9*-environment.sh"]
    environment = {f"{base}/env/{name}": text(f"env/{name}")
                   for name in root.listdir(f"{base}/env")
                   if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}
    labels = _string_map(text("labels.json"))
    fields: dict[str, object] = {
        "environment": dict(sorted(environment.items())),
        "labels": dict(sorted(labels.items())),
        "runscript": text("runscript"),
        "test": text("test"),
        "helpfile": text("runscript.help"),
    }
    if top:
        fields["deffile"] = text("Singularity")
        fields["startscript"] = text("startscript")
    return {key: value for key, value in fields.items() if value}


# -------------------------------------------------------------------------------- the image


def _assemble_sif(job: _Build, rootfs: Path, out: Path, compression: str) -> None:
    job.progress.step("Creating SIF file...")
    fd, name = tempfile.mkstemp(prefix="squashfs-", dir=job.work)
    os.close(fd)
    squashfs = Path(name)
    argv = ["mksquashfs", str(rootfs), str(squashfs), "-noappend", "-comp", compression]
    if job.privilege is Privilege.USER:
        argv.append("-all-root")  # as Apptainer: a user's build must not record their uid
    devices = _devices_path(rootfs)
    if devices.is_file():
        argv += ["-pf", str(_present_devices(devices, rootfs))]
    # In a namespace mksquashfs sees the namespace's ids, not the subordinate ids behind them.
    _run(job, argv, "mksquashfs", "mksquashfs failed", "see its output above", faked=True)
    objects = []
    if job.given:
        objects.append(sif.ObjectInput(sif.DataType.DEFFILE,
                                       data=job.definition.final.raw.encode()))
    objects.append(sif.ObjectInput(sif.DataType.GENERIC_JSON, data=inspect_metadata(rootfs),
                                   name=INSPECT_METADATA))
    oci_config = _oci_config_path(rootfs)
    if oci_config.is_file():  # Apptainer's JSON objects are in name order: this one second
        objects.append(sif.ObjectInput(sif.DataType.GENERIC_JSON, data=oci_config.read_bytes(),
                                       name=oci.CONFIG_OBJECT))
    partition = sif.Partition(sif.FsType.SQUASHFS, sif.PartType.PRIMSYS, rootfs_arch(rootfs))
    # Named after the squashfs file, as Apptainer's descriptor input from an *os.File is.
    objects.append(sif.ObjectInput(sif.DataType.PARTITION, source=squashfs,
                                   name=squashfs.name, partition=partition))
    if out.is_dir() and not out.is_symlink():
        _remove(out)  # sif.create renames its file over an old file, not over a directory
    sif.create(out, objects, launch_script=LAUNCH_SCRIPT, created_at=int(job.now.timestamp()))


def _present_devices(devices: Path, rootfs: Path) -> Path:
    """The pseudo definitions whose directory is still there and whose path is free (a %post
    may have removed or replaced what was extracted around them)."""
    kept = []
    for line in devices.read_text().splitlines():
        path = line.split(" ", 1)[0]
        directory = posixpath.dirname(path).lstrip("/")
        parent = rootfs / directory
        # no link on the way: mksquashfs places the node by this path in the image
        inside = os.path.realpath(parent) == os.path.join(os.path.realpath(rootfs), directory)
        if inside and parent.is_dir() and not os.path.lexists(parent / posixpath.basename(path)):
            kept.append(line + "\n")
    present = devices.with_name(devices.name + ".present")
    present.write_text("".join(kept))
    return present


def _remove(out: Path) -> None:
    """Remove an old OUT; the caller checked --force."""
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists() or out.is_symlink():
        out.unlink()


# ---------------------------------------------------------------------- processes and files


_PIECE = re.compile(rb"([^\r\n]*)(\r\n|\n|\r)")


def _run(job: _Build, argv: list[str], tag: str, failure: str, fix: str, *,
         env: Mapping[str, str] | None = None, cwd: str | None = None,
         faked: bool = False) -> None:
    """Run ``argv``, streaming its output to the progress reporter; fail with one line that
    quotes its last lines (the only ones a quiet build shows).

    ``faked``: the tool sets or reads the owners of the root filesystem's files, so under
    Privilege.FAKED it runs in fakeroot(1) with the build's record of them.
    """
    if faked and job.privilege is Privilege.FAKED:
        argv = _under_fakeroot(job, argv)
        env = {**(os.environ if env is None else env), **_FAKEROOT_ENV}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
    except FileNotFoundError:
        raise HpcbindError(f"{failure}: {argv[0]} is not installed",
                           f"install it (Debian: apt-get install {_PACKAGES.get(argv[0], argv[0])})"
                           ) from None
    assert proc.stdout is not None
    last: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        _relay(proc.stdout, tag, job.progress, last)
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        if _nearly_full(job.work):
            raise disk_full(job.out, job.work.parent)
        quoted = " / ".join(repr(line[:_TAIL_WIDTH]) for line in last)
        raise HpcbindError(f"{failure} (exit code {code}" +
                           (f"; its last lines: {quoted})" if quoted else ")"), fix)


_PACKAGES = {"mksquashfs": "squashfs-tools", "unsquashfs": "squashfs-tools",
             "unshare": "util-linux", "debootstrap": "debootstrap", "fakeroot": "fakeroot",
             "setpriv": "util-linux"}
_TAIL_LINES = 3
_TAIL_WIDTH = 200
# fakeroot(1) also tries the real chown, and passes on its failure unless it is EPERM: in a
# namespace mapping root alone it is EINVAL (Apptainer sets the same).
_FAKEROOT_ENV = {"FAKEROOTDONTTRYCHOWN": "1"}


def _under_fakeroot(job: _Build, argv: list[str]) -> list[str]:
    """``argv`` under fakeroot(1), loading and saving the build's record of owners; in its own
    PID namespace, so that its daemon (faked) dies with it, even when the build is killed."""
    state = str(job.owners_state)
    fakeroot = [job.fakeroot, "-i", state, "-s", state, "--"]
    namespaces = len(_PRIVATE_NAMESPACES)
    if tuple(argv[:namespaces]) == _PRIVATE_NAMESPACES:  # %post, %test: around the chroot
        return [*_PRIVATE_NAMESPACES, *fakeroot, *argv[namespaces:]]
    return ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--pid", "--fork",
            "--kill-child", *fakeroot, *argv]


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _relay(stream: IO[bytes], tag: str, progress: Progress, last: deque[str]) -> None:
    pending = b""
    while chunk := os.read(stream.fileno(), 65536):
        pending += chunk
        end = 0
        for piece in _PIECE.finditer(pending):
            _pass_on(progress, tag, piece[1].decode(errors="replace"), piece[2] == b"\r", last)
            end = piece.end()
        pending = pending[end:]
    if pending:
        _pass_on(progress, tag, pending.decode(errors="replace"), False, last)


def _pass_on(progress: Progress, tag: str, line: str, transient: bool,
             last: deque[str]) -> None:
    progress.output(tag, line, transient)
    if not transient and line.strip():
        last.append(line.strip())


def _write(rootfs: Path, path: str, data: bytes, mode: int) -> None:
    target = _inside(rootfs, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        target.chmod(mode)  # an image may ship these read-only (Apptainer #4532)
    target.write_bytes(data)
    target.chmod(mode)


@contextmanager
def _workdir(parent: Path | None, progress: Progress) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=".hpcrun-build-" if parent else "hpcrun-build-",
                                 dir=parent))
    try:
        yield work
    finally:
        mounted = _mounts_under(work)
        if mounted:
            # Something (a %setup script) mounted here on the host: removing would follow it.
            progress.step(f"WARNING: left {work} in place: {mounted[0]} is mounted there; "
                          "unmount it and remove the directory")
        else:
            shutil.rmtree(work, onerror=writable_and_retry)


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
        points = [line.split()[4] for line in info]
    decoded = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]
    return [p for p in decoded if p.startswith(prefix)]


def writable_and_retry(func: Callable[[str], object], path: str, _exc: object) -> None:
    # An unprivileged extraction can leave read-only directories its owner cannot empty.
    os.chmod(os.path.dirname(path), 0o700)
    func(path)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch system's time limit) cleans up like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------- the /.singularity.d layout


def make_base_env(rootfs: Path, *, overwrite: bool) -> None:
    """The skeleton every image gets (Apptainer's makeBaseEnv); ``overwrite=False`` keeps an
    extracted image's own files."""
    rootfs.chmod(stat.S_IMODE(rootfs.stat().st_mode) | 0o200)
    for directory in _BASE_DIRS:
        _inside(rootfs, directory).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name, target in _BASE_LINKS:
        if not os.path.lexists(rootfs / name):
            (rootfs / name).symlink_to(target)
    for path, mode, content in _BASE_FILES:
        existing = _inside(rootfs, path)
        if existing.is_file() and not overwrite:
            existing.chmod(mode)
            continue
        _write(rootfs, path, content.encode(), mode)


_BASE_DIRS = ("/.singularity.d/libs", "/.singularity.d/actions", "/.singularity.d/env", "/dev",
              "/proc", "/root", "/var/tmp", "/tmp", "/etc", "/sys", "/home")
_BASE_LINKS = (
    ("singularity", ".singularity.d/runscript"),
    (".run", ".singularity.d/actions/run"),
    (".exec", ".singularity.d/actions/exec"),
    (".test", ".singularity.d/actions/test"),
    (".shell", ".singularity.d/actions/shell"),
    ("environment", ".singularity.d/env/90-environment.sh"),
)

# The scripts below are SingularityCE 3.8's, byte for byte as its builds write them (see
# busybox_amd64.sif in the conformance corpus); BSD-licensed, notices kept. They read
# SINGULARITY_* variables, which Apptainer also sets for compatibility.
_NOTICE_LINES = (
    '#!/bin/sh',
    '# ',
    '# Copyright (c) 2017, SingularityWare, LLC. All rights reserved.',
    '# Copyright (c) 2015-2017, Gregory M. Kurtzer. All rights reserved.',
    '# ',
    '# Copyright (c) 2016-2017, The Regents of the University of California,',
    '# through Lawrence Berkeley National Laboratory (subject to receipt of any',
    '# required approvals from the U.S. Dept. of Energy).  All rights reserved.',
    '# ',
    '# This software is licensed under a customized 3-clause BSD license.  Please',
    '# consult LICENSE.md file distributed with the sources of this project regarding',
    '# your rights to use or distribute this software.',
    '# ',
    '# NOTICE.  This Software was developed under funding from the U.S. Department of',
    '# Energy and the U.S. Government consequently retains certain rights. As such,',
    '# the U.S. Government has been granted for itself and others acting on its',
    '# behalf a paid-up, nonexclusive, irrevocable, worldwide license in the Software',
    '# to reproduce, distribute copies to the public, prepare derivative works, and',
    '# perform publicly and display publicly, and to permit other to do so.',
    '# ',
    '# ',
)
_NOTICE = "\n".join(_NOTICE_LINES) + "\n"

_BASE99_CODE = r'''

if [ -z "$LD_LIBRARY_PATH" ]; then
    LD_LIBRARY_PATH="/.singularity.d/libs"
else
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"
fi

PS1="Singularity> "
export LD_LIBRARY_PATH PS1
'''

_ACTION_EXEC = r'''#!/bin/sh

for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done

exec "$@"
'''

_ACTION_RUN = r'''#!/bin/sh

for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done

if test -n "${SINGULARITY_APPNAME:-}"; then

    if test -x "/scif/apps/${SINGULARITY_APPNAME:-}/scif/runscript"; then
        exec "/scif/apps/${SINGULARITY_APPNAME:-}/scif/runscript" "$@"
    else
        echo "No Singularity runscript for contained app: ${SINGULARITY_APPNAME:-}"
        exit 1
    fi

elif test -x "/.singularity.d/runscript"; then
    exec "/.singularity.d/runscript" "$@"
else
    echo "No Singularity runscript found, executing /bin/sh"
    exec /bin/sh "$@"
fi
'''

_ACTION_SHELL = r'''#!/bin/sh

for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done

if test -n "$SINGULARITY_SHELL" -a -x "$SINGULARITY_SHELL"; then
    exec $SINGULARITY_SHELL "$@"

    echo "ERROR: Failed running shell as defined by '\$SINGULARITY_SHELL'" 1>&2
    exit 1

elif test -x /bin/bash; then
    SHELL=/bin/bash
    PS1="Singularity $SINGULARITY_NAME:\\w> "
    export SHELL PS1
    exec /bin/bash --norc "$@"
elif test -x /bin/sh; then
    SHELL=/bin/sh
    export SHELL
    exec /bin/sh "$@"
else
    echo "ERROR: /bin/sh does not exist in container" 1>&2
fi
exit 1
'''

_ACTION_START = r'''#!/bin/sh

# if we are here start notify PID 1 to continue
# DON'T REMOVE
kill -CONT 1

for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done

if test -x "/.singularity.d/startscript"; then
    exec "/.singularity.d/startscript"
fi
'''

_ACTION_TEST = r'''#!/bin/sh

for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then
        . "$script"
    fi
done


if test -n "${SINGULARITY_APPNAME:-}"; then

    if test -x "/scif/apps/${SINGULARITY_APPNAME:-}/scif/test"; then
        exec "/scif/apps/${SINGULARITY_APPNAME:-}/scif/test" "$@"
    else
        echo "No tests for contained app: ${SINGULARITY_APPNAME:-}"
        exit 1
    fi
elif test -x "/.singularity.d/test"; then
    exec "/.singularity.d/test" "$@"
else
    echo "No test found in container, executing /bin/sh -c true"
    exec /bin/sh -c true
fi
'''

_ENV_APPS = r'''#!/bin/sh
#
# Copyright (c) 2017, SingularityWare, LLC. All rights reserved.
#
# See the COPYRIGHT.md file at the top-level directory of this distribution and at
# https://github.com/sylabs/singularity/blob/master/COPYRIGHT.md.
#
# This file is part of the Singularity Linux container project. It is subject to the license
# terms in the LICENSE.md file found in the top-level directory of this distribution and
# at https://github.com/sylabs/singularity/blob/master/LICENSE.md. No part
# of Singularity, including this file, may be copied, modified, propagated, or distributed
# except according to the terms contained in the LICENSE.md file.


if test -n "${SINGULARITY_APPNAME:-}"; then

    # The active app should be exported
    export SINGULARITY_APPNAME

    if test -d "/scif/apps/${SINGULARITY_APPNAME:-}/"; then
        SCIF_APPS="/scif/apps"
        SCIF_APPROOT="/scif/apps/${SINGULARITY_APPNAME:-}"
        export SCIF_APPROOT SCIF_APPS
        PATH="/scif/apps/${SINGULARITY_APPNAME:-}:$PATH"

        # Automatically add application bin to path
        if test -d "/scif/apps/${SINGULARITY_APPNAME:-}/bin"; then
            PATH="/scif/apps/${SINGULARITY_APPNAME:-}/bin:$PATH"
        fi

        # Automatically add application lib to LD_LIBRARY_PATH
        if test -d "/scif/apps/${SINGULARITY_APPNAME:-}/lib"; then
            LD_LIBRARY_PATH="/scif/apps/${SINGULARITY_APPNAME:-}/lib:$LD_LIBRARY_PATH"
            export LD_LIBRARY_PATH
        fi

        # Automatically source environment
        if [ -f "/scif/apps/${SINGULARITY_APPNAME:-}/scif/env/01-base.sh" ]; then
            . "/scif/apps/${SINGULARITY_APPNAME:-}/scif/env/01-base.sh"
        fi
        if [ -f "/scif/apps/${SINGULARITY_APPNAME:-}/scif/env/90-environment.sh" ]; then
            . "/scif/apps/${SINGULARITY_APPNAME:-}/scif/env/90-environment.sh"
        fi

        export PATH
    else
        echo "Could not locate the container application: ${SINGULARITY_APPNAME}"
        exit 1
    fi
fi

'''

_ENV_RUNTIMEVARS = r'''#!/bin/sh
# Copyright (c) 2017-2019, Sylabs, Inc. All rights reserved.
#
# This software is licensed under a customized 3-clause BSD license.  Please
# consult LICENSE.md file distributed with the sources of this project regarding
# your rights to use or distribute this software.
#
#

if [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then
	PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"
fi

if [ -n "${SING_USER_DEFINED_APPEND_PATH:-}" ]; then
	PATH="${PATH}:${SING_USER_DEFINED_APPEND_PATH}"
fi

if [ -n "${SING_USER_DEFINED_PATH:-}" ]; then
	PATH="${SING_USER_DEFINED_PATH}"
fi

unset SING_USER_DEFINED_PREPEND_PATH \
	  SING_USER_DEFINED_APPEND_PATH \
	  SING_USER_DEFINED_PATH

export PATH
'''

_ENV_ENVIRONMENT = r'''#!/bin/sh
# Custom environment shell code should follow

'''


_BASE_FILES: tuple[tuple[str, int, str], ...] = (
    ("/etc/hosts", 0o644, ""),
    ("/etc/resolv.conf", 0o644, ""),
    ("/.singularity.d/actions/exec", 0o755, _ACTION_EXEC),
    ("/.singularity.d/actions/run", 0o755, _ACTION_RUN),
    ("/.singularity.d/actions/shell", 0o755, _ACTION_SHELL),
    ("/.singularity.d/actions/start", 0o755, _ACTION_START),
    ("/.singularity.d/actions/test", 0o755, _ACTION_TEST),
    ("/.singularity.d/env/01-base.sh", 0o755, _NOTICE + "\n\n"),
    ("/.singularity.d/env/90-environment.sh", 0o755, _ENV_ENVIRONMENT),
    ("/.singularity.d/env/94-appsbase.sh", 0o755, ""),
    ("/.singularity.d/env/95-apps.sh", 0o755, _ENV_APPS),
    ("/.singularity.d/env/99-base.sh", 0o755, _NOTICE + _BASE99_CODE),
    ("/.singularity.d/env/99-runtimevars.sh", 0o755, _ENV_RUNTIMEVARS),
    ("/.singularity.d/runscript", 0o755,
     '#!/bin/sh\n\necho "There is no runscript defined for this container\\n";\n'),
    ("/.singularity.d/startscript", 0o755, "#!/bin/sh\n"),
)
