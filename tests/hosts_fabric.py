"""Fixture hosts for interconnect discovery: the nodes this machine is not.

Laid out as the kernel documents them: Documentation/ABI/stable/sysfs-class-infiniband (device,
port, GID and gid_attrs files; the infiniband_verbs and infiniband_mad class devices),
Documentation/ABI/testing/sysfs-class-net (netdevs), the hfi1 driver's ``hfi1_user`` class and
the CXI driver's ``cxi``/``cxi_user`` classes and ``properties/`` (shs-cxi-driver). Class
entries are relative symlinks into /sys/devices, as on a live sysfs; device numbers are in
``dev`` and ``uevent``, and /proc/devices names the majors.

The host userspace is real: ELF libraries compiled here with gcc, with the sonames, DT_NEEDED
lists and symbol versions of the real ones (libibverbs defines IBVERBS_PRIVATE_<N> through a
version script, and providers linked against it need it), in Debian's layout (providers in
``<libdir>/libibverbs/lib<name>-rdmav<N>.so``), and an ld.so.cache written by ``ldconfig -r``.

Every builder only adds files under ``root``, so builders combine: the GPU builders and
``build_mlx5_node`` on one root make an 8-GPU/8-HCA node. ``build_opa_node`` is a host of its
own (its adapter would take uverbs0 too).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path

DEBIAN_LIBDIR = "/usr/lib/x86_64-linux-gnu"
RHEL_LIBDIR = "/usr/lib64"  # where HPE's Slingshot host software installs
CPUS_PER_SOCKET = 32

UVERBS_MAJOR, UVERBS_BASE_MINOR = 231, 192  # IB_UVERBS_MAJOR, IB_UVERBS_BASE_MINOR
UMAD_MAJOR, ISSM_BASE_MINOR = 231, 64  # IB_UMAD_MAJOR; issm minors follow the umad ones
RDMA_CM = (10, 58)  # a misc device: major 10, minor given at load time
UCXI_MAJOR = 236  # alloc_chrdev_region("ucxi"): dynamic
HFI1_MAJOR = 246  # alloc_chrdev_region("hfi1"): dynamic

MLX5_RATE = "200 Gb/sec (4X HDR)"
OPA_RATE = "100 Gb/sec (4X EDR)"

# PCI placement per kind of device, so that builders combine without two devices on one
# address: root ports and the first bus below them (in each 0x10 block of a socket's buses).
# GPU builders are expected to stay off these (buses x1, x5, x9; ports 01-0d).
MLX5_PCI = (0x01, 0x01)  # (first root port, bus offset)
CXI_PCI = (0x09, 0x05)
OPA_PCI = (0x0D, 0x09)


# --- sysfs primitives --------------------------------------------------------------------------


def _write(root: Path, path: str, value: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(value + "\n")  # sysfs attributes end with a newline


def _link(root: Path, path: str, target: str) -> None:
    """A relative symlink at host path ``path`` to host path ``target``, as sysfs makes them."""
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, os.path.dirname(path)))


def _add_char_major(root: Path, major: int, name: str) -> None:
    """Add a line to /proc/devices' character section (kept sorted, combinable)."""
    path = root / "proc/devices"
    text = path.read_text() if path.exists() else "Character devices:\n\nBlock devices:\n"
    chars, _, blocks = text.partition("\n\nBlock devices:\n")
    lines = sorted(set(chars.splitlines()[1:]) | {f"{major:3d} {name}"},
                   key=lambda line: (int(line.split()[0]), line))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("Character devices:\n" + "\n".join(lines) + "\n\nBlock devices:\n" + blocks)


def _pci_address(socket: int, slot: int, placement: tuple[int, int]) -> tuple[str, str]:
    """(root port, endpoint) PCI addresses of the ``slot``-th device of a kind on ``socket``."""
    root_bus = 0x80 * socket
    first_port, bus_offset = placement
    return (f"0000:{root_bus:02x}:{first_port + slot:02x}.0",
            f"0000:{root_bus + bus_offset + 0x10 * slot:02x}:00.0")


