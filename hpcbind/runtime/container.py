"""Entering a container and exec'ing the user's program in it.

``enter(spec)`` is the recipe; it never returns. The program replaces hpcrun, so its PID,
signals, exit code and cgroup are the ones the resource manager started (no daemon, no
intermediate process). In order:

1. a user namespace mapping the caller's uid/gid to themselves (root skips it) and a private
   mount namespace, so nothing mounted here is seen by, or propagates to, the host;
2. a tmpfs "session" on /tmp holding the mount points; the image mounted read-only on
   ``lower`` and an overlay with a tmpfs upper layer on ``newroot`` — the root is writable
   only in that private layer, so binds can target paths the image lacks and the image is
   never modified;
3. ``pivot_root`` into the session with the host at ``/oldroot`` (the bubblewrap technique:
   host paths, host /tmp included, stay reachable as bind sources without any directory
   created on the host);
4. binds (defaults, user, plan), device nodes, links, passwd/group;
5. ``pivot_root`` into ``newroot`` and a lazy unmount of everything else;
6. PR_SET_NO_NEW_PRIVS, chdir, execve.

Everything lives in the private mount namespace: when the program exits or is killed, the
kernel tears the namespace down, and the squashfuse server (PR_SET_PDEATHSIG) dies with it.
"""

from __future__ import annotations

import os
from collections import namedtuple

from hpcbind.errors import HpcbindError, warn
from hpcbind.runtime import identity, linux, overlays
from hpcbind.runtime.binds import Bind, container_path, host_source, make_mountpoint
from hpcbind.runtime.environment import quote
from hpcbind.runtime.rootfs import RootfsOptions, mount_image, open_image, pin_server

TYPE_CHECKING = False  # typing itself costs a rank ~3 ms
if TYPE_CHECKING:
    from typing import NoReturn

SESSION = "/tmp"  # mount point of the session tmpfs; bubblewrap uses /tmp the same way
ENV_SCRIPTS = "/.singularity.d/env"
SCRATCH_DIRS = ("/tmp", "/var/tmp")


class DeviceBind(namedtuple("DeviceBind", "source destination provider reason",
                            defaults=("", ""))):
    """A device node: host path, container path, who asked for it and why."""

    __slots__ = ()


class Overlay(namedtuple("Overlay", "path read_only")):
    """An ``--overlay``: a host directory or ext3 image file; read-only ones are lower
    layers, the writable one (at most one) the upper layer that keeps the root's writes."""

    __slots__ = ()


class ContainerSpec(namedtuple("ContainerSpec", (
        "image argv env cwd binds devices links home session_size_mb rootfs use_env_scripts "
        "new_ipc exec_hint verbose id_map cwd_required overlays writable scratch level "
        "private_dev"),
        defaults=((), (), (), "", 64, RootfsOptions(), True, False, "", False, None, False, (),
                  False, (), 1, False))):
    """Everything the runtime needs, decided before any namespace exists.

    image: ImageSource; argv: the command; env: ContainerEnv; cwd: initial directory inside;
    binds: Binds in mount order; devices: DeviceBinds; links: (container path, target);
    exec_hint: what to say when argv[0] is missing from the image; id_map: for --fakeroot,
    the user namespace to be root in (``hpcbind.host.subids.IdMap``), else None (the
    caller's own ids); cwd_required: cwd was asked for (--pwd), so its absence is an error,
    not a fall-back to home; overlays: Overlays over the image, lowest first; writable: the
    sandbox directory itself is the root, read-write; scratch: container paths given empty
    private directories in the session tmpfs; level: how much to say
    (``errors.message_level``); private_dev: /dev is an empty tmpfs that the device binds
    and links fill (--contain's minimal /dev), not the image's own /dev.
    """

    __slots__ = ()


def generated_mounts(spec: ContainerSpec) -> list[tuple[str, str, str, str]]:
    """What ``prepare`` mounts besides the spec's binds, as (source, destination, options,
    reason): the image and its private writable layer, and the identity files."""
    how = "squashfs, read-only" if spec.image.is_squashfs else "directory, read-only"
    upper = next((o.path for o in spec.overlays if not o.read_only), "")
    if spec.writable:
        root = [(spec.image.path, "/", "bind,rw,nosuid,nodev",
                 "the sandbox directory itself, read-write (--writable)")]
    else:
        layer = (f"the writable layer {upper} (--overlay; writes kept)" if upper else
                 f"a private writable tmpfs layer of {spec.session_size_mb} MB "
                 "(session.size_mb)")
        root = [(spec.image.path, "/", "overlay,nosuid,nodev", f"the image ({how}) under "
                 f"{layer}")]
        root += [(o.path, "/", "overlay lower,ro", "--overlay :ro, above the image")
                 for o in spec.overlays if o.read_only]
    if spec.private_dev:
        root.append(("(tmpfs)", "/dev", "rw,nosuid,noexec", "a private /dev for the minimal "
                     "device set"))
    return root + [(f"(session tmpfs){d}", d, "rw,nosuid,nodev", "empty and private")
                   for d in spec.scratch] + [
        ("(generated)", "/etc/passwd", "ro,nosuid,nodev", "the image's users plus you"),
        ("(generated)", "/etc/group", "ro,nosuid,nodev", "the image's groups plus yours"),
    ]


