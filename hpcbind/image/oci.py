"""Images from registries, OCI layouts and archives: ``docker://``, ``oci:``, ``oci-archive:``,
``docker-archive:``.

The transport is the field's tools, not a home-made registry client: ``skopeo`` copies an
image (registries, credentials, TLS and certificate directories, ``registries.conf`` mirrors,
the signature policy) into one OCI layout that serves as a content-addressed layer cache
(see ``hpcbind.image.cache``), and ``umoci raw unpack`` applies its layers (OCI whiteouts,
hard links, xattrs, ``--rootless`` for a plain user). What the image config becomes is
Apptainer's (``conveyorPacker_oci.go``): ENTRYPOINT/CMD the runscript, ENV
``/.singularity.d/env/10-docker2singularity.sh``, labels ``labels.json``, the config itself the
SIF object ``oci-config.json``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcbind.errors import HpcbindError
from hpcbind.image.source import REFERENCE_PREFIXES

TRANSPORTS = tuple(prefix.partition(":")[0] for prefix in REFERENCE_PREFIXES)
CONFIG_OBJECT = "oci-config.json"  # Apptainer's image.SIFDescOCIConfigJSON
DOCKER_ENV = "/.singularity.d/env/10-docker2singularity.sh"
DEFAULT_REGISTRY = "docker.io"

_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")


@dataclass(frozen=True, slots=True)
class Reference:
    """An image named as skopeo names it: ``transport:target``."""

    transport: str  # one of TRANSPORTS
    target: str  # "//HOST/NAME:TAG" for docker, "PATH[:TAG]" for the others

    def __str__(self) -> str:
        return f"{self.transport}:{self.target}"

    @property
    def registry(self) -> str:
        """The registry host of a docker:// name (Docker Hub when the name has none)."""
        first, slash, _ = self.target.lstrip("/").partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            return first
        return DEFAULT_REGISTRY

    def sif_name(self) -> str:
        """Apptainer's default pull name: NAME_TAG.sif from the last path component."""
        name = self.target.lstrip("/")
        if self.transport != "docker":
            name = os.path.basename(name.rstrip("/"))
        name = name.rsplit("/", 1)[-1]
        base, _, digest = name.partition("@")
        base, colon, tag = base.partition(":")
        if digest:
            return f"{base}_{digest.partition(':')[2][:12] or digest}.sif"
        return f"{base}_{tag if colon else 'latest'}.sif"


def parse(text: str) -> Reference | None:
    """The reference ``text`` names, or None when it names no OCI transport (a local path)."""
    transport, colon, target = text.partition(":")
    if not colon or transport not in TRANSPORTS:
        return None
    if transport == "docker":
        if not target.startswith("//") or not target.strip("/"):
            raise HpcbindError(f"bad image reference {text!r}",
                               "write docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST]")
        return Reference(transport, target)
    if not target:
        raise HpcbindError(f"bad image reference {text!r}: no path",
                           f"write {transport}:PATH[:TAG]")
    return Reference(transport, target)


def from_header(bootstrap: str, source: str, registry: str = "", namespace: str = "") -> Reference:
    """A definition file's ``Bootstrap:``/``From:`` (``Registry:``, ``Namespace:``), as
    Apptainer joins them."""
    name = "/".join(part for part in (registry, namespace, source) if part)
    reference = parse(f"{bootstrap}:{'//' if bootstrap == 'docker' else ''}{name}")
    assert reference is not None  # bootstrap is one of TRANSPORTS
    return reference


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How to reach a registry; the defaults are skopeo's (auth files, certs.d, mirrors)."""

    arch: str = ""  # GOARCH[/VARIANT]; "" is this host's
    no_https: bool = False
    username: str = ""
    password: str = ""
    quiet: bool = True  # no per-layer bars

    def platform(self) -> tuple[str, str]:
        from hpcbind.image.sif import host_arch

        arch, _, variant = (self.arch or host_arch()).partition("/")
        return arch, variant


def credentials_from_environment() -> tuple[str, str]:
    """Apptainer's (and SingularityCE's) variables for a registry login."""
    for prefix in ("APPTAINER", "SINGULARITY"):
        user = os.environ.get(f"{prefix}_DOCKER_USERNAME", "")
        if user:
            return user, os.environ.get(f"{prefix}_DOCKER_PASSWORD", "")
    return "", ""


