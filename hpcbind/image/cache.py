"""The user's image cache: ``$HPCRUN_CACHEDIR``, else ``${XDG_CACHE_HOME:-~/.cache}/hpcbind``.

::

    oci/               one OCI image layout that every pull copies into: blobs/sha256/<digest>
                       holds layers, configs and manifests by content, so a layer any earlier
                       pull fetched is never downloaded again; index.json has one tag per
                       reference and platform pulled
    refs.json          tag -> the reference and platform it was pulled as
    sif/<digest>.sif   images converted for exec/run/shell of a reference, by manifest digest
    lock               flock(2): one pull at a time writes the layout

skopeo writes a blob to a temporary file and renames it once its digest is verified, and
index.json last, so an interrupted pull leaves the layout consistent; the next pull fetches
only the missing blobs. Its temporary files are swept under the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hpcbind.errors import HpcbindError
from hpcbind.host.conventions import CACHE_ENV, user_cache_dir
from hpcbind.image import oci
from hpcbind.image.oci import FetchOptions, Reference

def cache_dir() -> Path:
    return Path(user_cache_dir())


@dataclass(frozen=True, slots=True)
class Fetched:
    """An image in the cache's layout."""

    reference: Reference
    layout: Path
    tag: str
    digest: str  # of the manifest, "sha256:..."
    config: dict  # the image config's "config" (Entrypoint, Cmd, Env, Labels, ...)
    config_json: bytes  # that object as the SIF keeps it
    layers: tuple[Path, ...]


