"""CDI out (a plan as a spec, at the lowest version it needs) and in (specs as plan entries).

The specs read here are written as ``nvidia-ctk cdi generate`` writes them (YAML, kind
``nvidia.com/gpu``, devices by index, UUID and ``all``, device nodes without numbers, the
``nvidia-cdi-hook`` hooks) and as the CDI README's example (JSON, ``vendor.com/device``); the
sysfs they are completed from follows the kernel's layout (``/sys/dev/char/M:N`` links to the
device directory, whose ``uevent`` names the node).
"""

from __future__ import annotations

import json
import os
import stat
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from test_plan_model import merged

from hpcbind import cdi
from hpcbind.cdi import (
    CdiDevice, CdiMount, CdiSpec, ContainerEdits, DeviceNode, Hook, IntelRdt, NetDevice, cdi_part,
    load_cdi_specs, parse_spec, to_cdi,
)
from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.plan import BindPlan, Device, EnvAction, EnvOp, Fact, Link, Mount, PlanPart, Rejected

SCHEMA = json.loads((Path(__file__).parent / "data" / "cdi-spec.schema.json").read_text())
DRIVER = "550.54.15"
LIB = "/usr/lib/x86_64-linux-gnu"
GPU0_UUID = "GPU-4cf8db2d-06c0-7d70-1a51-e59b25b2c16c"

NVIDIA_YAML = textwrap.dedent(f"""\
    ---
    cdiVersion: 0.5.0
    kind: nvidia.com/gpu
    devices:
    - name: "0"
      containerEdits:
        deviceNodes:
        - path: /dev/nvidia0
        - path: /dev/dri/card1
        - path: /dev/dri/renderD128
        hooks:
        - hookName: createContainer
          path: /usr/bin/nvidia-cdi-hook
          args: [nvidia-cdi-hook, create-symlinks, --link, ../card1::/dev/dri/by-path/pci-0000:07:00.0-card]
    - name: {GPU0_UUID}
      containerEdits:
        deviceNodes:
        - path: /dev/nvidia0
        - path: /dev/dri/card1
        - path: /dev/dri/renderD128
    - name: "1"
      containerEdits:
        deviceNodes:
        - path: /dev/nvidia1
        - path: /dev/dri/card2
        - path: /dev/dri/renderD129
    - name: all
      containerEdits:
        deviceNodes:
        - path: /dev/nvidia0
        - path: /dev/nvidia1
        - path: /dev/dri/card1
        - path: /dev/dri/card2
        - path: /dev/dri/renderD128
        - path: /dev/dri/renderD129
    containerEdits:
      env:
      - NVIDIA_VISIBLE_DEVICES=void
      deviceNodes:
      - path: /dev/nvidia-modeset
      - path: /dev/nvidia-uvm
      - path: /dev/nvidia-uvm-tools
      - path: /dev/nvidiactl
      hooks:
      - hookName: createContainer
        path: /usr/bin/nvidia-cdi-hook
        args: [nvidia-cdi-hook, update-ldcache, --folder, {LIB}]
        env: [NVIDIA_CTK_DEBUG=false]
      mounts:
      - hostPath: {LIB}/libcuda.so.{DRIVER}
        containerPath: {LIB}/libcuda.so.{DRIVER}
        options: [ro, nosuid, nodev, bind]
      - hostPath: /run/nvidia-persistenced/socket
        containerPath: /run/nvidia-persistenced/socket
        options: [ro, nosuid, nodev, bind, noexec]
    """)

