"""Composing a bind plan: run the providers a request names, add CDI devices and image checks, merge.

``make_plan`` is the whole of discovery as the CLI and the runtime see it. Providers are a
table (``PROVIDERS``), each imported only when asked for: ``hpcrun exec --ib`` pays for no
GPU probe. A provider whose reading of the host fails with an ``OSError`` it did not expect
does not crash the plan: the failure becomes a failed check naming the provider, because a
probe's failure is a fact about the host that belongs in the plan (archspec warns and moves
on; we also say so where the user looks).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.mpi.rankenv import under_launcher
from hpcbind.plan import BindPlan, Check, PlanPart, Status

if TYPE_CHECKING:
    from hpcbind.image.contents import ImageFacts


@dataclass(frozen=True, slots=True)
class Provider:
    name: str  # what a failure of it is recorded under ("fabric": its entries say "fabric.verbs" etc.)
    module: str  # has ``discover(host, env) -> PlanPart``

    def discover(self, host: HostRoot, env: Mapping[str, str]) -> PlanPart:
        return importlib.import_module(self.module).discover(host, env)


# Request flag -> provider. A flag here is a field of Request (a test holds the two together).
PROVIDERS: dict[str, Provider] = {
    "nv": Provider("gpu.nvidia", "hpcbind.gpu.nvidia"),
    "rocm": Provider("gpu.rocm", "hpcbind.gpu.rocm"),
    "ib": Provider("fabric", "hpcbind.fabric"),
}
# Not asked for by a flag: it runs whenever a launcher (mpirun, srun) started this process.
MPI_HOST = Provider("mpi.host", "hpcbind.mpi.host")

PROVIDER_FAILED = "{provider} could not read the host: {error} ({path})"
PROVIDER_FAILED_FIX = ("check that the path is readable; if it is, capture the host with "
                       "'hpcrun plan --capture host.tar.gz' and report the bug with it")
PLAN_FIX = "give a file written by 'hpcrun plan --json'"


@dataclass(frozen=True, slots=True)
class Request:
    """What the user asked for: flags and CDI device names (``nvidia.com/gpu=0``)."""

    nv: bool = False
    rocm: bool = False
    ib: bool = False
    devices: tuple[str, ...] = ()
    mpi_host: bool = False  # --mpi=host: not a PROVIDERS flag, it needs the image's facts

    @property
    def names(self) -> tuple[str, ...]:
        """The request as the plan records it: ``("ib", "nv", "device:nvidia.com/gpu=0")``."""
        return (*(flag for flag in PROVIDERS if getattr(self, flag)),
                *(f"device:{d}" for d in self.devices), *(("mpi:host",) if self.mpi_host else ()))


def run_provider(provider: Provider, host: HostRoot, env: Mapping[str, str]) -> PlanPart:
    try:
        return provider.discover(host, env)
    except OSError as err:
        message = PROVIDER_FAILED.format(provider=provider.name, error=err.strerror or err,
                                         path=_host_path(host, err.filename))
        return PlanPart(checks=[Check("discovery", Status.FAIL, message, provider.name, PROVIDER_FAILED_FIX)])


def _host_path(host: HostRoot, filename: object) -> str:
    """The host path of a file under ``host``'s root: a plan must not depend on where a capture lies."""
    if not filename:
        return "no path given"
    real = Path(os.fsdecode(filename))
    return "/" + real.relative_to(host.root).as_posix() if real.is_relative_to(host.root) else str(real)


def read_image_facts(image: Path) -> ImageFacts:
    """What preflight needs to know of an image: a sandbox directory, a squashfs, or a SIF
    (of any architecture: the plan's architecture check says whether it can run here)."""
    from hpcbind.image import contents
    from hpcbind.image.source import locate

    return contents.located_image_facts(locate(str(image), check_arch=False))


def make_plan(request: Request, host: HostRoot = HostRoot(), env: Mapping[str, str] = os.environ,
              image: Path | None = None) -> BindPlan:
    """The bind plan for ``request`` on ``host``; every step reads the host only through ``host``."""
    parts = [run_provider(PROVIDERS[flag], host, env) for flag in PROVIDERS if getattr(request, flag)]
    if under_launcher(env):
        parts.append(run_provider(MPI_HOST, host, env))
    if request.devices:
        from hpcbind import cdi  # YAML and the spec model load only for --device

        parts.append(cdi.cdi_part(cdi.load_cdi_specs(host), request.devices, host))
    facts = read_image_facts(image) if image is not None else None
    if request.mpi_host:
        if facts is None:
            raise HpcbindError("--mpi=host needs the image, to check its MPI against the host's",
                               "give the image (hpcrun plan --mpi=host IMAGE)")
        from hpcbind.mpi import hostmpi

        parts.append(hostmpi.discover(host, env, facts.mpi))
    if facts is not None:
        from hpcbind import checks
        from hpcbind.mpi.host import launcher_mpi

        parts.append(checks.preflight(parts, facts, launcher_mpi(host, env)))
    return BindPlan.merge(request.names, parts)


def load_plan(path: Path) -> BindPlan:
    """A plan saved by ``hpcrun plan --json``, refused unless it still matches its digest."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise HpcbindError(f"can't read plan {path}: {err.strerror}", PLAN_FIX) from None
    except ValueError as err:
        raise HpcbindError(f"plan {path} is not JSON: {err}", PLAN_FIX) from None
    if not isinstance(data, dict):
        raise HpcbindError(f"plan {path} is not a JSON object", PLAN_FIX)
    body = {k: v for k, v in data.items() if k != "digest"}
    # The canonical form of BindPlan.canonical_json (sorted keys, no blanks), hashed straight
    # from the document: a fifth of the cost of rebuilding it from the dataclasses, and it
    # refuses an edited document before anything is built from it.
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    if data.get("digest") != "sha256:" + hashlib.sha256(canonical.encode()).hexdigest():
        raise HpcbindError(f"plan {path} does not match its digest {data.get('digest')!r}",
                           "it was edited or cut short: write it again with 'hpcrun plan --json'")
    try:
        return BindPlan.from_dict(body)
    except (TypeError, ValueError, KeyError) as err:  # a field missing, unknown, or of the wrong kind
        raise HpcbindError(f"plan {path} is not a bind plan: {err}", PLAN_FIX) from None