def write_authfile(path: Path, reference: Reference, username: str, password: str) -> None:
    """An auth file for explicit credentials: on skopeo's command line they would be visible
    to every user in ``ps``."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        json.dump({"auths": {reference.registry: {"auth": token}}}, stream)


# -------------------------------------------------------------------------------- skopeo


def skopeo_global_flags() -> list[str]:
    """$CONTAINERS_REGISTRIES_CONF, which Debian 12's skopeo (1.9) reads only as a flag."""
    conf = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    return ["--registries-conf", conf] if conf else []


def skopeo_flags(reference: Reference, options: FetchOptions, authfile: Path | None,
                 prefix: str) -> list[str]:
    """Transport flags for ``skopeo inspect`` (prefix "") or ``copy``'s source ("src-")."""
    if reference.transport != "docker":
        return []
    flags = []
    if options.no_https:
        flags.append(f"--{prefix}tls-verify=false")
    if authfile is not None:
        flags.append(f"--{prefix}authfile={authfile}")
    return flags


def choose_platform(reference: Reference, raw_manifest: bytes, config: bytes | None,
                    options: FetchOptions) -> tuple[str, str]:
    """(arch, variant) to copy: the one asked for, refused in one line when not offered."""
    arch, variant = options.platform()
    manifest = _json(raw_manifest, f"{reference}: the manifest")
    if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        offered = [entry.get("platform") or {} for entry in manifest.get("manifests", [])]
    else:
        image = _json(config or b"{}", f"{reference}: the image config")
        offered = [{"os": image.get("os", ""), "architecture": image.get("architecture", ""),
                    "variant": image.get("variant", "")}]
    for platform in offered:
        if _matches(platform, arch, variant):
            return platform.get("architecture") or arch, platform.get("variant", "")
    names = ", ".join(sorted({_platform_name(p) for p in offered})) or "no platform"
    raise HpcbindError(f"{reference} offers {names}, not linux/{arch}"
                       f"{'/' + variant if variant else ''} (this host's, or --arch's)",
                       "choose one it offers with --arch ARCH[/VARIANT]")


def _matches(platform: dict, arch: str, variant: str) -> bool:
    # A platform without an os or architecture (a single-image layout without a config
    # platform) is taken as the host's, as skopeo does.
    return (platform.get("os", "linux") in ("linux", "")
            and platform.get("architecture", arch) in (arch, "")
            and (not variant or platform.get("variant", "") in (variant, "")))


def _platform_name(platform: dict) -> str:
    parts = [platform.get("os") or "?", platform.get("architecture") or "?"]
    if platform.get("variant"):
        parts.append(platform["variant"])
    return "/".join(parts)