# The CDI README's example, with the numbers given in the spec (so no host lookup).
VENDOR_JSON = {
    "cdiVersion": "0.3.0",
    "kind": "vendor.com/device",
    "devices": [
        {"name": "myDevice", "containerEdits": {"deviceNodes": [
            {"path": "/dev/card1", "type": "c", "major": 25, "minor": 25, "fileMode": 384,
             "permissions": "rw", "uid": 1000, "gid": 1000}]}},
        {"name": "myDevice2", "containerEdits": {"deviceNodes": [
            {"path": "/dev/card2", "type": "c", "major": 25, "minor": 26}]}},
    ],
    "containerEdits": {
        "deviceNodes": [{"path": "/dev/vendorctl", "type": "c", "major": 25, "minor": 0}],
        "mounts": [{"hostPath": "/bin/vendorBin", "containerPath": "/bin/vendorBin"},
                   {"hostPath": "/usr/lib/libVendor.so.0", "containerPath": "/usr/lib/libVendor.so.0"}],
        "hooks": [{"hookName": "createContainer", "path": "/bin/vendor-hook"}],
        "env": ["FOO=VALID_SPEC", "BAR=BARVALUE1"],
    },
}

# GPU index -> (card minor, render minor, PCI address), as the DRM core numbers them.
DRM = {0: (1, 128, "0000:07:00.0"), 1: (2, 129, "0000:0f:00.0")}


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def add_drm_sysfs(root: Path) -> None:
    """/sys/dev/char/226:N -> the DRM minor's directory under its PCI device (kernel layout)."""
    for card, render, pci in DRM.values():
        for name, minor in ((f"card{card}", card), (f"renderD{render}", render)):
            device = f"/sys/devices/pci0000:00/0000:00:01.0/{pci}/drm/{name}"
            write(root, f"{device}/dev", f"226:{minor}\n")
            write(root, f"{device}/uevent", f"MAJOR=226\nMINOR={minor}\nDEVNAME=dri/{name}\nDEVTYPE=drm_minor\n")
            link = root / f"sys/dev/char/226:{minor}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f"../../devices/pci0000:00/0000:00:01.0/{pci}/drm/{name}")


NVIDIA_NODES = {"/dev/nvidia0": 0, "/dev/nvidia1": 1, "/dev/nvidiactl": 255, "/dev/nvidia-modeset": 254}
UVM_NODES = {"/dev/nvidia-uvm": 0, "/dev/nvidia-uvm-tools": 1}  # nvidia-uvm gets a dynamic major


def add_nvidia_nodes(root: Path) -> None:
    """The nodes nvidia-modprobe makes with mknod: in no sysfs class, found by stat only."""
    for nodes, major in ((NVIDIA_NODES, 195), (UVM_NODES, 510)):
        for path, minor in nodes.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(major, minor))


needs_mknod = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of the NVIDIA nodes needs root")


@pytest.fixture
def node(tmp_path: Path) -> Path:
    write(tmp_path, "/etc/cdi/nvidia.yaml", NVIDIA_YAML)
    write(tmp_path, "/var/run/cdi/vendor.json", json.dumps(VENDOR_JSON))
    write(tmp_path, "/etc/cdi/README", "not a spec: only .json and .yaml are read\n")
    add_drm_sysfs(tmp_path)
    return tmp_path


# --- reading specs -----------------------------------------------------------------------------------------


def test_load_reads_json_and_yaml_specs_in_priority_order(node: Path):
    specs = load_cdi_specs(HostRoot(node))
    assert list(specs) == ["/etc/cdi/nvidia.yaml", "/var/run/cdi/vendor.json"]
    nvidia = specs["/etc/cdi/nvidia.yaml"]
    assert (nvidia.cdi_version, nvidia.kind) == ("0.5.0", "nvidia.com/gpu")
    assert [d.name for d in nvidia.devices] == ["0", GPU0_UUID, "1", "all"]
    assert nvidia.container_edits.device_nodes[0] == DeviceNode(path="/dev/nvidia-modeset")
    assert nvidia.container_edits.hooks[0] == Hook(
        "createContainer", "/usr/bin/nvidia-cdi-hook", ("nvidia-cdi-hook", "update-ldcache", "--folder", LIB),
        ("NVIDIA_CTK_DEBUG=false",))
    vendor = specs["/var/run/cdi/vendor.json"].devices[0].container_edits.device_nodes[0]
    assert vendor == DeviceNode("/dev/card1", type="c", major=25, minor=25, file_mode=0o600, permissions="rw",
                                uid=1000, gid=1000)


