"""CDI (Container Device Interface) specs: a bind plan out as a spec, and specs in as plan entries.

Out: ``to_cdi`` writes a plan as one CDI device whose ``containerEdits`` are the plan's device
nodes, mounts and ``set`` env vars, at the lowest ``cdiVersion`` the emitted fields need, so
the oldest consumer that can read it does (podman 4.1 reads 0.3.0). What CDI cannot say
(prepend/append/unset env ops, the symlinks of the private lib dir) is not dropped silently: it
goes into ``hpcbind.org/...`` annotations, which lifts the version to 0.6.0 only when present.

In: ``load_cdi_specs`` reads ``/etc/cdi`` and ``/var/run/cdi`` through the host root and
rejects what the reference parser (cncf-tags/container-device-interface, ``specs-go``)
rejects: unknown fields, unknown versions, features newer than the stated ``cdiVersion``,
malformed kinds and device names. ``cdi_part`` turns requested devices (``vendor/class=name``,
or ``=all``) into plan entries. Hooks are never run, as in Apptainer: they are recorded as
rejected with the reason.

The spec model below mirrors ``specs-go/config.go`` at spec 1.1.0, one frozen dataclass per
object; the JSON names are the camelCase of the field names unless a field says otherwise.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.plan import BindPlan, Device, EnvAction, EnvOp, Fact, Mount, PlanPart, Rejected

PROVIDER = "cdi"
DEFAULT_DIRS = ("/etc/cdi", "/var/run/cdi")  # later directories win, as in the reference cache
SPEC_SUFFIXES = (".json", ".yaml")  # the reference reads these two and nothing else
ANNOTATION_ENV = "hpcbind.org/env"
ANNOTATION_LINKS = "hpcbind.org/links"

# Released spec versions, oldest first. 0.1.0 and 0.2.0 predate the current format: the
# reference knows them but every spec needs at least 0.3.0, so they are refused.
VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")

# Sentences for plan entries made from a spec; tests compare them verbatim.
REASON_DEVICE = "requested CDI device {qualified} (spec {origin})"
REASON_SPEC_WIDE = "spec-wide edit of {kind}, applied because {qualified} was requested (spec {origin})"
REASON_HOOK = ("CDI hooks are not run, as in Apptainer: hpcbind never executes a program named by a "
               "spec ({qualified}, spec {origin})")
REASON_UNSUPPORTED = "{what} is not supported by the hpcbind runtime ({qualified}, spec {origin})"
REASON_NO_NUMBERS = ("no major:minor for {path}: none in the spec, none in /sys/dev, and {source} is not "
                     "a device node on the host ({qualified}, spec {origin})")
REASON_SHADOWED = "{qualified} in spec {origin} is shadowed by the same device in spec {winner}"
FIX_SPEC = "correct or remove that file (hpcbind reads CDI specs as the reference parser does)"


# --- the spec model (specs-go/config.go) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int | None = None  # None: not given, the consumer takes it from the host
    minor: int | None = None
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class CdiMount:
    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str = ""


@dataclass(frozen=True, slots=True)
class Hook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class IntelRdt:
    clos_id: str = field(default="", metadata={"json": "closID"})
    l3_cache_schema: str = ""
    mem_bw_schema: str = ""
    schemata: tuple[str, ...] = ()
    enable_monitoring: bool = False
    enable_cmt: bool = field(default=False, metadata={"json": "enableCMT"})  # before 1.1.0 only
    enable_mbm: bool = field(default=False, metadata={"json": "enableMBM"})  # before 1.1.0 only


@dataclass(frozen=True, slots=True)
class NetDevice:
    host_interface_name: str
    name: str


@dataclass(frozen=True, slots=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    hooks: tuple[Hook, ...] = ()
    mounts: tuple[CdiMount, ...] = ()
    intel_rdt: IntelRdt | None = None
    additional_gids: tuple[int, ...] = ()
    net_devices: tuple[NetDevice, ...] = ()


@dataclass(frozen=True, slots=True)
class CdiDevice:
    name: str
    container_edits: ContainerEdits
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CdiSpec:
    cdi_version: str
    kind: str
    devices: tuple[CdiDevice, ...]
    container_edits: ContainerEdits = ContainerEdits()
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def all_edits(self) -> tuple[ContainerEdits, ...]:
        return (self.container_edits, *(d.container_edits for d in self.devices))


# --- versions (specs-go/version.go) -----------------------------------------------------------


def _uses_v110(spec: CdiSpec) -> bool:
    return any(e.net_devices or (e.intel_rdt and (e.intel_rdt.schemata or e.intel_rdt.enable_monitoring))
               for e in spec.all_edits)


def _uses_v070(spec: CdiSpec) -> bool:
    return any(e.intel_rdt is not None or e.additional_gids for e in spec.all_edits)


def _uses_v060(spec: CdiSpec) -> bool:
    return bool(spec.annotations) or any(d.annotations for d in spec.devices) or "." in _kind_class(spec.kind)


def _uses_v050(spec: CdiSpec) -> bool:
    return (any(d.name[:1].isdigit() for d in spec.devices)
            or any(n.host_path for e in spec.all_edits for n in e.device_nodes))


def _uses_v040(spec: CdiSpec) -> bool:
    return any(m.type for e in spec.all_edits for m in e.mounts)


# Newest first: the first feature a spec uses sets its minimum version.
REQUIREMENTS: tuple[tuple[str, str, Callable[[CdiSpec], bool]], ...] = (
    ("1.1.0", "netDevices or intelRdt.schemata/enableMonitoring", _uses_v110),
    ("0.7.0", "intelRdt or additionalGids", _uses_v070),
    ("0.6.0", "annotations or a dot in the class", _uses_v060),
    ("0.5.0", "a deviceNode hostPath or a device name starting with a digit", _uses_v050),
    ("0.4.0", "a mount type", _uses_v040),
)


def required_version(spec: CdiSpec) -> tuple[str, str]:
    """The lowest ``cdiVersion`` that can carry ``spec``, and the feature that needs it."""
    return next(((version, what) for version, what, uses in REQUIREMENTS if uses(spec)), (VERSIONS[0], ""))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# --- names (pkg/parser/parser.go) -------------------------------------------------------------

_VENDOR_OR_CLASS = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")


def _kind_class(kind: str) -> str:
    return kind.partition("/")[2]


def kind_problem(kind: str) -> str:
    """Why ``kind`` is not a valid ``vendor/class``, or "" when it is."""
    vendor, slash, cls = kind.partition("/")
    if not slash or not _VENDOR_OR_CLASS.fullmatch(vendor) or not _VENDOR_OR_CLASS.fullmatch(cls):
        return f"kind {kind!r} is not vendor/class (letters, digits, '_', '-', '.'; starting with a letter)"
    return ""


def name_problem(name: str) -> str:
    if not _DEVICE_NAME.fullmatch(name):
        return f"device name {name!r} must be letters, digits, '_', '-', '.', ':' starting and ending alphanumeric"
    return ""


def parse_qualified(device: str) -> tuple[str, str]:
    """``vendor/class=name`` as (kind, name); HpcbindError when it is not one."""
    kind, eq, name = device.partition("=")
    problem = "missing '='" if not eq else kind_problem(kind) or name_problem(name)
    if problem:
        raise HpcbindError(f"--device {device!r} is not a CDI device name: {problem}",
                           "write it as vendor.com/class=name, e.g. nvidia.com/gpu=0 or nvidia.com/gpu=all")
    return kind, name


# --- strict decoding and omitempty encoding ------------------------------------------------------


class _Invalid(Exception):
    """A spec problem at a JSON path; turned into an HpcbindError naming the file."""


def _json_name(f: Field) -> str:
    head, *rest = f.name.split("_")
    return f.metadata.get("json") or head + "".join(p.capitalize() for p in rest)


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _decode(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from parsed JSON/YAML, refusing unknown and missing fields."""
    if not isinstance(data, dict):
        raise _Invalid(f"{where or 'the document'} must be a mapping")
    known = {_json_name(f): f for f in fields(cls)}
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise _Invalid(f"unknown field {where + '.' if where else ''}{unknown[0]}")
    missing = [name for name, f in known.items() if _required(f) and name not in data]
    if missing:
        raise _Invalid(f"{where + '.' if where else ''}{missing[0]} is required")
    hints = get_type_hints(cls)
    return cls(**{f.name: _value(hints[f.name], data[name], f"{where + '.' if where else ''}{name}")
                  for name, f in known.items() if name in data})