def _pci_function(root: Path, socket: int, slot: int, placement: tuple[int, int], *,
                  vendor: str, device: str, pci_class: str, driver: str) -> str:
    """A PCIe endpoint behind a root port of ``socket``'s host bridge (NUMA node = socket);
    returns its sysfs directory."""
    port, address = _pci_address(socket, slot, placement)
    base = f"/sys/devices/pci0000:{0x80 * socket:02x}/{port}/{address}"
    first_cpu = socket * CPUS_PER_SOCKET
    uevent = (f"DRIVER={driver}\nPCI_CLASS={pci_class[2:].upper()}\n"
              f"PCI_ID={vendor[2:].upper()}:{device[2:].upper()}\nPCI_SLOT_NAME={address}")
    for name, value in (("vendor", vendor), ("device", device), ("class", pci_class),
                        ("numa_node", str(socket)),
                        ("local_cpulist", f"{first_cpu}-{first_cpu + CPUS_PER_SOCKET - 1}"),
                        ("uevent", uevent)):
        _write(root, f"{base}/{name}", value)
    (root / f"sys/bus/pci/drivers/{driver}").mkdir(parents=True, exist_ok=True)
    _link(root, f"{base}/driver", f"/sys/bus/pci/drivers/{driver}")
    _link(root, f"{base}/subsystem", "/sys/bus/pci")
    return base


def _class_device(root: Path, class_name: str, name: str, parent: str | None,
                  dev: tuple[int, int] | None = None, devname: str = "", uevent: str = "") -> str:
    """A class device under ``parent`` (None: /sys/devices/virtual) with its /sys/class link."""
    base = (f"{parent}/{class_name}/{name}" if parent else
            f"/sys/devices/virtual/{class_name}/{name}")
    if dev:
        _write(root, f"{base}/dev", f"{dev[0]}:{dev[1]}")
        uevent = f"MAJOR={dev[0]}\nMINOR={dev[1]}\nDEVNAME={devname or name}"
    _write(root, f"{base}/uevent", uevent)
    if parent:
        _link(root, f"{base}/device", parent)
    _link(root, f"{base}/subsystem", f"/sys/class/{class_name}")
    _link(root, f"/sys/class/{class_name}/{name}", base)
    return base


def _netdev(root: Path, parent: str, name: str, *, address: str, arp_type: int, ifindex: int,
            mtu: int) -> None:
    base = _class_device(root, "net", name, parent, uevent=f"INTERFACE={name}\nIFINDEX={ifindex}")
    for attr, value in (("address", address), ("type", str(arp_type)), ("ifindex", str(ifindex)),
                        ("mtu", str(mtu)), ("operstate", "up"), ("carrier", "1"),
                        ("dev_port", "0")):
        _write(root, f"{base}/{attr}", value)


def _ib_device(root: Path, parent: str, name: str, attrs: dict[str, str]) -> str:
    base = _class_device(root, "infiniband", name, parent, uevent=f"NAME={name}")
    for attr, value in attrs.items():
        _write(root, f"{base}/{attr}", value)
    return base