def test_no_spec_directories_no_specs(tmp_path: Path):
    assert load_cdi_specs(HostRoot(tmp_path)) == {}


@needs_mknod
def test_a_gpu_by_index_brings_its_nodes_and_the_spec_wide_edits(node: Path):
    add_nvidia_nodes(node)
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["nvidia.com/gpu=0"], HostRoot(node))
    spec_wide = cdi.REASON_SPEC_WIDE.format(kind="nvidia.com/gpu", qualified="nvidia.com/gpu=0",
                                            origin="/etc/cdi/nvidia.yaml")
    own = cdi.REASON_DEVICE.format(qualified="nvidia.com/gpu=0", origin="/etc/cdi/nvidia.yaml")
    rule = "nvidia.com/gpu=0"
    assert part.devices == [
        Device("/dev/nvidia-modeset", "c", 195, 254, "cdi", rule, spec_wide),
        Device("/dev/nvidia-uvm", "c", 510, 0, "cdi", rule, spec_wide),
        Device("/dev/nvidia-uvm-tools", "c", 510, 1, "cdi", rule, spec_wide),
        Device("/dev/nvidiactl", "c", 195, 255, "cdi", rule, spec_wide),
        Device("/dev/nvidia0", "c", 195, 0, "cdi", rule, own),  # by stat: in no sysfs class
        Device("/dev/dri/card1", "c", 226, 1, "cdi", rule, own),  # from /sys/dev/char
        Device("/dev/dri/renderD128", "c", 226, 128, "cdi", rule, own),
    ]
    assert part.mounts == [
        Mount(f"{LIB}/libcuda.so.{DRIVER}", f"{LIB}/libcuda.so.{DRIVER}", "file", "cdi", rule, spec_wide,
              options=("ro", "nosuid", "nodev")),
        Mount("/run/nvidia-persistenced/socket", "/run/nvidia-persistenced/socket", "file", "cdi", rule,
              spec_wide, options=("ro", "nosuid", "nodev", "noexec")),
    ]
    assert part.env == [EnvOp("NVIDIA_VISIBLE_DEVICES", EnvAction.SET, "void", "cdi", spec_wide)]
    hook_reason = cdi.REASON_HOOK.format(qualified=rule, origin="/etc/cdi/nvidia.yaml")
    assert part.rejected == [
        Rejected(f"createContainer hook /usr/bin/nvidia-cdi-hook update-ldcache --folder {LIB}", "cdi", hook_reason),
        Rejected("createContainer hook /usr/bin/nvidia-cdi-hook create-symlinks --link "
                 "../card1::/dev/dri/by-path/pci-0000:07:00.0-card", "cdi", hook_reason),
    ]
    assert part.facts == [Fact("cdi", "spec", "/etc/cdi/nvidia.yaml"), Fact("cdi", "device", rule)]


@needs_mknod
def test_all_uses_the_spec_s_own_all_device(node: Path):
    add_nvidia_nodes(node)
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["nvidia.com/gpu=all"], HostRoot(node))
    assert [(d.path, d.major, d.minor) for d in part.devices][4:] == [
        ("/dev/nvidia0", 195, 0), ("/dev/nvidia1", 195, 1), ("/dev/dri/card1", 226, 1), ("/dev/dri/card2", 226, 2),
        ("/dev/dri/renderD128", 226, 128), ("/dev/dri/renderD129", 226, 129)]
    assert {d.rule for d in part.devices} == {"nvidia.com/gpu=all"}


def test_all_without_an_all_device_means_every_device_of_the_kind(node: Path):
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["vendor.com/device=all"], HostRoot(node))
    assert [(d.path, d.rule, d.permissions) for d in part.devices] == [
        ("/dev/vendorctl", "vendor.com/device=myDevice", "rwm"),
        ("/dev/card1", "vendor.com/device=myDevice", "rw"),
        ("/dev/card2", "vendor.com/device=myDevice2", "rwm")]
    # the spec-wide edits come once, however many of its devices are asked for
    assert [e.name for e in part.env] == ["FOO", "BAR"]
    assert [m.destination for m in part.mounts] == ["/bin/vendorBin", "/usr/lib/libVendor.so.0"]
    assert [r.candidate for r in part.rejected] == ["createContainer hook /bin/vendor-hook"]