def _value(tp: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(tp, UnionType):  # "X | None": null is the absent value
        return None if value is None else _value(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if value is None:  # YAML "env:" with nothing under it, as the reference reads it
            return ()
        if not isinstance(value, list):
            raise _Invalid(f"{where} must be a list")
        return tuple(_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            raise _Invalid(f"{where} must map strings to strings")
        return dict(value)
    if is_dataclass(tp):
        return _decode(tp, value, where)
    # bool is an int to Python, not to JSON: "major: true" is refused like the reference does
    if type(value) is not tp:
        raise _Invalid(f"{where} must be {_TYPE_WORDS[tp]}, not {value!r}")
    return value


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false"}


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _encode(obj: Any) -> dict[str, Any]:
    """JSON for a spec object: required fields always, others only when set (as Go's omitempty)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _required(f) and value == _default(f):
            continue
        if is_dataclass(value):
            value = _encode(value)
        elif isinstance(value, tuple):
            value = [_encode(v) if is_dataclass(v) else v for v in value]
        elif isinstance(value, Mapping):
            value = dict(value)
        out[_json_name(f)] = value
    return out


# --- validation --------------------------------------------------------------------------------

_NODE_TYPES = ("b", "c", "u", "p")


def _problems(spec: CdiSpec) -> str:
    """The first reason the reference parser would refuse ``spec``, or ""."""
    if spec.cdi_version not in VERSIONS:
        return f"cdiVersion {spec.cdi_version!r} is not a released version ({', '.join(VERSIONS)})"
    needed, feature = required_version(spec)
    if _version_key(needed) > _version_key(spec.cdi_version):
        return f"uses {feature}, which needs cdiVersion {needed}, but says {spec.cdi_version}"
    if _version_key(spec.cdi_version) >= _version_key("1.1.0") and any(
            e.intel_rdt and (e.intel_rdt.enable_cmt or e.intel_rdt.enable_mbm) for e in spec.all_edits):
        return f"intelRdt.enableCMT/enableMBM are not valid in cdiVersion {spec.cdi_version}"
    if not spec.devices:
        return "no devices"
    names = [d.name for d in spec.devices]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    checks = (
        kind_problem(spec.kind),
        next(filter(None, map(name_problem, names)), ""),
        f"device {duplicate!r} is defined twice" if duplicate else "",
        next((f"env entry {e!r} is not NAME=VALUE" for ed in spec.all_edits for e in ed.env if "=" not in e), ""),
        next((f"deviceNode {n.path!r} has type {n.type!r}, not one of {'/'.join(_NODE_TYPES)}"
              for ed in spec.all_edits for n in ed.device_nodes if n.type and n.type not in _NODE_TYPES), ""),
        next((f"deviceNode {n.path!r} has permissions {n.permissions!r}, not a subset of 'rwm'"
              for ed in spec.all_edits for n in ed.device_nodes if set(n.permissions) - set("rwm")), ""),
    )
    return next(filter(None, checks), "")


def parse_spec(text: str, origin: str) -> CdiSpec:
    """A validated spec from the text of file ``origin`` (JSON for ``.json``, else YAML)."""
    try:
        data = json.loads(text) if origin.endswith(".json") else yaml.safe_load(text)
        spec = _decode(CdiSpec, data, "")
    except (ValueError, yaml.YAMLError) as err:  # json.JSONDecodeError is a ValueError
        raise HpcbindError(f"CDI spec {origin}: not valid {'JSON' if origin.endswith('.json') else 'YAML'}: "
                           f"{' '.join(str(err).split())}", FIX_SPEC) from None
    except _Invalid as err:
        raise HpcbindError(f"CDI spec {origin}: {err}", FIX_SPEC) from None
    problem = _problems(spec)
    if problem:
        raise HpcbindError(f"CDI spec {origin}: {problem}", FIX_SPEC)
    return spec


def load_cdi_specs(host: HostRoot, dirs: Sequence[str] = DEFAULT_DIRS) -> dict[str, CdiSpec]:
    """Every spec in ``dirs`` keyed by its host path, in priority order (the last wins)."""
    return {path: parse_spec(host.read_text(path) or "", path)
            for d in dirs for name in host.listdir(d) if name.endswith(SPEC_SUFFIXES)
            for path in [posixpath.join(d, name)]}


# --- a plan as a spec ------------------------------------------------------------------------------


def to_cdi(plan: BindPlan, kind: str = "hpcbind.org/host", name: str = "plan") -> dict[str, Any]:
    """The plan as a CDI spec (a dict ready for ``json.dumps``) with one device, ``kind=name``."""
    problem = kind_problem(kind) or name_problem(name)
    if problem:
        raise HpcbindError(f"can't write the plan as CDI: {problem}", "pick a kind like vendor.com/class")
    inexpressible_env = [[e.name, str(e.action), e.value] for e in plan.env if e.action is not EnvAction.SET]
    annotations = {
        **({ANNOTATION_ENV: json.dumps(inexpressible_env)} if inexpressible_env else {}),
        **({ANNOTATION_LINKS: json.dumps([[ln.path, ln.target] for ln in plan.links])} if plan.links else {}),
    }
    edits = ContainerEdits(
        env=tuple(f"{e.name}={e.value}" for e in plan.env if e.action is EnvAction.SET),
        device_nodes=tuple(
            DeviceNode(path=d.path, host_path=d.host_path if d.host_path != d.path else "",
                       type=d.type, major=d.major, minor=d.minor, permissions=d.permissions)
            for d in plan.devices),
        # "bind" in the options, not type "bind": a mount type would need 0.4.0 (nvidia-ctk does the same)
        mounts=tuple(CdiMount(host_path=m.source, container_path=m.destination, options=(*m.options, "bind"))
                     for m in plan.mounts),
    )
    spec = CdiSpec(cdi_version=VERSIONS[0], kind=kind,
                   devices=(CdiDevice(name=name, container_edits=edits, annotations=annotations),))
    return _encode(replace(spec, cdi_version=required_version(spec)[0]))


# --- specs as plan entries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    origin: str  # host path of the spec file
    spec: CdiSpec
    device: CdiDevice

    @property
    def qualified(self) -> str:
        return f"{self.spec.kind}={self.device.name}"


def _index(specs: Mapping[str, CdiSpec]) -> dict[str, list[_Source]]:
    """Qualified device name -> every definition of it, in priority order (the last wins)."""
    index: dict[str, list[_Source]] = {}
    for origin, spec in specs.items():
        for device in spec.devices:
            source = _Source(origin, spec, device)
            index.setdefault(source.qualified, []).append(source)
    return index


def _resolve(index: Mapping[str, list[_Source]], requested: str) -> list[_Source]:
    kind, name = parse_qualified(requested)
    if requested in index:
        return [index[requested][-1]]
    if name == "all":  # no explicit "all" device in the spec: every device of the kind
        matches = [sources[-1] for q, sources in index.items() if q.startswith(kind + "=")]
        if matches:
            return matches
    available = ", ".join(sorted(index)) or f"none (no specs in {' or '.join(DEFAULT_DIRS)})"
    raise HpcbindError(f"unknown CDI device {requested!r}", f"available: {available}")


def sysfs_device_numbers(host: HostRoot) -> dict[str, tuple[str, int, int]]:
    """Device node path -> (type, major, minor) from ``/sys/dev/{char,block}/M:N/uevent`` DEVNAME."""
    numbers: dict[str, tuple[str, int, int]] = {}
    for kind, directory in (("c", "/sys/dev/char"), ("b", "/sys/dev/block")):
        for majmin in host.listdir(directory):
            uevent = host.read_text(f"{directory}/{majmin}/uevent") or ""
            devname = next((line[8:] for line in uevent.splitlines() if line.startswith("DEVNAME=")), "")
            major, _, minor = majmin.partition(":")
            if devname and major.isdigit() and minor.isdigit():
                numbers["/dev/" + devname] = (kind, int(major), int(minor))
    return numbers


def _stat_numbers(host: HostRoot, path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(host.real(host.resolve(path)))
    except OSError:
        return None
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
    return (kind, os.major(st.st_rdev), os.minor(st.st_rdev)) if kind else None


class _Numbers:
    """Device numbers for nodes a spec gives without them: sysfs first, then the node itself."""

    def __init__(self, host: HostRoot) -> None:
        self.host = host
        self._sysfs: dict[str, tuple[str, int, int]] | None = None

    def lookup(self, path: str) -> tuple[str, int, int] | None:
        if self._sysfs is None:  # read /sys/dev only when some spec leaves the numbers out
            self._sysfs = sysfs_device_numbers(self.host)
        return self._sysfs.get(path) or _stat_numbers(self.host, path)


def _device(node: DeviceNode, why: dict[str, str], numbers: _Numbers) -> Device | Rejected:
    source = node.host_path or node.path
    kind, major, minor = node.type, node.major or 0, node.minor or 0
    if kind != "p" and node.major is None and node.minor is None:
        found = numbers.lookup(source)
        if found is None:
            return Rejected(source, PROVIDER, REASON_NO_NUMBERS.format(path=node.path, source=source, **why))
        kind, major, minor = kind or found[0], found[1], found[2]
    return Device(path=node.path, type=kind or "c", major=major, minor=minor, provider=PROVIDER,
                  rule=why["qualified"], reason=why["reason"],
                  host_path=source if source != node.path else "", permissions=node.permissions or "rwm")


def _apply(edits: ContainerEdits, why: dict[str, str], host: HostRoot, numbers: _Numbers) -> PlanPart:
    part = PlanPart()
    for node in edits.device_nodes:
        entry = _device(node, why, numbers)
        (part.rejected if isinstance(entry, Rejected) else part.devices).append(entry)
    part.mounts.extend(
        Mount(source=m.host_path, destination=m.container_path, provider=PROVIDER, rule=why["qualified"],
              kind="dir" if host.is_dir(m.host_path) else "file", reason=why["reason"],
              # every plan mount is a bind: the runtime adds it, the options keep the rest
              options=tuple(o for o in m.options if o not in ("bind", "rbind")))
        for m in edits.mounts)
    part.env.extend(EnvOp(name, EnvAction.SET, value, PROVIDER, why["reason"])
                    for name, _, value in (e.partition("=") for e in edits.env))
    part.rejected.extend(Rejected(f"{h.hook_name} hook {shlex.join((h.path, *h.args[1:]))}", PROVIDER,
                                  REASON_HOOK.format(**why)) for h in edits.hooks)
    unsupported = (("intelRdt", edits.intel_rdt), ("additionalGids", edits.additional_gids),
                   ("netDevices", edits.net_devices))
    part.rejected.extend(Rejected(f"{what} of {why['qualified']}", PROVIDER,
                                  REASON_UNSUPPORTED.format(what=what, **why))
                         for what, value in unsupported if value)
    return part


def cdi_part(specs: Mapping[str, CdiSpec], names: Sequence[str], host: HostRoot = HostRoot()) -> PlanPart:
    """Plan entries for the requested CDI devices: their edits, then each spec's own edits once."""
    index = _index(specs)
    numbers = _Numbers(host)
    part = PlanPart()
    spec_done: set[str] = set()
    for requested in names:
        for source in _resolve(index, requested):
            why = {"qualified": source.qualified, "origin": source.origin, "kind": source.spec.kind}
            if source.origin not in spec_done:
                spec_done.add(source.origin)
                part.extend(_apply(source.spec.container_edits,
                                   {**why, "reason": REASON_SPEC_WIDE.format(**why)}, host, numbers))
                part.facts.append(Fact(PROVIDER, "spec", source.origin))
            part.extend(_apply(source.device.container_edits,
                               {**why, "reason": REASON_DEVICE.format(**why)}, host, numbers))
            part.facts.append(Fact(PROVIDER, "device", source.qualified))
            part.rejected.extend(
                Rejected(f"{source.qualified} in {loser.origin}", PROVIDER,
                         REASON_SHADOWED.format(qualified=source.qualified, origin=loser.origin,
                                                winner=source.origin))
                for loser in index[source.qualified][:-1])
    return part
