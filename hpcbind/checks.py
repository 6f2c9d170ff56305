"""Preflight: will what the providers want to bind work inside this image? Answered before
anything runs, instead of as a loader or ``MPI_Init`` failure on 512 ranks.

``preflight`` compares the plan parts of the providers with the image's facts
(``hpcbind.image.contents``) and returns a part of its own: named checks, each with one line
of why and how to fix it, and ``rejected`` entries for host libraries the plan should leave
out because the image ships them (container-first). It reads nothing: the host side comes from
the parts' provenance and facts, the image side from ``ImageFacts``.

Checks, by name:
- ``container-first``: a host library whose soname the image already ships is not bound, so the
  image's own copy is the one loaded (Apptainer 1.5 searches its bound libraries after the
  image's, apptainer#3126/#3293). Kept anyway: libraries locked to the host's kernel driver
  (their provenance names the driver version they were matched on) and a host libibverbs the
  image's cannot replace (its providers need the host's private ABI).
- ``glibc-floor`` / ``libstdcxx-floor``: each host library's highest GLIBC_x.y / GLIBCXX_x.y.z
  need against what the image's libc.so.6 / libstdc++.so.6 define.
- ``architecture``: each host library's ELF machine against the image's.
- ``verbs-provider-abi``: the image's libibverbs against the host providers' needs.
- ``mpi-abi``: the host MPI against the image's (Sarus's rules, ``hpcbind.mpi.abi``).
- ``pmix-version``: the image's PMIx client against the launcher's server.
- ``rocm-version``: the image's ROCm against the host driver's (``hpcbind.gpu.rocm``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hpcbind.fabric.verbs import provider_abi_check
from hpcbind.gpu.rocm import PROVIDER as ROCM
from hpcbind.gpu.rocm import rocm_version_check
from hpcbind.host.elf import max_version
from hpcbind.image.contents import ImageFacts
from hpcbind.mpi.abi import MpiLib, mpi_abi_check, release_numbers
from hpcbind.mpi.host import PROVIDER as MPI_HOST
from hpcbind.plan import CONTAINER_LIBDIR, Check, EnvAction, Link, Mount, PlanPart, Rejected, Status

PROVIDER = "preflight"

# What a user leaves out to drop a provider's libraries, for the fixes.
_OPTIONS = (("gpu.nvidia", "--nv"), ("gpu.rocm", "--rocm"), ("fabric", "--ib"))

# An image can load a 32-bit host library only in its 32-bit programs: a warning, not a failure.
_COMPANION_32BIT = {("EM_X86_64", "EM_386"), ("EM_AARCH64", "EM_ARM"), ("EM_PPC64", "EM_PPC")}

_VERBS_PROVIDER = re.compile(r"^lib(.+)-rdmav\d+\.so$")  # rdma-core: lib<name>-rdmav<PABI>.so
_LIBIBVERBS = "libibverbs.so.1"


@dataclass(frozen=True, slots=True)
class _Floor:
    name: str  # the check
    prefix: str  # the symbol-version family
    library: str  # the image library that defines it
    label: str  # how people call it
    defined: Callable[[ImageFacts], tuple[int, ...] | None]


_FLOORS = (
    _Floor("glibc-floor", "GLIBC", "libc.so.6", "glibc", lambda image: image.glibc),
    _Floor("libstdcxx-floor", "GLIBCXX", "libstdc++.so.6", "libstdc++", lambda image: image.glibcxx),
)

# PMIx wire compatibility (reference/mpi-fabric-pmi.md §4, §6; openpmix docs/news): a client
# speaks the PMIX_SERVER_URI<NN> versions up to its own release; v1 clients have only the
# removed usock transport; before v3, only the releases named cross-version compatible (1.2.5,
# 2.0.3, 2.1.1) interoperate; from v3 on, releases interoperate across versions, except v5.0.0
# with v5.0.1 (their gds key indices differ; the v5.0.1 notes prescribe PMIX_MCA_gds=hash).
_PMIX_CROSS_VERSION = (3,)
_PMIX_GDS_CLASH = {(5, 0, 0), (5, 0, 1)}


def preflight(plan_parts: Sequence[PlanPart], image: ImageFacts | None, host_mpi: MpiLib | None,
              mpi_rule: str = "major") -> PlanPart:
    """Checks of the providers' parts against ``image`` (no image: nothing to check)."""
    part = PlanPart()
    if image is None:
        return part
    libs = _host_libraries(plan_parts)
    verbs = _verbs_check(libs, [ln for p in plan_parts for ln in p.links], image)
    kept = _container_first(part, libs, image, keep_libibverbs=verbs is not None and verbs.status is Status.FAIL)
    for floor in _FLOORS:
        part.checks.extend(_floor_checks(floor, kept, image))
    part.checks.extend(_architecture_checks(kept, image))
    part.checks.extend([_verbs_outcome(verbs, kept)] if verbs else [])
    part.checks.extend(_mpi_checks(host_mpi, image, mpi_rule))
    part.checks.extend(_pmix_checks(plan_parts, image))
    part.checks.extend(_rocm_checks(plan_parts, image))
    return part