def _ib_port(root: Path, ib_base: str, *, active: bool, link_layer: str, rate: str, lid: int,
             gids: Sequence[tuple[str, str, str]], table: int = 8) -> None:
    """Port 1; ``gids`` are (gid, type, ndev) for the first slots, the rest of the table zero."""
    port = f"{ib_base}/ports/1"
    infiniband = link_layer == "InfiniBand"
    attrs = {
        "state": "4: ACTIVE" if active else "1: DOWN",
        "phys_state": "5: LinkUp" if active else "3: Disabled",
        "link_layer": link_layer,
        "rate": rate,
        "lid": f"0x{lid:x}",
        "sm_lid": "0x1" if infiniband else "0x0",
        "sm_sl": "0",
        "lid_mask_count": "0",
        "cap_mask": "0xa651e848" if infiniband else "0x04010000",
        "pkeys/0": "0xffff",
    }
    for attr, value in attrs.items():
        _write(root, f"{port}/{attr}", value)
    empty = ("0000:" * 7 + "0000", "", "")
    for index in range(table):
        gid, gid_type, ndev = gids[index] if index < len(gids) else empty
        _write(root, f"{port}/gids/{index}", gid)
        # reading the attributes of an empty slot fails in the kernel: no file here
        if gid_type:
            _write(root, f"{port}/gid_attrs/types/{index}", gid_type)
        if ndev:
            _write(root, f"{port}/gid_attrs/ndevs/{index}", ndev)


def _verbs_nodes(root: Path, parent: str, ibdev: str, index: int) -> None:
    """uverbsN, umadN and issmN of a one-port device, and the classes' abi_version files."""
    verbs = _class_device(root, "infiniband_verbs", f"uverbs{index}", parent,
                          (UVERBS_MAJOR, UVERBS_BASE_MINOR + index), f"infiniband/uverbs{index}")
    _write(root, f"{verbs}/ibdev", ibdev)
    _write(root, f"{verbs}/abi_version", "1")
    for name, minor in ((f"umad{index}", index), (f"issm{index}", ISSM_BASE_MINOR + index)):
        mad = _class_device(root, "infiniband_mad", name, parent, (UMAD_MAJOR, minor),
                            f"infiniband/{name}")
        _write(root, f"{mad}/ibdev", ibdev)
        _write(root, f"{mad}/port", "1")
    _write(root, "/sys/class/infiniband_verbs/abi_version", "6")
    _write(root, "/sys/class/infiniband_mad/abi_version", "5")
    _add_char_major(root, UVERBS_MAJOR, "infiniband_verbs")
    _add_char_major(root, UMAD_MAJOR, "infiniband_mad")


def _rdma_cm(root: Path) -> None:
    if not (root / "sys/class/misc/rdma_cm").exists():
        _class_device(root, "misc", "rdma_cm", None, RDMA_CM, "infiniband/rdma_cm")
    _add_char_major(root, RDMA_CM[0], "misc")


# --- ELF libraries and the loader cache --------------------------------------------------------


# gcc costs ~0.1 s a library and a node has a dozen: a library built once per test process
# is copied for the next host that asks for the same one (same path, source and links).
_BUILT: dict[tuple, Path] = {}
_CACHE = Path(tempfile.mkdtemp(prefix="hpcbind-fixture-elf-"))
atexit.register(shutil.rmtree, _CACHE, True)


def compile_library(root: Path, path: str, soname: str = "", *, needed: Sequence[str] = (),
                    source: str = "", version_script: str = "",
                    libdir: str = DEBIAN_LIBDIR) -> None:
    """Build a shared library with gcc at host path ``path`` and link its soname to it.

    ``needed`` sonames are linked from ``libdir`` under the root (they must be built first) and
    kept as DT_NEEDED even when no symbol of theirs is used (--no-as-needed)."""
    out = root / path.lstrip("/")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = (path, soname, tuple(needed), source, version_script, libdir)
    if key not in _BUILT:
        _BUILT[key] = _gcc(_CACHE / str(len(_BUILT)) / out.name, root / libdir.lstrip("/"),
                           soname, needed, source, version_script)
    shutil.copy2(_BUILT[key], out)
    if soname and soname != out.name:
        link = out.with_name(soname)
        link.unlink(missing_ok=True)
        link.symlink_to(out.name)


