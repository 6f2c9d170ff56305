"""Image facts kept per image file in the user's cache (``contents.cached_image_facts``
writes them), read here as the JSON they are stored as, without the modules that build
them: ``hpcrun mpirun`` checks the image's MPI family from them on every launch, before any
rank starts, and importing ``contents`` would cost it ~25 ms.

The entry is keyed by the file's identity (device, inode, size, modification time) and the
partition offset, so a rebuilt image gets a new one.
"""

from __future__ import annotations

import json
import os

from hpcbind.host.conventions import file_identity_key, user_cache_dir


def entry_path(path: str, offset: int = 0, cache_dir: str | None = None) -> str:
    base = os.path.join(cache_dir, "hpcbind") if cache_dir else user_cache_dir()
    return os.path.join(base, "facts", f"{file_identity_key(os.stat(path), offset)}.json")


def read(path: str, offset: int = 0, cache_dir: str | None = None) -> dict | None:
    """The stored facts of the image at ``path`` (``offset``: its squashfs partition), or None
    where none are stored or they cannot be read."""
    try:
        with open(entry_path(path, offset, cache_dir)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(path: str, offset: int, data: dict, cache_dir: str | None = None) -> None:
    entry = entry_path(path, offset, cache_dir)
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        partial = f"{entry}.{os.getpid()}.partial"
        with open(partial, "w") as f:
            json.dump(data, f)
        os.rename(partial, entry)
    except OSError:
        pass  # a read-only home only costs the next launch the same read
