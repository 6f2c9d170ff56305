"""The MPI launcher the current process runs under, and what a container needs to join it.

A rank started by ``mpirun``/``srun`` finds its launcher through its environment and a few
host paths (reference/mpi-fabric-pmi.md §4): Open MPI/PRRTE and Slurm ``--mpi=pmix`` hand it a
PMIx server URI (TCP on 127.0.0.1, so the host network namespace) and a server directory that
must be visible at the same path; MPICH's Hydra and Slurm ``--mpi=pmi2`` hand it an open socket
``PMI_FD`` that must stay open across exec. ``discover`` turns what it finds into plan entries:
those variables passed through even under ``--cleanenv``, the rendezvous directories bound
read-write at their own paths, the munge socket when PMIx authenticates with munge, and the
``PMIX_*_MODULE`` hints restated as ``PMIX_MCA_*`` selections.

It describes the calling process: ``env`` is its environment, and ``PMI_FD`` is checked against
its own open descriptors (``/proc/self/fd`` through the host root; a capture without one is
not checked).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from typing import TYPE_CHECKING

from hpcbind.hostroot import HostRoot
from hpcbind.plan import (Check, EnvAction, EnvOp, Fact, Mount, Need, PlanPart, Provenance, Rejected,
                          Status)

PROVIDER = "mpi.host"

MUNGE_DIR = "/run/munge"
MUNGE_SOCKET = "/run/munge/munge.socket.2"
if TYPE_CHECKING:
    from hpcbind.mpi.abi import MpiLib

_RW_BIND = ("rw", "nosuid", "nodev")
# A read-only bind still lets a client connect(): the kernel refuses writes on a read-only
# mount only for regular files, directories and symlinks, not sockets.
_SOCKET_BIND = ("ro", "nosuid", "nodev")


class Launcher(StrEnum):
    OPENMPI_PRRTE = "openmpi-prrte"  # Open MPI 5 (prterun)
    OPENMPI_ORTE = "openmpi-orte"  # Open MPI <= 4 (orterun), PMIx server in the orted
    SLURM_PMIX = "slurm-pmix"  # srun --mpi=pmix*
    SLURM_PMI2 = "slurm-pmi2"  # srun --mpi=pmi2
    HYDRA = "mpich-hydra"  # MPICH's mpiexec
    SLURM = "slurm"  # srun --mpi=none: no PMI at all
    PMIX = "pmix"  # another PMIx server (PRRTE's prun, Flux)
    NONE = "none"


# How each launcher is recognised, first match wins. Open MPI comes first because an mpirun
# inside a Slurm allocation inherits SLURM_*; Slurm's PMI types before Hydra because Slurm's
# pmi2 also sets PMI_RANK.
_DETECT: tuple[tuple[Launcher, Callable[[Mapping[str, str]], bool]], ...] = (
    (Launcher.OPENMPI_PRRTE, lambda e: "OMPI_COMM_WORLD_SIZE" in e and "PRTE_LAUNCHED" in e),
    (Launcher.OPENMPI_ORTE, lambda e: "OMPI_COMM_WORLD_SIZE" in e),
    (Launcher.SLURM_PMIX, lambda e: "SLURM_STEP_ID" in e and e.get("SLURM_MPI_TYPE", "").startswith("pmix")),
    (Launcher.SLURM_PMI2, lambda e: "SLURM_STEP_ID" in e and e.get("SLURM_MPI_TYPE") == "pmi2"),
    (Launcher.HYDRA, lambda e: "PMI_RANK" in e and ("PMI_FD" in e or "PMI_PORT" in e)),
    (Launcher.SLURM, lambda e: "SLURM_STEP_ID" in e),
    (Launcher.PMIX, lambda e: "PMIX_NAMESPACE" in e),
)


# The MPI family (hpcbind.mpi.abi.Family) a launcher belongs to; srun and other PMIx servers
# start ranks of any MPI.
_LAUNCHER_FAMILY = {
    Launcher.OPENMPI_PRRTE: "openmpi",
    Launcher.OPENMPI_ORTE: "openmpi",
    Launcher.HYDRA: "mpich",
}


@dataclass(frozen=True, slots=True)
class _Traits:
    passes: tuple[str, ...]  # names, or prefixes ending in "_", that carry the rendezvous
    rank: str  # variables giving the rank, local rank and size ("" where it sets none)
    local_rank: str
    size: str


_OMPI_RANKS = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE")
_SLURM_RANKS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS")
_TRAITS = {
    Launcher.OPENMPI_PRRTE: _Traits(("OMPI_", "PRTE_", "PMIX_"), *_OMPI_RANKS),
    Launcher.OPENMPI_ORTE: _Traits(("OMPI_", "PMIX_"), *_OMPI_RANKS),
    Launcher.SLURM_PMIX: _Traits(("SLURM_", "SLURMD_", "PMIX_"), *_SLURM_RANKS),
    Launcher.SLURM_PMI2: _Traits(("SLURM_", "SLURMD_", "PMI_"), *_SLURM_RANKS),
    # Hydra's whole hand-over, as seen here: PMI_FD/PMI_RANK/PMI_SIZE, the local rank pair,
    # and the interface hint it sets for ch3
    Launcher.HYDRA: _Traits(("PMI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "MPIR_CVAR_CH3_INTERFACE_HOSTNAME"),
                            "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE"),
    Launcher.SLURM: _Traits(("SLURM_", "SLURMD_"), *_SLURM_RANKS),
    Launcher.PMIX: _Traits(("PMIX_",), "PMIX_RANK", "", ""),
}


@dataclass(frozen=True, slots=True)
class _DirVar:
    variable: str  # names a host directory the ranks must reach at the same path
    rule: str
    reason: str


# Written by the launcher before it forks the ranks. PMIX_SYSTEM_TMPDIR is left out: it holds
# the tool rendezvous (pmix.sys.<host>), which ranks do not use, and it is usually /tmp itself.
_RENDEZVOUS_DIRS = (
    _DirVar("PMIX_SERVER_TMPDIR", "pmix-server-tmpdir",
            "the PMIx server's rendezvous and shared-memory (dstore) files"),
    _DirVar("PMIX_DSTORE_21_BASE_PATH", "pmix-dstore", "PMIx ds21 shared-memory segments"),
    _DirVar("PMIX_DSTORE_ESH_BASE_PATH", "pmix-dstore", "PMIx ds12 shared-memory segments"),
    _DirVar("OMPI_MCA_orte_jobfam_session_dir", "orte-session-dir",
            "Open MPI <= 4's job session directory: the ranks' session files"),
)

# The PMIx server states the components it chose as PMIX_*_MODULE. Those are written for a
# client of the server's own build; the image's PMIx may be another release that lacks some of
# them (no munge psec, no ds21 gds). PMIX_MCA_<framework> is the component selection every PMIx
# release reads, so restating the server's choice there steers the image's client to what the
# server speaks, among the components it has. Sarus (enablePMIxv3Support) and enroot's
# 50-slurm-pmi.sh do the same, and leave a PMIX_MCA_* the user set alone.
_MODULE_TO_MCA = (
    ("PMIX_PTL_MODULE", "PMIX_MCA_ptl"),
    ("PMIX_SECURITY_MODE", "PMIX_MCA_psec"),
    ("PMIX_GDS_MODULE", "PMIX_MCA_gds"),
)

_O_CLOEXEC = 0o2000000  # in /proc/<pid>/fdinfo "flags:", octal (asm-generic/fcntl.h)

_URI_VAR = re.compile(r"^PMIX_SERVER_URI(\d)(\d?)$")


def discover(host: HostRoot, env: Mapping[str, str]) -> PlanPart:
    """Plan entries that let a container started by this process join its MPI launcher."""
    part = PlanPart()
    launcher = detect_launcher(env)
    part.facts.append(Fact(PROVIDER, "launcher", launcher.value))
    if launcher is Launcher.NONE:
        return part
    traits = _TRAITS[launcher]
    part.facts.extend(_rank_facts(env, traits))
    part.facts.extend(_pmix_facts(env))
    part.env.extend(_passes(env, launcher, traits))
    _add_rendezvous_dirs(part, host, env, launcher)
    munge = host.exists(MUNGE_SOCKET)
    _add_munge(part, host, env, munge)
    _add_mca(part, env, munge)
    if "PMI_FD" in env:
        part.facts.append(Fact(PROVIDER, "pmi-fd", env["PMI_FD"]))
        part.checks.extend(_pmi_fd_check(host, env["PMI_FD"]))
    return part


def detect_launcher(env: Mapping[str, str]) -> Launcher:
    return next((launcher for launcher, matches in _DETECT if matches(env)), Launcher.NONE)


def launcher_mpi(host: HostRoot, env: Mapping[str, str]) -> MpiLib | None:
    """The host MPI library of the launcher that started this process, for the image's MPI
    ABI check; None where the launcher does not tell (srun, no launcher)."""
    family = _LAUNCHER_FAMILY.get(detect_launcher(env))
    if family is None:
        return None
    # imported here: discover() runs on every rank's way to exec, and needs no ELF reader
    from hpcbind.host.loader import shipped_libraries
    from hpcbind.mpi.abi import find_mpi

    return next((lib for lib in find_mpi(host, shipped_libraries(host)) if lib.family == family), None)


def uri_versions(env: Mapping[str, str]) -> tuple[tuple[int, int], ...]:
    """The PMIx wire versions the server advertises: PMIX_SERVER_URI41 -> (4, 1), URI2 -> (2, 0)."""
    found = {(int(m.group(1)), int(m.group(2) or 0)) for name in env if (m := _URI_VAR.match(name))}
    return tuple(sorted(found))


def _passes(env: Mapping[str, str], launcher: Launcher, traits: _Traits) -> list[EnvOp]:
    # The value is the rank's own, read at exec time, so the ranks of a node can share a plan.
    names = sorted(n for n in env if any(n == p or (p.endswith("_") and n.startswith(p)) for p in traits.passes))
    return [EnvOp(n, EnvAction.PASS, "", PROVIDER, _pass_reason(n, launcher)) for n in names]


def _pass_reason(name: str, launcher: Launcher) -> str:
    if name == "PMI_FD":
        return (f"{launcher}: socket to the PMI server, inherited as an open descriptor that the "
                "runtime keeps open across exec")
    return f"{launcher} rendezvous: the rank needs it even under --cleanenv"


def _rank_facts(env: Mapping[str, str], traits: _Traits) -> list[Fact]:
    named = (("rank", traits.rank), ("local-rank", traits.local_rank), ("size", traits.size))
    return [Fact(PROVIDER, fact, env[var]) for fact, var in named if var and var in env]


def _pmix_facts(env: Mapping[str, str]) -> list[Fact]:
    facts = []
    if "PMIX_VERSION" in env:
        facts.append(Fact(PROVIDER, "pmix-version", env["PMIX_VERSION"]))
    versions = uri_versions(env)
    if versions:
        facts.append(Fact(PROVIDER, "pmix-uri-versions", ",".join(f"{a}.{b}" for a, b in versions)))
        uri = env[f"PMIX_SERVER_URI{versions[-1][0]}{versions[-1][1] or ''}"]
        facts.append(Fact(PROVIDER, "pmix-server", uri.partition(";")[2] or uri))
    if "PMIX_SECURITY_MODE" in env:
        facts.append(Fact(PROVIDER, "pmix-security-mode", env["PMIX_SECURITY_MODE"]))
    return facts


def _add_rendezvous_dirs(part: PlanPart, host: HostRoot, env: Mapping[str, str], launcher: Launcher) -> None:
    wanted = [(posixpath.normpath(env[d.variable]), d.variable, d.rule, d.reason)
              for d in _RENDEZVOUS_DIRS if env.get(d.variable, "").startswith("/")]
    if launcher is Launcher.SLURM_PMIX:
        wanted.extend(_spmix_appdir(part, host, env))
    bound: list[str] = []
    # outermost first, so a directory inside one already bound is recorded as covered
    for path, variable, rule, reason in sorted(wanted, key=lambda w: (w[0].count("/"), w[0])):
        outer = next((b for b in bound if path == b or path.startswith(b + "/")), None)
        if outer is not None:
            part.rejected.append(Rejected(path, PROVIDER, f"{variable}: covered by the bind of {outer}"))
        elif not host.is_dir(path):
            part.rejected.append(Rejected(path, PROVIDER, f"{variable}={path} does not exist on this host"))
            part.checks.append(Check(
                "pmi-rendezvous", Status.WARN,
                f"{variable}={path} does not exist: the launcher's server has gone or this is not the rank's host",
                PROVIDER, "compute the plan inside the job step, on the node that runs the ranks"))
        else:
            bound.append(path)
            part.mounts.append(Mount(path, path, "dir", PROVIDER, rule, f"{variable}: {reason}",
                                     _RW_BIND, Need.REQUIRED, Provenance(realpath=host.resolve(path))))


def _spmix_appdir(part: PlanPart, host: HostRoot, env: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """Slurm's PMIx client directory, <tmp>/spmix_appdir_[<uid>_]<job>.<step> (Slurm names it
    with the uid since 20.11; enroot's 50-slurm-pmi.sh tries both, in this order)."""
    job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
    if not job or not step:
        return []
    base = env.get("PMIX_SYSTEM_TMPDIR") or env.get("TMPDIR") or "/tmp"
    names = ([f"spmix_appdir_{env['SLURM_JOB_UID']}_{job}.{step}"] if "SLURM_JOB_UID" in env else []) \
        + [f"spmix_appdir_{job}.{step}"]
    candidates = [posixpath.join(base, n) for n in names]
    found = next((c for c in candidates if host.is_dir(c)), None)
    if found is None:
        part.rejected.append(Rejected(candidates[0], PROVIDER, "no Slurm PMIx client directory on this host"))
        return []
    return [(found, "SLURM_JOB_ID", "slurm-spmix-appdir", "Slurm's PMIx client directory (PMIX_TMPDIR of the job)")]