def test_two_vendors_at_once(node: Path):
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["vendor.com/device=myDevice2", "nvidia.com/gpu=1"],
                    HostRoot(node))
    by_path = {d.path: d for d in part.devices}
    assert (by_path["/dev/card2"].major, by_path["/dev/card2"].minor) == (25, 26)
    assert (by_path["/dev/dri/renderD129"].major, by_path["/dev/dri/renderD129"].minor) == (226, 129)
    assert {f.value for f in part.facts if f.name == "device"} == {"vendor.com/device=myDevice2", "nvidia.com/gpu=1"}


def test_a_node_with_no_numbers_anywhere_is_rejected(node: Path):
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["nvidia.com/gpu=1"], HostRoot(node))  # no mknod'ed nodes
    assert "/dev/nvidia1" not in {d.path for d in part.devices}
    assert Rejected("/dev/nvidia1", "cdi", cdi.REASON_NO_NUMBERS.format(
        path="/dev/nvidia1", source="/dev/nvidia1", qualified="nvidia.com/gpu=1",
        origin="/etc/cdi/nvidia.yaml")) in part.rejected
    assert {d.path for d in part.devices} == {"/dev/dri/card2", "/dev/dri/renderD129"}


def test_unknown_device_lists_the_available_names(node: Path):
    with pytest.raises(HpcbindError) as err:
        cdi_part(load_cdi_specs(HostRoot(node)), ["nvidia.com/gpu=7"], HostRoot(node))
    assert str(err.value) == (
        "unknown CDI device 'nvidia.com/gpu=7'; available: nvidia.com/gpu=0, nvidia.com/gpu=1, "
        f"nvidia.com/gpu={GPU0_UUID}, nvidia.com/gpu=all, vendor.com/device=myDevice, vendor.com/device=myDevice2")


def test_unknown_device_without_any_spec(tmp_path: Path):
    with pytest.raises(HpcbindError, match=r"available: none \(no specs in /etc/cdi or /var/run/cdi\)"):
        cdi_part({}, ["nvidia.com/gpu=0"], HostRoot(tmp_path))


@pytest.mark.parametrize("name", ["nvidia.com/gpu", "nvidia.com=0", "/dev/nvidia0", "nvidia.com/gpu=-0"])
def test_a_malformed_device_name_is_a_usage_error(name):
    with pytest.raises(HpcbindError, match=f"--device '{name}' is not a CDI device name"):
        cdi_part({}, [name])


def test_a_later_directory_shadows_a_device(node: Path):
    override = VENDOR_JSON | {"devices": [{"name": "myDevice", "containerEdits": {"deviceNodes": [
        {"path": "/dev/card1", "type": "c", "major": 25, "minor": 99}]}}]}
    write(node, "/etc/cdi/vendor-old.json", json.dumps(VENDOR_JSON))
    write(node, "/var/run/cdi/vendor.json", json.dumps(override))
    part = cdi_part(load_cdi_specs(HostRoot(node)), ["vendor.com/device=myDevice"], HostRoot(node))
    assert [(d.path, d.minor) for d in part.devices] == [("/dev/vendorctl", 0), ("/dev/card1", 99)]
    assert Rejected("vendor.com/device=myDevice in /etc/cdi/vendor-old.json", "cdi", cdi.REASON_SHADOWED.format(
        qualified="vendor.com/device=myDevice", origin="/etc/cdi/vendor-old.json",
        winner="/var/run/cdi/vendor.json")) in part.rejected