def enter(spec: ContainerSpec) -> NoReturn:
    prepare(spec)
    execute(spec)


def prepare(spec: ContainerSpec) -> None:
    """Steps 1-5: this process ends up inside the container, not yet running the program."""
    user = identity.host_user()  # on the host, before any namespace
    sources = [(b, host_source(b)) for b in spec.binds]
    layers = overlays.lock_layers(spec.overlays)  # before anything is mounted
    _unshare(user.uid, user.gid, spec.new_ipc, spec.id_map)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    # after unshare (a bind source must be a mount of this namespace), before the session
    # tmpfs covers /tmp, where the image may be
    image_fd = open_image(spec.image)
    spec = spec._replace(rootfs=pin_server(spec.rootfs, SESSION))
    layers = overlays.reopen(layers)
    linux.mount("hpcbind", SESSION, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV,
                f"mode=0755,size={spec.session_size_mb}m")
    for d in ("oldroot", "newroot", "lower", "upper", "work"):
        os.mkdir(f"{SESSION}/{d}", 0o755)
    how = _mount_root(spec, image_fd, layers, f"{SESSION}/newroot")
    _log(spec, f"image {spec.image.path} mounted by {how}")

    linux.pivot_root(SESSION, f"{SESSION}/oldroot")
    os.chdir("/")
    new = "/newroot"
    if spec.private_dev:
        # As Apptainer's minimal /dev: what the image has there (debootstrap's device nodes,
        # its /dev/fd link) is hidden, not removed through the overlay, which a plain user
        # may not do in a directory an unmapped root owns (EOVERFLOW).
        dev = container_path(new, "/dev")
        os.makedirs(dev, exist_ok=True)
        linux.mount("hpcbind", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC,
                    "mode=0755,size=1m")
    for path in spec.scratch:
        private = f"/scratch{path}"
        os.makedirs(private, mode=0o700)
        os.chmod(private, 0o1777 if path in SCRATCH_DIRS else 0o700)
        _bind(private, new, Bind(private, path, reason="scratch"), spec)
        _log(spec, f"{path}: an empty private directory in the session tmpfs")
    for bind, source in sources:
        if source is None:
            _log(spec, f"skipped {bind.source}: missing and optional")
            continue
        if _bind(f"/oldroot{source}", new, bind, spec):
            _log(spec, f"bind {source} -> {bind.destination} ({bind.provider}: {bind.reason})")
    for dev in spec.devices:
        _bind(f"/oldroot{os.path.realpath(dev.source)}", new,
              Bind(dev.source, dev.destination, recursive=False, device=True,
                   reason=dev.reason or "device"), spec)
    for path, target in spec.links:
        _link(new, path, target, spec.level)
    if spec.home:  # a contained or image-less home still has to exist to start in
        try:
            os.makedirs(container_path(new, spec.home), exist_ok=True)
        except OSError as err:  # a sandbox, --writable, without it
            warn(spec.level, f"home {spec.home} missing in the container: {err.strerror}")
    _write_identity(new, identity.ROOT if spec.id_map else user, spec.home)

    os.chdir(new)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)