@contextmanager
def locked(root: Path) -> Iterator[Path]:
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise HpcbindError(f"can't use the image cache {root}: {err.strerror}",
                           f"check its permissions, or set ${CACHE_ENV}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield root
    finally:
        os.close(fd)


def fetch(reference: Reference, options: FetchOptions, work: Path) -> Fetched:
    """Copy ``reference`` (this host's platform, or options.arch) into the cache."""
    authfile = None
    if options.username:
        authfile = work / "auth.json"
        oci.write_authfile(authfile, reference, options.username, options.password)
    skopeo = ["skopeo", *oci.skopeo_global_flags()]
    inspect = [*skopeo, "inspect", "--raw", *oci.skopeo_flags(reference, options, authfile, "")]
    raw = oci.run_tool([*inspect, str(reference)], reference)
    config = None
    if b'"manifests"' not in raw:  # one image: its platform is in its config
        config = oci.run_tool([*inspect, "--config", str(reference)], reference)
    arch, variant = oci.choose_platform(reference, raw, config, options)
    tag = "h" + hashlib.sha256(f"{reference}|{arch}/{variant}".encode()).hexdigest()[:40]
    argv = [*skopeo, "copy", "--override-os", "linux", "--override-arch", arch,
            *(["--override-variant", variant] if variant else []),
            *(["--quiet"] if options.quiet else []),
            *oci.skopeo_flags(reference, options, authfile, "src-")]
    with locked(cache_dir()) as root:
        layout = root / "oci"
        _sweep(layout)
        oci.run_tool([*argv, str(reference), f"oci:{layout}:{tag}"], reference,
                     show_progress=not options.quiet)
        _record(root, tag, {"reference": str(reference), "platform": f"linux/{arch}"
                            f"{'/' + variant if variant else ''}", "time": int(time.time())})
        return _read(reference, layout, tag)


def unpack(fetched: Fetched, rootfs: Path, *, keep_owners: bool | None = None,
           make_devices: bool | None = None) -> list[str]:
    """Apply the layers into ``rootfs`` (which must not exist); notes on what was skipped.

    keep_owners: the layers' owners can be set (root, or a namespace holding subordinate
    ids); make_devices: device nodes can be made (real root only). Both default to whether
    this process is root.
    """
    root = os.geteuid() == 0
    keep_owners = root if keep_owners is None else keep_owners
    notes = oci.check_layers(fetched.layers, fetched.reference,
                             root if make_devices is None else make_devices)
    # In a user namespace umoci leaves an empty file for a device node by itself.
    argv = ["umoci", "raw", "unpack", *([] if keep_owners else ["--rootless"]),
            "--image", f"{fetched.layout}:{fetched.tag}", str(rootfs)]
    with locked(fetched.layout.parent):
        oci.run_tool(argv, fetched.reference)
    return notes


def _sweep(layout: Path) -> None:
    # Under the lock no skopeo is running: these are left by an interrupted one.
    for stale in layout.glob("oci-put-blob*"):
        stale.unlink(missing_ok=True)


def _record(root: Path, tag: str, entry: dict) -> None:
    refs = _refs(root)
    refs[tag] = entry
    tmp = root / "refs.json.tmp"
    tmp.write_text(json.dumps(refs, indent=1, sort_keys=True))
    tmp.replace(root / "refs.json")


def _refs(root: Path) -> dict:
    try:
        value = json.loads((root / "refs.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read(reference: Reference, layout: Path, tag: str) -> Fetched:
    index = _blob_json(layout / "index.json")
    digest = next((m["digest"] for m in index.get("manifests", [])
                   if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag),
                  "")
    manifest = _blob_json(_blob(layout, digest))
    image = _blob_json(_blob(layout, manifest["config"]["digest"]))
    config = image.get("config") or {}
    layers = tuple(_blob(layout, layer["digest"]) for layer in manifest.get("layers", []))
    return Fetched(reference, layout, tag, digest, config,
                   json.dumps(config, separators=(",", ":")).encode(), layers)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _blob_json(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise HpcbindError(f"the image cache is damaged: {path}: {err}",
                           "run 'hpcrun cache clean' and pull again") from None


# ----------------------------------------------------------------- exec/run/shell REFERENCE


def cached_sif(text: str, options: FetchOptions | None = None) -> str:
    """The SIF for reference ``text``, pulled and converted on first use (as Apptainer's
    exec of docker://...: the registry is asked for the current digest every time)."""
    from hpcbind.image.build import SilentProgress, build

    reference = oci.parse(text)
    assert reference is not None
    options = options or FetchOptions()
    with tempfile.TemporaryDirectory(prefix="hpcrun-pull-") as work:
        fetched = fetch(reference, options, Path(work))
    sif = cache_dir() / "sif" / f"{fetched.digest.partition(':')[2]}.sif"
    if not sif.exists():
        sif.parent.mkdir(exist_ok=True)
        build(sif, text, force=True, fetch=options, progress=SilentProgress())
    return str(sif)


# ------------------------------------------------------------------------ cache list|clean


@dataclass(frozen=True, slots=True)
class Entry:
    reference: str
    platform: str
    digest: str
    size: int  # bytes of its blobs
    sif: bool  # converted for exec


def entries() -> list[Entry]:
    root = cache_dir()
    layout = root / "oci"
    if not (layout / "index.json").is_file():
        return []
    refs = _refs(root)
    index = _blob_json(layout / "index.json")
    found = []
    for item in index.get("manifests", []):
        tag = item.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        digest = item.get("digest", "")
        manifest = _blob_json(_blob(layout, digest))
        blobs = [manifest.get("config", {}), *manifest.get("layers", [])]
        size = sum(int(b.get("size", 0)) for b in blobs) + int(item.get("size", 0))
        info = refs.get(tag, {})
        found.append(Entry(info.get("reference", tag), info.get("platform", "?"), digest, size,
                           (root / "sif" / f"{digest.partition(':')[2]}.sif").exists()))
    return found


def total_size() -> int:
    root = cache_dir()
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def clean() -> int:
    """Remove the whole cache; the bytes freed."""
    from hpcbind.image.build import writable_and_retry

    root = cache_dir()
    if not root.exists():
        return 0
    freed = total_size()
    with locked(root):
        for child in root.iterdir():
            if child.name == "lock":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, onerror=writable_and_retry)
            else:
                child.unlink()
    return freed