def _gcc(out: Path, libdir: Path, soname: str, needed: Sequence[str], source: str,
         version_script: str) -> Path:
    out.parent.mkdir(parents=True)
    symbol = "fixture_" + "".join(c if c.isalnum() else "_" for c in out.name)
    c_file = out.parent / "lib.c"
    c_file.write_text(source or f"int {symbol}(void) {{ return 0; }}\n")
    command = ["gcc", "-shared", "-fPIC", "-o", str(out), str(c_file)]
    if soname:
        command.append(f"-Wl,-soname,{soname}")
    if version_script:
        (out.parent / "lib.map").write_text(version_script)
        command.append(f"-Wl,--version-script={out.parent / 'lib.map'}")
    command += ["-Wl,--no-as-needed", f"-L{libdir}", *(f"-l:{n}" for n in needed)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def build_libibverbs(root: Path, pabi: int = 34, libdir: str = DEBIAN_LIBDIR) -> str:
    """rdma-core's libibverbs.so.1 for provider ABI ``pabi`` (rdma-core 44 is 34): public
    IBVERBS_1.x versions plus IBVERBS_PRIVATE_<pabi>, which its providers need; it needs
    libnl like the real one. Returns its host path."""
    compile_library(root, f"{libdir}/libnl-3.so.200.26.0", "libnl-3.so.200", libdir=libdir)
    compile_library(root, f"{libdir}/libnl-route-3.so.200.26.0", "libnl-route-3.so.200",
                    needed=("libnl-3.so.200",), libdir=libdir)
    path = f"{libdir}/libibverbs.so.1.14.44.0"
    compile_library(
        root, path, "libibverbs.so.1", libdir=libdir,
        needed=("libnl-route-3.so.200", "libnl-3.so.200"),
        source=("void *ibv_get_device_list(int *n) { return 0; }\n"
                "int ibv_fork_init(void) { return 0; }\n"
                f"void verbs_register_driver_{pabi}(const void *ops) {{ }}\n"),
        version_script=("IBVERBS_1.0 { global: ibv_get_device_list; local: *; };\n"
                        "IBVERBS_1.1 { global: ibv_fork_init; } IBVERBS_1.0;\n"
                        f"IBVERBS_PRIVATE_{pabi} {{ global: verbs_register_driver_{pabi}; }};\n"))
    return path


def build_verbs_userspace(root: Path, providers: Sequence[str] = ("mlx5",), *, pabi: int = 34,
                          ucx: bool = True, libdir: str = DEBIAN_LIBDIR) -> None:
    """Debian 12's rdma-core 44 layout: libibverbs, the providers and their .driver files,
    librdmacm, and UCX 1.13 with its ``ucx/`` modules and a site ucx.conf."""
    build_libibverbs(root, pabi, libdir)
    # a provider registers itself from a constructor: that is what needs the private ABI
    provider_source = (f"extern void verbs_register_driver_{pabi}(const void *);\n"
                       "extern int ibv_fork_init(void);\n"
                       "static void __attribute__((constructor)) load(void)\n"
                       f"{{ verbs_register_driver_{pabi}(0); }}\n"
                       "int provider_fork(void) { return ibv_fork_init(); }\n")
    for name in providers:
        provider = f"{libdir}/libibverbs/lib{name}-rdmav{pabi}.so"
        if name == "mlx5":  # Debian ships it as libmlx5.so.1 (mlx5dv), the provider a link to it
            compile_library(root, f"{libdir}/libmlx5.so.1.24.44.0", "libmlx5.so.1", libdir=libdir,
                            needed=("libibverbs.so.1",), source=provider_source)
            _link(root, provider, f"{libdir}/libmlx5.so.1.24.44.0")
        else:
            compile_library(root, provider, libdir=libdir, needed=("libibverbs.so.1",),
                            source=provider_source)
        _write(root, f"/etc/libibverbs.d/{name}.driver", f"driver {name}")
    compile_library(root, f"{libdir}/librdmacm.so.1.3.44.0", "librdmacm.so.1", libdir=libdir,
                    needed=("libibverbs.so.1", "libnl-3.so.200"))
    if ucx:
        _build_ucx(root, libdir, with_mlx5="mlx5" in providers)
    ldconfig(root, libdir, "rdma-core")


def _build_ucx(root: Path, libdir: str, with_mlx5: bool) -> None:
    """UCX as Debian builds it, with the DT_NEEDED lists of the real libraries."""
    compile_library(root, f"{libdir}/libnuma.so.1.0.0", "libnuma.so.1", libdir=libdir)
    for name, needed in (("libucm", ()),
                         ("libucs", ("libnuma.so.1", "libm.so.6", "libucm.so.0")),
                         ("libuct", ("libucs.so.0",)),
                         ("libucp", ("libuct.so.0", "libucs.so.0", "libucm.so.0"))):
        compile_library(root, f"{libdir}/{name}.so.0.0.0", f"{name}.so.0", libdir=libdir,
                        needed=needed)
    mlx5 = ("libmlx5.so.1",) if with_mlx5 else ()
    for name, needed in (("libuct_ib", ("libibverbs.so.1", "libnuma.so.1", *mlx5, "libucs.so.0",
                                        "libuct.so.0")),
                         ("libuct_rdmacm", ("librdmacm.so.1", "libucs.so.0", "libuct.so.0"))):
        compile_library(root, f"{libdir}/ucx/{name}.so.0.0.0", f"{name}.so.0", libdir=libdir,
                        needed=needed)
    _write(root, "/etc/ucx/ucx.conf", "[global]\nUCX_IB_PCI_RELAXED_ORDERING=on")


def build_libfabric(root: Path, libdir: str = DEBIAN_LIBDIR, *, needed: Sequence[str] = (),
                    dl_providers: Sequence[str] = ()) -> None:
    """libfabric.so.1 and, for each of ``dl_providers``, a DL provider ``lib<name>-fi.so`` in
    ``<libdir>/libfabric/`` (how Intel ships PSM3, for example)."""
    compile_library(root, f"{libdir}/libfabric.so.1.22.0", "libfabric.so.1", libdir=libdir,
                    needed=needed)
    for name in dl_providers:
        compile_library(root, f"{libdir}/libfabric/lib{name}-fi.so", libdir=libdir,
                        needed=("libfabric.so.1", "libnuma.so.1"))
    ldconfig(root, libdir, "libfabric")


def ldconfig(root: Path, libdir: str, name: str) -> None:
    """Debian's loader config (ld.so.conf including ld.so.conf.d/*.conf) with ``libdir`` in
    ``name``.conf, and a fresh /etc/ld.so.cache written by the real ldconfig."""
    _write(root, "/etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf")
    _write(root, f"/etc/ld.so.conf.d/{name}.conf", libdir)
    search = os.pathsep.join((os.environ.get("PATH", ""), "/sbin", "/usr/sbin"))
    binary = shutil.which("ldconfig", path=search)
    assert binary, "ldconfig (libc-bin) is needed to build fixture hosts"
    subprocess.run([binary, "-r", str(root), "-C", "/etc/ld.so.cache", "-f", "/etc/ld.so.conf"],
                   check=True, capture_output=True, text=True)


# --- the hosts ---------------------------------------------------------------------------------


def mlx5_mac(index: int) -> str:
    return f"b8:ce:f6:12:34:{0x50 + index:02x}"


def mlx5_guid(index: int) -> str:
    return f"b8ce:f603:0012:{0x3450 + index:04x}"


def roce_netdev(index: int, hcas: int = 8) -> str:
    """udev's predictable name of HCA ``index``'s port: its PCI bus, in decimal."""
    bus = _pci_address(*_placement(index, hcas), MLX5_PCI)[1].split(":")[1]
    return f"enp{int(bus, 16)}s0f0np0"


def roce_gids(index: int, hcas: int = 8) -> list[tuple[str, str, str]]:
    """A RoCE port's GID table as mlx5 fills it: link-local (EUI-64 of the MAC), IPv4-mapped
    10.<index>.0.1 and a ULA IPv6, each once as RoCE v1 and once as v2."""
    mac = [int(b, 16) for b in mlx5_mac(index).split(":")]
    eui = (f"{mac[0] ^ 0x02:02x}{mac[1]:02x}:{mac[2]:02x}ff:"
           f"fe{mac[3]:02x}:{mac[4]:02x}{mac[5]:02x}")
    netdev = roce_netdev(index, hcas)
    table = []
    for gid in (f"fe80:0000:0000:0000:{eui}",
                f"0000:0000:0000:0000:0000:ffff:0a{index:02x}:0001",
                f"fd00:0000:0000:{index:04x}:{eui}"):
        table += [(gid, "IB/RoCE v1", netdev), (gid, "RoCE v2", netdev)]
    return table


def _placement(index: int, count: int) -> tuple[int, int]:
    """(socket, slot): the first half of the devices on socket 0, the rest on socket 1."""
    per_socket = max(1, -(-count // 2))
    return index // per_socket, index % per_socket


def build_mlx5_node(root: Path, hcas: int = 8, roce: bool = False, *,
                    down: Collection[int] = (), fabric_dl_providers: Sequence[str] = ()) -> None:
    """A node with ``hcas`` ConnectX-6 functions (mlx5_0.. one port each), half on each of two
    sockets (NUMA 0 and 1); InfiniBand HDR with IPoIB ibN netdevs, or RoCE with Ethernet
    netdevs and their GIDs. Ports of the indices in ``down`` are DOWN/Disabled. With
    ``fabric_dl_providers`` the host also has libfabric with those DL providers."""
    for i in range(hcas):
        socket, slot = _placement(i, hcas)
        pci = _pci_function(root, socket, slot, MLX5_PCI, vendor="0x15b3", device="0x101b",
                            pci_class="0x020000" if roce else "0x020700", driver="mlx5_core")
        ib = _ib_device(root, pci, f"mlx5_{i}", {
            "node_type": "1: CA", "node_guid": mlx5_guid(i), "sys_image_guid": mlx5_guid(i),
            "fw_ver": "20.39.1002", "hca_type": "MT4123", "hw_rev": "0x0",
            "board_id": "MT_0000000223", "node_desc": f"node01 mlx5_{i}",
        })
        active = i not in down
        if roce:
            _netdev(root, pci, roce_netdev(i, hcas), address=mlx5_mac(i), arp_type=1,
                    ifindex=10 + i, mtu=9000)
            _ib_port(root, ib, active=active, link_layer="Ethernet", rate=MLX5_RATE, lid=0,
                     gids=roce_gids(i, hcas))
        else:
            guid = mlx5_guid(i).replace(":", "")
            ipoib = ("00:00:10:49:fe:80:00:00:00:00:00:00:"
                     + ":".join(guid[k:k + 2] for k in range(0, 16, 2)))
            _netdev(root, pci, f"ib{i}", address=ipoib, arp_type=32, ifindex=10 + i, mtu=4092)
            _ib_port(root, ib, active=active, link_layer="InfiniBand",
                     rate=MLX5_RATE if active else "10 Gb/sec (4X SDR)", lid=i + 1 if active else 0,
                     gids=[(f"fe80:0000:0000:0000:{mlx5_guid(i)}", "IB/RoCE v1", "")])
        _verbs_nodes(root, pci, f"mlx5_{i}", i)
    _rdma_cm(root)
    build_verbs_userspace(root, ("mlx5",))
    if fabric_dl_providers:
        build_libfabric(root, needed=("libibverbs.so.1", "librdmacm.so.1"),
                        dl_providers=fabric_dl_providers)


def build_slingshot_node(root: Path, nics: int = 4, *, link_down: Collection[int] = ()) -> None:
    """A node with ``nics`` Cassini 1 NICs (cxi0.., HPE 200Gb), half per socket, their hsnN
    netdevs, the cxi/cxi_user class devices and HPE's libcxi and libfabric in /usr/lib64."""
    for i in range(nics):
        socket, slot = _placement(i, nics)
        pci = _pci_function(root, socket, slot, CXI_PCI, vendor="0x17db", device="0x0501",
                            pci_class="0x020000", driver="cxi_ss1")
        nid = f"0x{0x1A2B0 + i:x}"
        for name, value in (("nid", nid), ("nic_addr", nid), ("pid_bits", "9"),
                            ("link", "0" if i in link_down else "1"), ("speed", "200000"),
                            ("cassini_version", "1.1"), ("hpc_mtu", "2048"), ("rev", "2")):
            _write(root, f"{pci}/properties/{name}", value)
        _class_device(root, "cxi", f"cxi{i}", pci, uevent=f"NAME=cxi{i}")
        _class_device(root, "cxi_user", f"cxi{i}", pci, (UCXI_MAJOR, i))
        _netdev(root, pci, f"hsn{i}", address=f"02:00:00:01:a2:{0xb0 + i:02x}", arp_type=1,
                ifindex=20 + i, mtu=9000)
    _add_char_major(root, UCXI_MAJOR, "ucxi")
    compile_library(root, f"{RHEL_LIBDIR}/libcxi.so.1.5.0", "libcxi.so.1", libdir=RHEL_LIBDIR)
    compile_library(root, f"{RHEL_LIBDIR}/libfabric.so.1.22.0", "libfabric.so.1",
                    libdir=RHEL_LIBDIR, needed=("libcxi.so.1",))
    ldconfig(root, RHEL_LIBDIR, "slingshot")


def build_opa_node(root: Path) -> None:
    """A node with one Omni-Path 100 HFI (hfi1_0, PCI 8086:24f0) on socket 0: its verbs device,
    the PSM2 char device /dev/hfi1_0 (class hfi1_user, no parent), IPoIB ib0, the hfi1verbs
    provider and libpsm2."""
    pci = _pci_function(root, 0, 0, OPA_PCI, vendor="0x8086", device="0x24f0",
                        pci_class="0x020800", driver="hfi1")
    guid = "0011:7501:0179:e2d4"
    ib = _ib_device(root, pci, "hfi1_0", {
        "node_type": "1: CA", "node_guid": guid, "sys_image_guid": guid, "fw_ver": "1.27.0",
        "hw_rev": "0x11", "board_id": "Intel Omni-Path Host Fabric Interface Adapter 100 Series",
        "nctxts": "160", "nfreectxts": "160", "serial": "0x0063e3a8",
        "boardversion": "ChipABI 3.0, ChipRev 7.17, SW Compat 3",
    })
    _ib_port(root, ib, active=True, link_layer="InfiniBand", rate=OPA_RATE, lid=1,
             gids=[(f"fe80:0000:0000:0000:{guid}", "IB/RoCE v1", "")])
    _verbs_nodes(root, pci, "hfi1_0", 0)
    _rdma_cm(root)
    _class_device(root, "hfi1_user", "hfi1_0", None, (HFI1_MAJOR, 0))
    _add_char_major(root, HFI1_MAJOR, "hfi1")
    _netdev(root, pci, "ib0", address="80:00:00:02:fe:80:00:00:00:00:00:00:00:11:75:01:01:79:e2:d4",
            arp_type=32, ifindex=3, mtu=65520)
    build_verbs_userspace(root, ("hfi1verbs",), ucx=False)
    compile_library(root, f"{DEBIAN_LIBDIR}/libnuma.so.1.0.0", "libnuma.so.1")
    compile_library(root, f"{DEBIAN_LIBDIR}/libpsm2.so.2.2", "libpsm2.so.2",
                    needed=("libnuma.so.1",))
    ldconfig(root, DEBIAN_LIBDIR, "rdma-core")