def test_features_hpcbind_cannot_apply_are_rejected_with_the_reason(tmp_path: Path):
    spec = CdiSpec("1.1.0", "example.com/net", (CdiDevice("eth", ContainerEdits(
        net_devices=(NetDevice("enp1s0f1", "eth1"),), additional_gids=(44,),
        intel_rdt=IntelRdt(clos_id="gold"))),))
    part = cdi_part({"/etc/cdi/net.yaml": spec}, ["example.com/net=eth"], HostRoot(tmp_path))
    assert [r.candidate for r in part.rejected] == [
        "intelRdt of example.com/net=eth", "additionalGids of example.com/net=eth", "netDevices of example.com/net=eth"]
    assert part.rejected[2].reason == ("netDevices is not supported by the hpcbind runtime "
                                       "(example.com/net=eth, spec /etc/cdi/net.yaml)")


# --- refusing what the reference parser refuses ----------------------------------------------------------------


def spec_json(**changes) -> str:
    return json.dumps({**VENDOR_JSON, **changes})


def device_nodes(*nodes: dict) -> list[dict]:
    return [{"name": "d", "containerEdits": {"deviceNodes": list(nodes)}}]


@pytest.mark.parametrize(("text", "problem"), [
    (spec_json(containerRuntime=["podman"]), "unknown field containerRuntime"),
    (spec_json(devices=device_nodes({"path": "/dev/x", "mode": 1})), "unknown field devices[0].containerEdits.deviceNodes[0].mode"),
    (spec_json(devices=device_nodes({"path": "/dev/x", "hostPath": "/dev/y"})),
     "uses a deviceNode hostPath or a device name starting with a digit, which needs cdiVersion 0.5.0, but says 0.3.0"),
    (spec_json(cdiVersion="0.4.0", devices=[{"name": "0", "containerEdits": {}}]), "which needs cdiVersion 0.5.0"),
    (spec_json(annotations={"a": "b"}), "uses annotations or a dot in the class, which needs cdiVersion 0.6.0"),
    (spec_json(kind="vendor.com/device.v2"), "which needs cdiVersion 0.6.0"),
    (spec_json(containerEdits={"mounts": [{"hostPath": "/a", "containerPath": "/a", "type": "bind"}]}),
     "uses a mount type, which needs cdiVersion 0.4.0"),
    (spec_json(cdiVersion="0.6.0", containerEdits={"additionalGids": [44]}), "which needs cdiVersion 0.7.0"),
    (spec_json(cdiVersion="1.0.0", containerEdits={"netDevices": [{"hostInterfaceName": "eth1", "name": "e"}]}),
     "uses netDevices or intelRdt.schemata/enableMonitoring, which needs cdiVersion 1.1.0, but says 1.0.0"),
    (spec_json(cdiVersion="1.1.0", containerEdits={"intelRdt": {"enableCMT": True}}),
     "intelRdt.enableCMT/enableMBM are not valid in cdiVersion 1.1.0"),
    (spec_json(cdiVersion="0.9.0"), "cdiVersion '0.9.0' is not a released version"),
    (spec_json(cdiVersion="0.2.0"), "cdiVersion '0.2.0' is not a released version"),
    (spec_json(kind="vendor.com"), "kind 'vendor.com' is not vendor/class"),
    (spec_json(devices=[{"name": "my device", "containerEdits": {}}]), "device name 'my device' must be"),
    (spec_json(devices=[]), "no devices"),
    (spec_json(devices=[{"name": "a", "containerEdits": {}}] * 2), "device 'a' is defined twice"),
    (spec_json(devices=[{"name": "a"}]), "devices[0].containerEdits is required"),
    (spec_json(containerEdits={"env": ["FOO"]}), "env entry 'FOO' is not NAME=VALUE"),
    (spec_json(devices=device_nodes({"path": "/dev/x", "type": "x"})), "has type 'x', not one of b/c/u/p"),
    (spec_json(devices=device_nodes({"path": "/dev/x", "permissions": "rwx"})), "not a subset of 'rwm'"),
    (spec_json(devices=device_nodes({"path": "/dev/x", "major": True})),
     "devices[0].containerEdits.deviceNodes[0].major must be an integer, not True"),
    (spec_json(devices="all"), "devices must be a list"),
    ('{"cdiVersion": "0.3.0",', "not valid JSON"),
])
def test_a_spec_the_reference_parser_refuses(text: str, problem: str):
    with pytest.raises(HpcbindError) as err:
        parse_spec(text, "/etc/cdi/bad.json")
    assert str(err.value).startswith("CDI spec /etc/cdi/bad.json: ")
    assert problem in str(err.value)
    assert str(err.value).endswith(cdi.FIX_SPEC)