def _host_libraries(parts: Sequence[PlanPart]) -> list[Mount]:
    return sorted((m for p in parts for m in p.mounts if m.kind == "lib"), key=lambda m: (m.provider, m.source))


def _soname(mount: Mount) -> str:
    return mount.provenance.soname or posixpath.basename(mount.source)


def _option(provider: str) -> str:
    return next((f"run without {opt}" for name, opt in _OPTIONS
                 if provider == name or provider.startswith(name + ".")), f"leave out {provider}")


def _drop(mount: Mount) -> str:
    """How to do without this library: its capability when a capability chose it."""
    kind, _, capability = mount.rule.partition(":")
    return f"drop the '{capability}' capability" if kind == "capability" and capability else _option(mount.provider)


# --- container-first ---------------------------------------------------------------------

# Providers whose libraries are meant to replace the image's copies (--mpi=host's bind model)
REPLACING_PROVIDERS = frozenset({"mpi.hostmpi"})


def _container_first(part: PlanPart, libs: list[Mount], image: ImageFacts, keep_libibverbs: bool) -> list[Mount]:
    """The libraries still bound; the others go to ``part.rejected``."""
    kept, shadowing, left_out = [], [], []
    for mount in libs:
        soname = _soname(mount)
        shipped = image.libraries.get(soname)
        added = mount.destination.startswith(CONTAINER_LIBDIR + "/")  # not a deliberate replacement
        if not (added and shipped) or mount.provider in REPLACING_PROVIDERS:
            kept.append(mount)
        elif mount.provenance.version:
            kept.append(mount)
            shadowing.append(f"{soname} (driver {mount.provenance.version}; the image's is {shipped})")
        elif soname == _LIBIBVERBS and keep_libibverbs:
            kept.append(mount)
        else:
            left_out.append(soname)
            part.rejected.append(Rejected(mount.source, mount.provider,
                                          f"container-first: the image ships {soname} at {shipped}",
                                          withdraws=True))
    if shadowing:
        part.checks.append(Check(
            "container-first", Status.WARN,
            "the image ships its own copy of host driver libraries, which the host's are bound ahead of: "
            + ", ".join(shadowing), PROVIDER,
            "remove the driver libraries from the image: they must match the host's kernel driver"))
    elif left_out:
        part.checks.append(Check("container-first", Status.OK,
                                 f"the image's own copies are used for {', '.join(sorted(left_out))}", PROVIDER))
    return kept


# --- glibc, libstdc++, architecture ---------------------------------------------------------


def _floor_checks(floor: _Floor, libs: list[Mount], image: ImageFacts) -> list[Check]:
    needs = [(m, need) for m in libs if (need := max_version(m.provenance.needs, floor.prefix))]
    if not needs:
        return []
    have = floor.defined(image)
    if have is None:
        names = ", ".join(sorted({_soname(m) for m, _ in needs}))
        return [Check(floor.name, Status.FAIL, f"the image has no {floor.library}, which {names} need",
                      PROVIDER, f"use an image with {floor.label}, or {_drop(needs[0][0])}")]
    failed = [Check(floor.name, Status.FAIL,
                    f"{_soname(m)} needs {floor.prefix}_{_dotted(need)}, image has {_dotted(have)}", PROVIDER,
                    f"use an image with {floor.label} >= {_dotted(need)} or {_drop(m)}")
              for m, need in needs if need > have]
    if failed:
        return failed
    highest = max(need for _, need in needs)
    return [Check(floor.name, Status.OK,
                  f"{len(needs)} host libraries need at most {floor.prefix}_{_dotted(highest)}, "
                  f"image has {_dotted(have)}", PROVIDER)]


def _architecture_checks(libs: list[Mount], image: ImageFacts) -> list[Check]:
    libs = [m for m in libs if m.provenance.machine]
    if not libs:
        return []
    if not image.machine:
        return [Check("architecture", Status.WARN, "the image has neither libc.so.6 nor /bin/sh to tell its "
                      "architecture from", PROVIDER, "check that the image is for this host's architecture")]
    checks = []
    for mount in libs:
        machine = mount.provenance.machine
        if machine == image.machine:
            continue
        if (image.machine, machine) in _COMPANION_32BIT:
            checks.append(Check("architecture", Status.WARN,
                                f"{_soname(mount)} is {machine}: only the image's 32-bit programs can load it",
                                PROVIDER, "install the image's 32-bit runtime if its programs need it"))
        else:
            checks.append(Check("architecture", Status.FAIL,
                                f"{_soname(mount)} is {machine}, the image is {image.machine}", PROVIDER,
                                f"use an image built for {machine}, or {_drop(mount)}"))
    if any(c.status is Status.FAIL for c in checks):
        return checks
    return [Check("architecture", Status.OK,
                  f"{len(libs)} host libraries match the image's {image.machine}", PROVIDER), *checks]


# --- verbs, MPI, PMIx, ROCm -----------------------------------------------------------------


