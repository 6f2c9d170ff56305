"""``--mpi=host``: the bind model, where the host's MPI library replaces the image's.

For interconnects whose fast path lives in a vendor MPI (Cray MPICH, MVAPICH, a site-tuned
Open MPI), the image's MPI is swapped for the host's at run time. That works only between
libraries of one ABI family whose soname numbers agree: Sarus's rules (``major``, ``full``,
``strict``, see ``mpi.abi.mpi_abi_check``) decide, and nothing is bound unless they pass.

What is bound: the host library and every host library it needs (DT_NEEDED, transitively,
without glibc and the compiler runtimes, which stay the image's), into the private library
directory put *first* on LD_LIBRARY_PATH; under the image's soname too when the two differ
(the MPICH ABI's libmpich.so.12 and libmpi.so.12). The directories an MPI reads at run time
by their compiled-in paths (Open MPI's components, help texts and MCA defaults; PMIx's
plugins) are bound at those same paths, over the image's.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from hpcbind.host import libbind
from hpcbind.hostroot import HostRoot
from hpcbind.mpi.abi import MpiLib, find_mpi, mpi_abi_check
from hpcbind.plan import (CONTAINER_LIBDIR, Check, EnvAction, EnvOp, Link, Mount, PlanPart,
                          Status)

PROVIDER = "mpi.hostmpi"
RW_NONE = ("ro", "nosuid", "nodev")
# Directories Open MPI and PMIx open by their configured paths (Debian's layout and the
# usual /usr/local and /opt prefixes are found through the library's own directory).
_RUNTIME_DIRS = ("openmpi", "pmix2", "pmix")
_SHARED_DIRS = ("/usr/share/openmpi", "/usr/share/pmix", "/etc/openmpi", "/etc/pmix")


def discover(host: HostRoot, env: Mapping[str, str], image_mpi: tuple[MpiLib, ...],
             rule: str = "major") -> PlanPart:
    part = PlanPart()
    if not image_mpi:
        part.checks.append(Check("mpi-host", Status.FAIL, "--mpi=host: the image has no MPI "
                                 "library to replace", PROVIDER,
                                 "drop --mpi=host, or use an image built with MPI"))
        return part
    loader = libbind.host_loader(host)
    host_mpi = find_mpi(host, loader.paths)
    image_lib = image_mpi[0]
    same_family = [lib for lib in host_mpi if lib.family is image_lib.family]
    if not same_family:
        found = ", ".join(lib.describe() for lib in host_mpi) or "none"
        part.checks.append(Check(
            "mpi-host", Status.FAIL,
            f"--mpi=host: no host MPI of the image's family ({image_lib.describe()}); "
            f"the host has {found}", PROVIDER,
            "run the image's own MPI (without --mpi=host), or load the host MPI module "
            "of that family"))
        return part
    host_lib = same_family[0]
    check = mpi_abi_check(host_lib, image_lib, rule)
    part.checks.append(check)
    if check.status is Status.FAIL:
        return part
    libdir = posixpath.dirname(host.resolve(host_lib.path))
    runtime = _runtime_dirs(host, libdir)
    requests = [libbind.LibRequest(host_lib.soname, "mpi-host",
                                   f"the host's {host_lib.describe()} replaces the image's")]
    requests += _plugin_needs(host, [m.source for m in runtime])
    part.extend(libbind.library_part(loader, requests, PROVIDER))
    if image_lib.soname != host_lib.soname:
        part.links.append(Link(f"{CONTAINER_LIBDIR}/{image_lib.soname}", host_lib.name,
                               PROVIDER, "the image's programs link this soname"))
    part.mounts += runtime
    # the host's library must be found before the image's own copy in its default dirs
    part.env = [EnvOp(op.name, EnvAction.PREPEND, op.value, op.provider,
                      "--mpi=host: the host's MPI before the image's")
                if op.name == "LD_LIBRARY_PATH" else op for op in part.env]
    return part


def _plugin_needs(host: HostRoot, directories: list[str]) -> list[libbind.LibRequest]:
    """What the MPI's dlopen'd components need from the host (they load from the host's
    runtime directories, so their libraries must be the host's too)."""
    needed: dict[str, str] = {}
    for directory in directories:
        for path in host.glob(f"{directory.lstrip('/')}/**/*.so"):
            info = libbind.library_elf(host, path)
            for dep in info.needed if info else ():
                if not libbind.image_owned(dep):
                    needed.setdefault(dep, posixpath.basename(path))
    return [libbind.LibRequest(dep, "dependency", f"needed by the host MPI component {by}",
                               required=True) for dep, by in sorted(needed.items())]


def _runtime_dirs(host: HostRoot, libdir: str) -> list[Mount]:
    dirs = [f"{libdir}/{name}" for name in _RUNTIME_DIRS] + list(_SHARED_DIRS)
    return [Mount(host.resolve(d), d, "dir", PROVIDER, "mpi-host-runtime",
                  "read by the host MPI at its compiled-in path", RW_NONE)
            for d in dirs if host.is_dir(d)]