def test_yaml_refusals_name_the_file(node: Path):
    write(node, "/etc/cdi/nvidia.yaml", NVIDIA_YAML.replace('name: "1"', "name: 1"))
    with pytest.raises(HpcbindError, match=r"^CDI spec /etc/cdi/nvidia.yaml: devices\[2\].name must be a string"):
        load_cdi_specs(HostRoot(node))
    write(node, "/etc/cdi/nvidia.yaml", "cdiVersion: [0.5.0\n")
    with pytest.raises(HpcbindError, match="^CDI spec /etc/cdi/nvidia.yaml: not valid YAML"):
        load_cdi_specs(HostRoot(node))


# --- a plan as a spec --------------------------------------------------------------------------------------------


def validate(document: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (PyPI) is not installed")
    jsonschema.Draft7Validator(SCHEMA).validate(document)


def test_schema_and_model_name_the_same_fields():
    """One spec model: the test schema and the dataclasses must not drift apart."""
    definitions = SCHEMA["definitions"]
    for cls, schema in ((CdiSpec, SCHEMA), (CdiDevice, definitions["Device"]),
                        (ContainerEdits, definitions["containerEdits"]), (DeviceNode, definitions["DeviceNode"]),
                        (CdiMount, definitions["Mount"]), (Hook, definitions["Hook"]),
                        (IntelRdt, definitions["IntelRdt"]), (NetDevice, definitions["NetDevice"])):
        assert {cdi._json_name(f) for f in fields(cls)} == set(schema["properties"]), cls.__name__
        assert {cdi._json_name(f) for f in fields(cls) if cdi._required(f)} == set(schema.get("required", ()))
    assert SCHEMA["properties"]["cdiVersion"]["enum"] == list(cdi.VERSIONS)


def test_the_plan_as_cdi_carries_every_entry():
    plan = merged([0, 1, 2])
    document = to_cdi(plan)
    assert (document["cdiVersion"], document["kind"]) == ("0.6.0", "hpcbind.org/host")
    edits = document["devices"][0]["containerEdits"]
    assert edits["deviceNodes"] == [{"path": d.path, "type": d.type, "major": d.major, "minor": d.minor,
                                     "permissions": d.permissions} for d in plan.devices]
    assert edits["mounts"] == [{"hostPath": m.source, "containerPath": m.destination,
                                "options": [*m.options, "bind"]} for m in plan.mounts]
    assert edits["env"] == ["UCX_NET_DEVICES=mlx5_0:1", "NVIDIA_VISIBLE_DEVICES=all", "PMIX_MCA_psec=native"]
    annotations = document["devices"][0]["annotations"]
    assert json.loads(annotations[cdi.ANNOTATION_ENV]) == [["LD_LIBRARY_PATH", "append", "/.hpcbind/lib"],
                                                          ["PMI_FD", "pass", ""]]
    assert json.loads(annotations[cdi.ANNOTATION_LINKS]) == [["/.hpcbind/lib/libcuda.so", "libcuda.so.1"]]
    assert "hooks" not in edits  # hpcbind never asks a runtime to run a program


def bare(*devices: Device, env: tuple[EnvOp, ...] = (), links: tuple[Link, ...] = ()) -> BindPlan:
    return BindPlan.merge((), [PlanPart(devices=list(devices), env=list(env), links=list(links),
                                        mounts=[Mount("/etc/libibverbs.d", "/etc/libibverbs.d", "config",
                                                      "fabric.verbs", "providers")])])


UVERBS = Device("/dev/infiniband/uverbs0", "c", 231, 192, "fabric.verbs", "uverbs")

VERSION_CASES = [
    (bare(UVERBS), "hpcbind.org/host", "plan", "0.3.0"),
    (bare(Device("/dev/nvidia0", "c", 195, 0, "gpu.nvidia", "gpu", host_path="/dev/nvidia0")),
     "hpcbind.org/host", "plan", "0.3.0"),  # a hostPath equal to the path is not written
    (bare(Device("/dev/dri/renderD128", "c", 226, 129, "gpu.rocm", "render", host_path="/dev/dri/renderD129")),
     "hpcbind.org/host", "plan", "0.5.0"),
    (bare(UVERBS), "hpcbind.org/host", "0", "0.5.0"),
    (bare(UVERBS, env=(EnvOp("UCX_TLS", EnvAction.SET, "rc,sm", "fabric.verbs"),)), "hpcbind.org/host", "plan", "0.3.0"),
    (bare(UVERBS, env=(EnvOp("LD_LIBRARY_PATH", EnvAction.PREPEND, "/.hpcbind/lib", "gpu.nvidia"),)),
     "hpcbind.org/host", "plan", "0.6.0"),
    (bare(UVERBS, links=(Link("/.hpcbind/lib/libcuda.so", "libcuda.so.1", "gpu.nvidia"),)),
     "hpcbind.org/host", "plan", "0.6.0"),
    (bare(UVERBS), "hpcbind.org/host.v2", "plan", "0.6.0"),
]


@pytest.mark.parametrize(("plan", "kind", "name", "version"), VERSION_CASES)
def test_the_lowest_version_the_fields_need(plan, kind, name, version):
    document = to_cdi(plan, kind, name)
    assert document["cdiVersion"] == version
    # and a stated version lower than that is what the reader refuses
    lower = cdi.VERSIONS[cdi.VERSIONS.index(version) - 1] if version != "0.3.0" else None
    if lower:
        with pytest.raises(HpcbindError, match=f"needs cdiVersion {version}, but says {lower}"):
            parse_spec(json.dumps({**document, "cdiVersion": lower}), "/etc/cdi/hpcbind.json")


@pytest.mark.parametrize("document", [to_cdi(merged([0, 1, 2])), *(to_cdi(*case[:3]) for case in VERSION_CASES)])
def test_every_spec_written_validates_against_the_schema(document):
    validate(document)


def test_to_cdi_refuses_a_bad_kind():
    with pytest.raises(HpcbindError, match="can't write the plan as CDI: kind 'host' is not vendor/class"):
        to_cdi(BindPlan(), kind="host")


def test_a_written_spec_reads_back_into_the_same_devices_and_mounts(tmp_path: Path):
    plan = merged([0, 1, 2])
    write(tmp_path, "/etc/cdi/hpcbind.json", json.dumps(to_cdi(plan)))
    part = cdi_part(load_cdi_specs(HostRoot(tmp_path)), ["hpcbind.org/host=plan"], HostRoot(tmp_path))
    assert [(d.path, d.type, d.major, d.minor, d.permissions) for d in part.devices] == [
        (d.path, d.type, d.major, d.minor, d.permissions) for d in plan.devices]
    assert [(m.source, m.destination, m.options) for m in part.mounts] == [
        (m.source, m.destination, m.options) for m in plan.mounts]
    assert [(e.name, e.value) for e in part.env] == [
        (e.name, e.value) for e in plan.env if e.action is EnvAction.SET]


@pytest.mark.parametrize("bad", [
    {**VENDOR_JSON, "containerRuntime": ["podman"]},
    {**VENDOR_JSON, "devices": device_nodes({"path": "/dev/x", "mode": 1})},
    {**VENDOR_JSON, "containerEdits": {"env": ["FOO"]}},
    {**VENDOR_JSON, "devices": []},
])
def test_the_schema_is_as_strict_as_the_parser(bad):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (PyPI) is not installed")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    with pytest.raises(HpcbindError):
        parse_spec(json.dumps(bad), "/etc/cdi/bad.json")