def _names(mount: Mount, links: list[Link]) -> set[str]:
    """Every name a bound library answers to in the container: its file and the links to it."""
    here = posixpath.dirname(mount.destination)
    file = posixpath.basename(mount.destination)
    return {posixpath.basename(mount.source), file} | {
        posixpath.basename(ln.path) for ln in links
        if posixpath.dirname(ln.path) == here and ln.target in (file, mount.destination)}


def _verbs_check(libs: list[Mount], links: list[Link], image: ImageFacts) -> Check | None:
    """The image's libibverbs against the host providers bound (when it ships one, the
    container-first policy would have it load them). A provider is known by its rdma-core
    name, lib<name>-rdmav<N>.so: the file's, or a link's when the file is libmlx5.so.1."""
    providers = {match.group(1): tuple(v for v in m.provenance.needs if v.startswith("IBVERBS_"))
                 for m in libs for name in _names(m, links) if (match := _VERBS_PROVIDER.match(name))}
    if not providers or _LIBIBVERBS not in image.libraries:
        return None
    return provider_abi_check(image.ibverbs_defs, providers)


def _verbs_outcome(check: Check, kept: list[Mount]) -> Check:
    """A failure is only a warning when the host's own libibverbs is bound and can stand in."""
    if check.status is not Status.FAIL or not any(_soname(m) == _LIBIBVERBS for m in kept):
        return check
    return replace(check, status=Status.WARN, message=f"{check.message}; the host's {_LIBIBVERBS} is bound "
                   "ahead of it instead", fix="install the host's rdma-core version in the image to use its own")


def _mpi_checks(host: MpiLib | None, image: ImageFacts, rule: str) -> list[Check]:
    if host is None:
        return []
    if not image.mpi:
        return [Check("mpi-abi", Status.OK, f"the image ships no MPI library: the host's {host.describe()} "
                      "is the only one", PROVIDER)]
    same = [lib for lib in image.mpi if lib.family is host.family]
    return [mpi_abi_check(host, (same or list(image.mpi))[0], rule)]


def _pmix_checks(parts: Sequence[PlanPart], image: ImageFacts) -> list[Check]:
    facts = {f.name: f.value for p in parts for f in p.facts if f.provider == MPI_HOST}
    if "pmix-uri-versions" not in facts and "pmix-version" not in facts:
        return []  # no PMIx server launched us
    server = facts.get("pmix-version", "")
    wire = [tuple(int(n) for n in v.split(".")) for v in facts.get("pmix-uri-versions", "").split(",") if v]
    said = f"the launcher's PMIx server {server or '(version not given)'}"
    if image.pmix is None:
        if not image.mpi:
            return []
        return [_pmix(Status.WARN, f"{said}; the image ships no libpmix, so its MPI must carry its own PMIx client",
                      "install the PMIx client library in the image (Debian: libpmix2)")]
    client = image.pmix.release
    if client is None:
        return [_pmix(Status.WARN, f"{said}; the image's {image.pmix.soname} does not state its version",
                      "check that the image's PMIx is >= 3")]
    ours = f"{said}, the image's client {image.pmix.version}"
    if client[:1] < (2,):
        return [_pmix(Status.FAIL, f"{ours}: PMIx 1.x clients only speak the removed usock transport",
                      "use PMIx >= 3 in the image")]
    common = [w for w in wire if w <= client[:2]]
    if wire and not common:
        offered = ", ".join(".".join(map(str, w)) for w in wire)
        return [_pmix(Status.FAIL, f"{ours}: the client speaks none of the server's wire versions ({offered})",
                      "use a PMIx in the image at least as new as the oldest version the server offers")]
    host = release_numbers(server)
    if client[:1] < _PMIX_CROSS_VERSION or (host is not None and host[:1] < _PMIX_CROSS_VERSION):
        return [_pmix(Status.WARN, f"{ours}: before v3, PMIx interoperates across versions only between "
                      "the releases made for it (1.2.5, 2.0.3, 2.1.1)", "use PMIx >= 3 on both sides")]
    if host is not None and {host[:3], client[:3]} == _PMIX_GDS_CLASH and not _gds_hash(parts):
        return [_pmix(Status.WARN, f"{ours}: v5.0.0 and v5.0.1 disagree on shared-memory key indices",
                      "set PMIX_MCA_gds=hash (openpmix v5.0.1 release notes)")]
    via = f", common wire version {'.'.join(map(str, common[-1]))}" if common else ""
    return [_pmix(Status.OK, f"{ours}: cross-version compatible (PMIx >= 3){via}")]


def _pmix(status: Status, message: str, fix: str = "") -> Check:
    return Check("pmix-version", status, message, PROVIDER, fix)


def _gds_hash(parts: Sequence[PlanPart]) -> bool:
    return any(e.name == "PMIX_MCA_gds" and e.action is EnvAction.SET and e.value == "hash"
               for p in parts for e in p.env)


def _rocm_checks(parts: Sequence[PlanPart], image: ImageFacts) -> list[Check]:
    facts = {f.name: f.value for p in parts for f in p.facts if f.provider == ROCM}
    if not facts or not image.rocm_version:
        return []  # no --rocm, or an image without ROCm: nothing to compare
    return [rocm_version_check(facts.get("rocm-version", ""), image.rocm_version)]


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))

