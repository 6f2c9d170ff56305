"""Conventions of a Linux system that every layer shares, with no imports of their own (the
runtime reads this module on every rank's path)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from itertools import groupby

# The PATH a process gets when nothing else says (Debian's /etc/login.defs ENV_SUPATH, which
# Apptainer also sets in containers)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CACHE_ENV = "HPCRUN_CACHEDIR"
# Apptainer's variables for the same places, honoured so job scripts and site modules that
# point them at scratch space keep working (APPTAINER_ before SINGULARITY_, as Apptainer)
APPTAINER_CACHE_ENVS = ("APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR")
APPTAINER_TMPDIR_ENVS = ("APPTAINER_TMPDIR", "SINGULARITY_TMPDIR")


def installed_helper(name: str) -> str | None:
    """A compiled helper that ``make`` installs beside the hpcrun command, or None where this
    installation has none (a plain ``pip install``): callers then take the slower way."""
    path = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)
    return path if os.access(path, os.X_OK) else None


_site_loaded = False


def load_site_packages() -> None:
    """Put site-packages on sys.path where hpcrun's launcher left them out (``python -I -S``
    spares each MPI rank ~50 ms): for the paths that need third-party modules (discovery's
    pynvml and pyudev, signatures' pgpy, rich). Once: ``hpcrun mpirun``'s CLI, the holder
    it starts and discovery each ask."""
    global _site_loaded
    if sys.flags.no_site and not _site_loaded:
        import site

        site.main()
        _site_loaded = True


def user_cache_dir() -> str:
    """hpcbind's cache for this user: ``$HPCRUN_CACHEDIR``, else ``hpcbind`` in
    ``$APPTAINER_CACHEDIR`` (its own directory: 'hpcrun cache clean' leaves Apptainer's
    files alone), else ``${XDG_CACHE_HOME:-~/.cache}/hpcbind`` (pulled images, unpacked
    roots, image facts)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    apptainer = next((os.environ[v] for v in APPTAINER_CACHE_ENVS if os.environ.get(v)), "")
    return os.path.join(apptainer or os.environ.get("XDG_CACHE_HOME")
                        or os.path.expanduser("~/.cache"), "hpcbind")


def temp_dir() -> str | None:
    """Where builds and pulls put temporary files when Apptainer's variable says (else
    ``$TMPDIR``, Python's default)."""
    return next((os.environ[v] for v in APPTAINER_TMPDIR_ENVS if os.environ.get(v)), None)


def file_identity_key(st: os.stat_result, offset: int = 0) -> str:
    """A cache key for what a file holds at ``offset``: device, inode, size and modification
    time, so a rebuilt image gets a new key without its content being read."""
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}-{offset:x}"


def natural_key(name: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    """Numbers compare as numbers, words as words, separators not at all (the name itself
    breaks ties): mlx5_2 before mlx5_10, GLIBC_2.9 before GLIBC_2.10 before GLIBC_PRIVATE,
    ROCm 6.10.0 after 6.9.1. (No ``re``: a rank's start-up would pay for it.)"""
    tokens = []
    for digits, run in groupby(name, str.isdigit):
        text = "".join(run)
        if digits:
            tokens.append((0, int(text)))
        else:
            tokens += [(1, word) for word in _words(text)]
    return tuple(tokens), name


def natural_sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def _words(text: str) -> list[str]:
    return ["".join(run) for letters, run in groupby(text, str.isalpha) if letters]