def _add_munge(part: PlanPart, host: HostRoot, env: Mapping[str, str], munge: bool) -> None:
    psec = env.get("PMIX_MCA_psec") or env.get("PMIX_SECURITY_MODE", "")
    if "munge" not in psec.split(","):
        return
    if munge:
        part.mounts.append(Mount(MUNGE_DIR, MUNGE_DIR, "socket", PROVIDER, "munge-socket",
                                 "PMIx authenticates clients with munge (psec=munge)",
                                 _SOCKET_BIND, Need.OPTIONAL, Provenance(realpath=host.resolve(MUNGE_DIR))))
        return
    part.rejected.append(Rejected(MUNGE_SOCKET, PROVIDER, f"psec {psec} lists munge, and munged is not running here"))
    if "PMIX_MCA_psec" in env:
        part.checks.append(Check("pmix-psec", Status.WARN, f"PMIX_MCA_psec={psec} asks for munge, and "
                                 f"{MUNGE_SOCKET} does not exist", PROVIDER, "set PMIX_MCA_psec=native"))


def _add_mca(part: PlanPart, env: Mapping[str, str], munge: bool) -> None:
    for variable, mca in _MODULE_TO_MCA:
        if variable not in env or mca in env:
            continue
        value = env[variable]
        if mca == "PMIX_MCA_psec" and not munge:
            # without munged, only the server's other security modes can work
            value = ",".join(m for m in value.split(",") if m != "munge")
            if not value:
                part.checks.append(Check(
                    "pmix-psec", Status.FAIL,
                    f"PMIX_SECURITY_MODE={env[variable]} needs munge, and {MUNGE_SOCKET} does not exist",
                    PROVIDER, "start munged on this node, or configure the PMIx server with psec native"))
                continue
        part.env.append(EnvOp(mca, EnvAction.SET, value, PROVIDER,
                              f"{variable}={env[variable]}: the server's choice as an MCA selection "
                              "the image's PMIx reads"))


