"""The bind plan: the only contract between discovery and the runtime.

Discovery providers (``gpu.nvidia``, ``fabric.verbs``, ``mpi.pmix``, ...) each return a
``PlanPart``; ``BindPlan.merge`` puts the parts in one deterministic order, so two plans of the
same host are byte-identical and two plans of different hosts diff line by line. Every entry
names the provider and the rule that chose it and says why; what was considered and not taken
goes to ``rejected`` with its reason. The runtime reads ``mounts``, ``devices``, ``env`` and
``links`` and nothing else; ``checks``, ``rejected`` and ``facts`` are for people and for
``hpcrun plan --explain/--diff``.

A plan is frozen (pip's lesson: a plan object that also records its own application rots);
what the runtime did with it is logged separately.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1

# Where host files land inside the container. A private directory that no image ships, so a
# bound driver library never shadows or overwrites one of the image's files; the loader finds
# it through LD_LIBRARY_PATH (appended: container-first policy, as Apptainer 1.5).
CONTAINER_LIBDIR = "/.hpcbind/lib"
CONTAINER_BINDIR = "/.hpcbind/bin"

RO_BIND = ("ro", "nosuid", "nodev")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class EnvAction(StrEnum):
    SET = "set"
    PREPEND = "prepend"  # to a path list, with ':'
    APPEND = "append"
    PASS = "pass"  # host value passes through even under --cleanenv
    UNSET = "unset"


class Need(StrEnum):
    REQUIRED = "required"  # missing source at apply time is an error
    OPTIONAL = "optional"  # missing source at apply time is skipped (sockets that come and go)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What discovery learned about a mount's source file."""

    realpath: str = ""
    soname: str = ""
    elf_class: str = ""  # "ELFCLASS64"
    machine: str = ""  # "EM_X86_64"
    needs: tuple[str, ...] = ()  # symbol versions required: "GLIBC_2.34", "GLIBCXX_3.4.29"
    version: str = ""  # e.g. the driver version a library was matched on


@dataclass(frozen=True, slots=True)
class Mount:
    source: str  # host path
    destination: str  # container path
    kind: str  # lib, bin, config, socket, dir, firmware, file
    provider: str  # "gpu.nvidia"
    rule: str  # short name of the rule that chose it: "driver-suffix", "capability:compute"
    reason: str = ""
    options: tuple[str, ...] = RO_BIND
    need: Need = Need.REQUIRED
    provenance: Provenance = field(default_factory=Provenance)


@dataclass(frozen=True, slots=True)
class Device:
    path: str  # container path
    type: str  # "c" or "b"
    major: int
    minor: int
    provider: str
    rule: str
    reason: str = ""
    host_path: str = ""  # when it differs from path
    permissions: str = "rwm"  # CDI semantics

    @property
    def source(self) -> str:
        return self.host_path or self.path


@dataclass(frozen=True, slots=True)
class EnvOp:
    name: str
    action: EnvAction
    value: str
    provider: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Link:
    path: str  # container path of the symlink
    target: str
    provider: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # "glibc-floor", "verbs-provider-abi", "mpi-abi"
    status: Status
    message: str
    provider: str = ""
    fix: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    candidate: str
    provider: str
    reason: str
    # True when a later stage (preflight) takes back a mount a provider proposed: the merge
    # drops that provider's mount of ``candidate`` and the links to it
    withdraws: bool = False


@dataclass(frozen=True, slots=True)
class Fact:
    """Something discovery found about the host, kept for explanation and cache keys."""

    provider: str
    name: str  # "driver-version", "gpu", "hca"
    value: str


@dataclass
class PlanPart:
    """What one provider contributes; mutable while the provider builds it."""

    mounts: list[Mount] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    env: list[EnvOp] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def extend(self, other: PlanPart) -> None:
        for f in fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))


