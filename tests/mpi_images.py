"""Small real MPI images for the launcher tests, made in seconds from the host's own files.

An image holds ``tests/mpi/mpi_check.c`` and ``tests/mpi/spawn_check.c`` compiled with the
family's ``mpicc`` at ``/usr/local/bin/mpi-check`` and ``spawn-check``, every library ``ldd``
lists for them (and the dynamic loader), and the directories the MPI library loads plugins
from. It is a real root filesystem the container runtime mounts like any other; only its
size differs from the example image's (which takes a 7-minute debootstrap and is used where
Python/mpi4py is needed).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROGRAMS = {name: Path(__file__).parent / "mpi" / f"{name.replace('-', '_')}.c"
            for name in ("mpi-check", "spawn-check")}
MPICC = {"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}
# dlopen'd at run time, so ldd does not list them
PLUGIN_DIRS = {
    "openmpi": ["/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2",
                "/usr/share/openmpi", "/etc/openmpi", "/usr/lib/x86_64-linux-gnu/ucx",
                "/usr/share/pmix", "/usr/lib/x86_64-linux-gnu/libfabric"],
    "mpich": ["/usr/lib/x86_64-linux-gnu/ucx", "/usr/lib/x86_64-linux-gnu/libfabric"],
}


def build_mpi_image(family: str, work: Path) -> Path:
    """A squashfs image whose /usr/local/bin programs are built against ``family``'s MPI
    (built once per ``work`` directory: several test modules share one)."""
    image = work / f"{family}.sqfs"
    if image.exists():
        return image
    root = work / f"{family}-root"
    for name, source in PROGRAMS.items():
        binary = work / f"{name}-{family}"
        subprocess.run([MPICC[family], "-O", "-o", str(binary), str(source)], check=True,
                       capture_output=True)
        _copy(binary, root / "usr/local/bin" / name)
        for lib in _ldd(binary):
            _copy(Path(lib), root / lib.lstrip("/"))
    for directory in PLUGIN_DIRS[family]:
        if Path(directory).is_dir():
            shutil.copytree(directory, root / directory.lstrip("/"), symlinks=True,
                            dirs_exist_ok=True)
            for plugin in Path(directory).rglob("*.so*"):
                for lib in _ldd(plugin):
                    _copy(Path(lib), root / lib.lstrip("/"))
    for d in ("etc", "tmp", "proc", "sys", "dev", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    subprocess.run(["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress",
                    "-all-root", "-comp", "lz4"], check=True, capture_output=True)
    image.chmod(0o644)
    return image


def _ldd(path: Path) -> list[str]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            candidate = parts[parts.index("=>") + 1]
        elif parts and parts[0].startswith("/"):
            candidate = parts[0]  # the dynamic loader
        else:
            continue
        if candidate.startswith("/"):
            libs.append(candidate)
    return libs


def _copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), target)