def _pmi_fd_check(host: HostRoot, fd: str) -> list[Check]:
    if not fd.isdigit():
        return [Check("pmi-fd", Status.FAIL, f"PMI_FD={fd!r} is not a descriptor number", PROVIDER,
                      "start the ranks with the launcher itself (mpiexec or srun --mpi=pmi2)")]
    info = host.read_text(f"/proc/self/fdinfo/{fd}")
    if info is None and not host.listdir("/proc/self/fd"):
        return []  # a capture without this process's descriptors: nothing to compare
    if info is None:
        return [Check("pmi-fd", Status.FAIL,
                      f"PMI_FD={fd} is not open in this process: something between the launcher and hpcrun closed it",
                      PROVIDER, "start hpcrun directly from the launcher (mpiexec/srun ... hpcrun exec ...), "
                                "without a wrapper that closes descriptors")]
    flags = re.search(r"^flags:\s*([0-7]+)", info, re.MULTILINE)
    if flags and int(flags.group(1), 8) & _O_CLOEXEC:
        return [Check("pmi-fd", Status.WARN, f"PMI_FD={fd} is open but close-on-exec", PROVIDER,
                      "the runtime must pass it to the program (pass_fds) so it survives the exec")]
    return [Check("pmi-fd", Status.OK, f"PMI_FD={fd} is open and inherited across exec", PROVIDER)]