@dataclass(frozen=True)
class BindPlan:
    request: tuple[str, ...] = ()  # what was asked: ("nv", "ib"), "device:nvidia.com/gpu=0"
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    env: tuple[EnvOp, ...] = ()
    links: tuple[Link, ...] = ()
    checks: tuple[Check, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    facts: tuple[Fact, ...] = ()
    schema: int = SCHEMA_VERSION

    @classmethod
    def merge(cls, request: tuple[str, ...], parts: list[PlanPart]) -> BindPlan:
        """One plan from the providers' parts, in a deterministic order.

        Mounts and devices are keyed by container path: when two providers want the same
        destination the first (by provider name) keeps it and the other is recorded as
        rejected, so the runtime never mounts twice onto one path.
        """
        whole = PlanPart()
        for part in parts:
            whole.extend(part)
        withdrawn = {(r.provider, r.candidate) for r in whole.rejected if r.withdraws}
        dropped = {m.destination for m in whole.mounts if (m.provider, m.source) in withdrawn}
        whole.mounts = [m for m in whole.mounts if m.destination not in dropped]
        whole.links = [ln for ln in whole.links
                       if _link_target(ln) not in dropped and ln.path not in dropped]
        mounts, dup_mounts = _unique(sorted(whole.mounts, key=_mount_key), lambda m: m.destination)
        devices, dup_devices = _unique(sorted(whole.devices, key=_device_key), lambda d: d.path)
        rejected = whole.rejected + [
            Rejected(m.source, m.provider, f"{m.destination} is already bound by another provider")
            for m in dup_mounts
        ] + [
            Rejected(d.source, d.provider, f"{d.path} is already bound by another provider")
            for d in dup_devices
        ]
        return cls(
            request=tuple(sorted(set(request))),
            mounts=tuple(mounts),
            devices=tuple(devices),
            # env order matters for prepend/append: providers in name order, each in its own
            # order; the same operation from two providers (LD_LIBRARY_PATH += the private lib
            # dir) is kept once, from the first
            env=tuple(_first_of_each(sorted(whole.env, key=lambda e: e.provider),
                                     lambda e: (e.name, e.action, e.value))),
            links=tuple(sorted(set(whole.links), key=lambda ln: (ln.path, ln.provider))),
            checks=tuple(sorted(set(whole.checks), key=lambda c: (c.provider, c.name, c.message))),
            rejected=tuple(sorted(set(rejected), key=lambda r: (r.provider, r.candidate, r.reason))),
            facts=tuple(sorted(set(whole.facts), key=lambda f: (f.provider, f.name, f.value))),
        )

    # --- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, **{f.name: _plain(getattr(self, f.name))
                                          for f in fields(self) if f.name != "schema"}}

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_json(self) -> str:
        """The document people and machines read: pretty, with its digest."""
        return json.dumps({**self.to_dict(), "digest": self.digest}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BindPlan:
        if data.get("schema") != SCHEMA_VERSION:
            from hpcbind.errors import HpcbindError

            raise HpcbindError(
                f"plan schema {data.get('schema')!r} is not {SCHEMA_VERSION}",
                "recompute the plan with this hpcrun (hpcrun plan --json)",
            )
        return cls(
            request=tuple(data.get("request", ())),
            mounts=tuple(_mount(m) for m in data.get("mounts", ())),
            devices=tuple(Device(**d) for d in data.get("devices", ())),
            env=tuple(EnvOp(**{**e, "action": EnvAction(e["action"])}) for e in data.get("env", ())),
            links=tuple(Link(**ln) for ln in data.get("links", ())),
            checks=tuple(Check(**{**c, "status": Status(c["status"])}) for c in data.get("checks", ())),
            rejected=tuple(Rejected(**r) for r in data.get("rejected", ())),
            facts=tuple(Fact(**f) for f in data.get("facts", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> BindPlan:
        data = json.loads(text)
        data.pop("digest", None)
        return cls.from_dict(data)

    def as_part(self) -> PlanPart:
        """The plan's entries as one part, to merge with more (``BindPlan.merge``)."""
        return PlanPart(**{f.name: list(getattr(self, f.name)) for f in fields(PlanPart)})

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.FAIL)


def _link_target(link: Link) -> str:
    """The container path a link points at (targets may be relative to the link's directory)."""
    import posixpath

    return posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))


def _mount_key(m: Mount) -> tuple[str, str, str]:
    return (m.destination, m.provider, m.source)


def _device_key(d: Device) -> tuple[str, str]:
    return (d.path, d.provider)


def _first_of_each(items: list, key) -> list:
    return _unique(items, key)[0]


def _unique(items: list, key) -> tuple[list, list]:
    seen: set[str] = set()
    kept, dropped = [], []
    for item in items:
        (dropped if key(item) in seen else kept).append(item)
        seen.add(key(item))
    return kept, dropped


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in asdict(value).items()}
    return value


def _mount(data: dict[str, Any]) -> Mount:
    prov = data.get("provenance") or {}
    return Mount(**{
        **data,
        "options": tuple(data.get("options", RO_BIND)),
        "need": Need(data.get("need", Need.REQUIRED)),
        "provenance": Provenance(**{**prov, "needs": tuple(prov.get("needs", ()))}),
    })