def _json(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        raise HpcbindError(f"{what} is not JSON", "check the image's source") from None
    if not isinstance(value, dict):
        raise HpcbindError(f"{what} is not a JSON object", "check the image's source")
    return value


# What skopeo's and umoci's last error line means to a user: (pattern, what, how to fix).
_FAILURES: tuple[tuple[str, str, str], ...] = (
    (r"no space left on device", "the disk is full",
     "free space in the cache ($HPCRUN_CACHEDIR, 'hpcrun cache clean') and in $TMPDIR"),
    # HTTP statuses as whole numbers: a registry on port 40123 or 40483 is not one
    (r"unauthorized|authentication required|denied|\b401\b",
     "the registry refused the credentials",
     "log in with --docker-login, $APPTAINER_DOCKER_USERNAME/_PASSWORD or "
     "~/.docker/config.json"),
    (r"manifest unknown|name unknown|not found|no such file|does not exist|\b404\b",
     "no such image, tag or file", "check the name and tag (or path)"),
    (r"http response to https client", "the registry speaks plain HTTP", "add --no-https"),
    (r"x509|certificate|tls:", "the registry's TLS certificate is not trusted",
     "put its CA in /etc/containers/certs.d/HOST:PORT/ca.crt, or use --no-https"),
    (r"connection refused|no such host|i/o timeout|network is unreachable|dial tcp",
     "the registry cannot be reached", "check the host and port, and that it is up"),
    (r"digest|checksum", "a blob does not match its digest",
     "the source is corrupt: pull again, or fix the layout or registry"),
)


def failure(tool: str, reference: Reference, stderr: str) -> HpcbindError:
    """One line from a tool's failure: its own last message, and what to do about it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    detail = re.sub(r'^time="[^"]*" level=\w+ msg="(.*)"$', r"\1", lines[-1]) if lines else ""
    detail = detail.replace('\\"', '"')  # skopeo's log format escapes the quotes it quotes
    for pattern, what, fix in _FAILURES:
        if re.search(pattern, detail, re.IGNORECASE):
            return HpcbindError(f"{tool} {reference}: {what} ({detail[-300:]})", fix)
    return HpcbindError(f"{tool} {reference} failed: {detail[-300:] or 'no message'}",
                        "see the message; check the reference and the source")


def run_tool(argv: Sequence[str], reference: Reference, *, show_progress: bool = False) -> bytes:
    """Run skopeo or umoci; its stdout, or one-line HpcbindError from its stderr.

    ``show_progress`` lets skopeo draw its per-layer bars on our terminal (stderr): they are
    its stdout, which it draws only on a terminal."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              stdout=sys.stderr if show_progress else subprocess.PIPE)
    except FileNotFoundError:
        raise HpcbindError(f"{argv[0]} is not installed",
                           f"install it (Debian: apt-get install {argv[0]})") from None
    if proc.returncode != 0:
        raise failure(Path(argv[0]).name, reference, proc.stderr.decode(errors="replace"))
    return proc.stdout or b""


# ---------------------------------------------------------------------- layer safety check


def check_layers(layers: Sequence[Path], reference: Reference,
                 make_devices: bool) -> list[str]:
    """Refuse layers with entries outside the root; return notes for what will be skipped.

    umoci confines such entries to the root already; refusing names the bad image instead of
    unpacking a silently different one. Device nodes cannot be made but by root
    (``make_devices``): umoci leaves an empty file instead, which the caller notes.
    """
    notes = []
    for layer in layers:
        for member in _members(layer, reference):
            name = member.name
            parts = Path(name).parts
            if name.startswith("/") or ".." in parts:
                raise HpcbindError(f"{reference}: layer {layer.name[:12]} has an entry "
                                   f"outside the root: {name!r}",
                                   "the image is malformed or hostile; do not use it")
            if member.islnk() and (member.linkname.startswith("/")
                                   or ".." in Path(member.linkname).parts):
                raise HpcbindError(f"{reference}: layer {layer.name[:12]} has a hard link "
                                   f"out of the root: {name!r} -> {member.linkname!r}",
                                   "the image is malformed or hostile; do not use it")
            if member.issym() and _climbs(name, member.linkname):
                raise HpcbindError(f"{reference}: layer {layer.name[:12]} has a symbolic link "
                                   f"climbing out of the root: {name!r} -> "
                                   f"{member.linkname!r}",
                                   "the image is malformed or hostile; do not use it")
            if (member.ischr() or member.isblk()) and not make_devices:
                notes.append(f"device node /{name.lstrip('./')} skipped: an empty file in its "
                             "place (only root makes device nodes; containers get the host's "
                             "/dev)")
    return notes


def _climbs(name: str, target: str) -> bool:
    """A relative link whose ``..`` steps leave the root (absolute ones resolve inside)."""
    if target.startswith("/"):
        return False
    depth = len(Path(name.lstrip("./") or ".").parent.parts)
    for part in Path(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def _members(layer: Path, reference: Reference) -> Iterator[tarfile.TarInfo]:
    try:
        with tarfile.open(layer, "r|*") as tar:
            yield from tar
    except tarfile.CompressionError:
        return  # zstd and friends: left to umoci, which confines entries to the root anyway
    except (tarfile.TarError, EOFError, OSError) as err:
        raise HpcbindError(f"{reference}: layer {layer.name[:12]} is not a readable tar "
                           f"archive ({err})", "the image is corrupt: pull it again") from None


# --------------------------------------------------------------------- Apptainer's metadata


def runscript(config: dict) -> bytes:
    """Apptainer's runscript for an OCI image (``insertRunScript`` and its template)."""
    entrypoint = config.get("Entrypoint") or []
    cmd = config.get("Cmd") or []
    prepend_cmd = "".join(f"set -- '{_single(arg)}' \"$@\"\n" for arg in reversed(cmd))
    prepend_ep = "".join(f"set -- '{_single(arg)}' \"$@\"\n" for arg in reversed(entrypoint))
    cmd_only = (f"\n        if [ $# -eq 0 ]; then\n            {prepend_cmd}\n        fi"
                if prepend_cmd else "")
    if prepend_ep:
        both = (f"\n    if [ $# -gt 0 ]; then\n        {prepend_ep}\n\telse\n"
                f"        {prepend_cmd}\n        {prepend_ep}\n    fi")
    elif prepend_cmd:
        both = f"\n    if [ $# -eq 0 ]; then\n        {prepend_cmd}\n    fi"
    else:
        both = ""
    head = (f"#!/bin/sh\nOCI_ENTRYPOINT='{_single(_args_quoted(entrypoint))}'\n"
            f"OCI_CMD='{_single(_args_quoted(cmd))}'\n")
    return (head + _RUNSCRIPT.format(prepend_ep=prepend_ep, cmd_only=cmd_only,
                                     both=both)).encode()


def environment(config: dict) -> bytes:
    """``10-docker2singularity.sh``: the image's ENV, overridable from the host but PATH."""
    lines = ["#!/bin/sh\n"]
    for element in config.get("Env") or []:
        name, equals, value = element.partition("=")
        if not equals:
            lines.append(f'export {name}="${{{name}:-}}"\n')
        elif name == "PATH":
            lines.append(f"export {name}={_go_quote(_escape(value))}\n")
        else:
            lines.append(f'export {name}="${{{name}:-{_go_quote(_escape(value))}}}"\n')
    return "".join(lines).encode()


def labels(config: dict) -> dict[str, str]:
    return {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}


def _escape(value: str) -> str:
    """Apptainer's shell.Escape: backslash, double quote, backquote and dollar."""
    for char in ("\\", '"', "`", "$"):
        value = value.replace(char, "\\" + char)
    return value


def _single(value: str) -> str:
    return value.replace("'", "'\"'\"'")


def _args_quoted(args: Sequence[str]) -> str:
    return " ".join(f'"{_escape(arg)}"' for arg in args)


def _go_quote(value: str) -> str:
    """Go's %q for the printable text an ENV holds (JSON's escapes agree with Go's there)."""
    return json.dumps(value, ensure_ascii=False)


# Apptainer's ociRunscript template, rendered: {prepend_ep}, {cmd_only} and {both} are its
# {{ .PrependEntrypoint }} and its two {{- if }} blocks, whitespace trimmed as Go's are.
_RUNSCRIPT = '''
# When SINGULARITY_NO_EVAL set, use OCI compatible behavior that does
# not evaluate resolved CMD / ENTRYPOINT / ARGS through the shell, and
# does not modify expected quoting behavior of args.
if [ -n "$SINGULARITY_NO_EVAL" ]; then
    # ENTRYPOINT only - run entrypoint plus args
    if [ -z "$OCI_CMD" ] && [ -n "$OCI_ENTRYPOINT" ]; then
        {prepend_ep}
        exec "$@"
    fi

    # CMD only - run CMD or override with args
    if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then{cmd_only}
        exec "$@"
    fi

    # ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
    # override with user provided args{both}
    exec "$@"
fi

# Standard Apptainer behavior evaluates CMD / ENTRYPOINT / ARGS
# combination through shell before exec, and requires special quoting
# due to concatenation of CMDLINE_ARGS.
CMDLINE_ARGS=""
# prepare command line arguments for evaluation
for arg in "$@"; do
        CMDLINE_ARGS="${{CMDLINE_ARGS}} \\"$arg\\""
done

# ENTRYPOINT only - run entrypoint plus args
if [ -z "$OCI_CMD" ] && [ -n "$OCI_ENTRYPOINT" ]; then
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{CMDLINE_ARGS}}"
    else
        SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}}"
    fi
fi

# CMD only - run CMD or override with args
if [ -n "$OCI_CMD" ] && [ -z "$OCI_ENTRYPOINT" ]; then
    if [ $# -gt 0 ]; then
        SINGULARITY_OCI_RUN="${{CMDLINE_ARGS}}"
    else
        SINGULARITY_OCI_RUN="${{OCI_CMD}}"
    fi
fi

# ENTRYPOINT and CMD - run ENTRYPOINT with CMD as default args
# override with user provided args
if [ $# -gt 0 ]; then
    SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{CMDLINE_ARGS}}"
else
    SINGULARITY_OCI_RUN="${{OCI_ENTRYPOINT}} ${{OCI_CMD}}"
fi

# Evaluate shell expressions first and set arguments accordingly,
# then execute final command as first container process
eval "set ${{SINGULARITY_OCI_RUN}}"
exec "$@"
'''