def _unshare(uid: int, gid: int, new_ipc: bool, id_map) -> None:
    ipc = 0x08000000 if new_ipc else 0  # CLONE_NEWIPC
    if id_map is not None:
        from hpcbind.runtime import userns

        userns.enter(id_map)
        linux.unshare(linux.CLONE_NEWNS | ipc)
        return
    try:
        if uid == 0:
            linux.unshare(linux.CLONE_NEWNS | ipc)
            return
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS | ipc)
    except OSError as err:
        raise HpcbindError(f"can't create a user namespace: {err.strerror}",
                           "ask the admin to enable unprivileged user namespaces "
                           "(sysctl kernel.unprivileged_userns_clone=1, "
                           "user.max_user_namespaces > 0)") from None
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _mount_root(spec: ContainerSpec, image_fd: int, layers, root: str) -> str:
    """The image at ``root``: under an overlay whose upper layer is the session tmpfs or the
    writable ``--overlay``, or (``--writable``) the sandbox itself, read-write."""
    lower, upper, work = f"{SESSION}/lower", f"{SESSION}/upper", f"{SESSION}/work"
    how = mount_image(spec.image, image_fd, lower, spec.rootfs, writable=spec.writable)
    if spec.writable:
        linux.mount(lower, root, None, linux.MS_BIND | linux.MS_REC)
        return f"{how}, read-write (--writable)"
    lowers, persistent = overlays.mount_layers(layers, SESSION)
    lowerdir = ":".join([*reversed(lowers), lower])  # overlayfs lists the top layer first
    how += "".join(f", {layer.describe()}" for layer in layers)
    writable_image = overlays.fuse_upper(layers)
    if writable_image:  # all its files are the caller's: no directories to claim
        overlays.mount_fuse_root(root, lowerdir, writable_image, overlays.layer_directory(
            SESSION, layers.index(writable_image)))
        return how + ", by fuse-overlayfs"
    if persistent:
        upper, work = persistent
    _claim_parents(lower, upper, _mount_points(spec))
    _claim_scratch(spec, lower, upper)
    try:
        linux.mount("hpcbind", root, "overlay", linux.MS_NOSUID | linux.MS_NODEV,
                    f"lowerdir={lowerdir},upperdir={upper},workdir={work},userxattr")
    except OSError as err:
        if persistent:
            raise HpcbindError(f"can't use the writable --overlay as an overlayfs upper layer: "
                               f"{err.strerror}", "put the overlay directory on a local "
                               "filesystem (ext4, xfs), not NFS or Lustre") from None
        raise HpcbindError(f"can't create the writable session layer (overlay): {err.strerror}",
                           "hpcrun needs Linux >= 5.11 for overlayfs in a user namespace") from None
    return how


def _claim_scratch(spec: ContainerSpec, lower: str, upper: str) -> None:
    """/tmp and /var/tmp not bound from the host (--contain, mount.tmp = no) are the image's,
    owned by a root the user namespace cannot map: nobody could write there. As Apptainer's
    contained session directories, they become the caller's, sticky and world-writable, in
    the session layer (so bounded by session.size_mb, and gone with the container)."""
    bound = {b.destination for b in spec.binds} | set(spec.scratch)
    for path in SCRATCH_DIRS:
        if path in bound:
            continue
        _claim_parents(lower, upper, [f"{path}/entry"])
        above = os.path.join(upper, os.path.relpath(container_path(lower, path), lower))
        if os.path.isdir(above):
            os.chmod(above, 0o1777)


def _mount_points(spec: ContainerSpec) -> list[str]:
    """Every container path the set-up creates something at. A link replaces what the image
    has at its path (``_link``), which is not followed: its directory is what it needs."""
    return ([b.destination for b in spec.binds] + [d.destination for d in spec.devices]
            + [f"{os.path.dirname(path)}/entry" for path, _ in spec.links]
            + [spec.home, "/etc/passwd", "/etc/group"])


def _claim_parents(lower: str, upper: str, paths: list[str]) -> None:
    """Give the caller the image directories that mount points are created in.

    In an image owned by root (or by anyone unmapped in our user namespace) the caller may
    not create ``/home/$USER`` or ``/work``. A directory present in both overlay layers takes
    its owner and mode from the upper one, so each image directory above a mount point is
    created, empty, in the caller's upper layer before the overlay is mounted: the merged
    view keeps the image's contents and the caller may add mount points to it. Paths are
    resolved in the image first, so an image's symlinked directory stays a symlink.
    """
    for path in paths:
        resolved = container_path(lower, path)
        rel_parts = os.path.relpath(resolved, lower).split(os.sep)[:-1]
        for depth in range(1, len(rel_parts) + 1):
            rel = os.path.join(*rel_parts[:depth])
            below = os.path.join(lower, rel)
            if os.path.islink(below) or not os.path.isdir(below):
                break
            above = os.path.join(upper, rel)
            if not os.path.isdir(above):
                os.mkdir(above)
                os.chmod(above, os.stat(below).st_mode & 0o7777)


def _bind(source: str, root: str, bind: Bind, spec: ContainerSpec | None = None) -> bool:
    """Bind ``source``; False when skipped: a writable sandbox without the mount point, which
    hpcrun may not create there (Apptainer skips these too, with a warning)."""
    target = container_path(root, bind.destination)
    try:
        make_mountpoint(target, os.path.isdir(source), bind.destination)
    except HpcbindError as err:
        if spec is None or not spec.writable or bind.provider == "user":
            raise
        warn(spec.level, f"{bind.destination} not bound ({err.what}; --writable)")
        return False
    flags = linux.MS_BIND | (linux.MS_REC if bind.recursive else 0)
    try:
        linux.mount(source, target, None, flags)
        remount = (linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID
                   | (0 if bind.device else linux.MS_NODEV)
                   | (linux.MS_NOEXEC if bind.noexec else 0)
                   | (linux.MS_RDONLY if bind.read_only else 0) | linux.locked_flags(target))
        linux.mount(None, target, None, remount)
    except OSError as err:
        raise HpcbindError(f"can't bind {bind.source} to {bind.destination}: {err.strerror}",
                           "check that the source is readable by you") from None
    return True


def _link(root: str, path: str, target: str, level: int) -> None:
    """The link at ``path`` itself: what the image has there is replaced, never followed
    (debootstrap's /dev/fd is already a link to /proc/self/fd, which led the link made for
    --contain into the host's /proc: EPERM)."""
    parent = container_path(root, os.path.dirname(path))
    os.makedirs(parent, exist_ok=True)
    where = os.path.join(parent, os.path.basename(path))
    if os.path.isdir(where) and not os.path.islink(where):
        warn(level, f"{path} is a directory in the image: left as it is, not a link to {target}")
        return
    if os.path.lexists(where):
        os.unlink(where)
    os.symlink(target, where)


def _write_identity(root: str, user: identity.HostUser, home: str) -> None:
    """/etc/passwd and /etc/group: the image's plus the caller, bound read-only over them.

    Bound rather than written into the overlay: replacing a file the image owns needs a
    copy-up, which the kernel refuses for owners unmapped in the user namespace (EOVERFLOW).
    """
    os.mkdir("/identity", 0o755)  # in the session tmpfs, which is "/" until the last pivot
    for name, content in identity.files(root, user, home).items():
        with open(f"/identity/{name}", "w") as f:
            f.write(content)
        _bind(f"/identity/{name}", root, Bind(f"/identity/{name}", f"/etc/{name}",
                                              read_only=True, recursive=False))


def execute(spec: ContainerSpec) -> NoReturn:
    """Step 6, in a process already inside the container (by prepare, or by joining one)."""
    argv, env = command_line(spec)
    apply(RankExec(argv, env, spec.cwd, spec.home, *cwd_failure(spec), *failure_line(spec)))


class RankExec(namedtuple("RankExec", "argv env cwd home cwd_failure_prefix cwd_failure_suffix "
                                      "failure_prefix failure_suffix")):
    """What is left to do once inside: the command and environment as they reach execve, the
    directory, and the lines to print (around strerror) when it is missing (none: home, then
    /, instead) and when execve fails. A node's holder computes it for each rank; C or
    Python apply it."""

    __slots__ = ()


def command_line(spec: ContainerSpec) -> tuple[list[str], dict[str, str]]:
    """argv and environment for execve, run inside the container: through /bin/sh when the
    image has env scripts to source (as Apptainer images expect), else as given."""
    argv = list(spec.argv)
    if spec.use_env_scripts and os.path.isdir(ENV_SCRIPTS) and os.access("/bin/sh", os.X_OK):
        # the shell's own "exec: line 3: X: not found" would name neither image nor command
        prefix, suffix = failure_line(spec)
        missing = quote(f"{prefix}not found{suffix}")
        script = (f'for f in {ENV_SCRIPTS}/*.sh; do [ -f "$f" ] && . "$f"; done\n'
                  f'{spec.env.shell_edits()}\n'
                  f'command -v "$1" >/dev/null 2>&1 || {{ echo {missing} >&2; exit 127; }}\n'
                  'exec "$@"')
        return ["/bin/sh", "-c", script, argv[0]] + argv, dict(spec.env.base)
    return argv, spec.env.final()


def cwd_failure(spec: ContainerSpec) -> tuple[str, str]:
    if not spec.cwd_required:
        return "", ""
    return (f"hpcrun: error: can't change to --pwd {spec.cwd} in the container: ",
            "; give a directory the image has, or --bind one there")


def failure_line(spec: ContainerSpec) -> tuple[str, str]:
    hint = spec.exec_hint or "check that the command exists in the image"
    return (f"hpcrun: error: can't execute {spec.argv[0]} in {spec.image.path}: ",
            f"; {hint}")


def apply(rank: RankExec) -> NoReturn:
    """The last step, which hpcrun-starter (C) repeats for ranks that join a node's
    container without Python: keep both alike."""
    try:
        os.chdir(rank.cwd)
    except OSError as err:
        if rank.cwd_failure_prefix:
            os.write(2, f"{rank.cwd_failure_prefix}{err.strerror}{rank.cwd_failure_suffix}\n"
                     .encode())
            os._exit(255)
        os.chdir(rank.home if os.path.isdir(rank.home) else "/")
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    # Python ignores these at start-up and execve keeps what is ignored: the program would
    # start with writes to a closed pipe failing quietly (EPIPE) instead of killing it
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execvpe(rank.argv[0], rank.argv, rank.env)
    except OSError as err:
        os.write(2, f"{rank.failure_prefix}{err.strerror}{rank.failure_suffix}\n".encode())
        os._exit(255)


def _log(spec: ContainerSpec, message: str) -> None:
    if spec.verbose:
        os.write(2, f"hpcrun: {message}\n".encode())
