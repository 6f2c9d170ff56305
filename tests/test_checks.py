"""Preflight checks, each on its ok, warn and fail paths. Host libraries are real ELF files gcc
builds here with chosen GLIBC/GLIBCXX needs (their provenance read back by the ELF reader, as
providers record it) plus the host's real verbs providers and MPI libraries; images are trees
indexed by the real ldconfig (with the host's own glibc and libstdc++, or with libraries gcc
builds that define older symbol versions) and the real busybox SIFs of the conformance corpus."""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SIF_CORPUS
from hosts_gpu import ROCM_VERSION, SharedLib, build_amd_node, compile_lib, run_ldconfig
from test_mpi_abi import compile_source
from hpcbind.checks import preflight
from hpcbind.host.elf import elf_info
from hpcbind.hostroot import HostRoot
from hpcbind.image.contents import ImageFacts, image_facts, image_facts_from_squashfs
from hpcbind.mpi.abi import mpi_lib
from hpcbind.mpi.host import discover
from hpcbind.plan import CONTAINER_LIBDIR, Check, Link, Mount, PlanPart, Provenance, Status

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
HOST_LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
HOST_LIBSTDCXX = f"{MULTIARCH}/libstdc++.so.6"
HOST_LIBIBVERBS = f"{MULTIARCH}/libibverbs.so.1"
HOST_MLX5 = f"{MULTIARCH}/libibverbs/libmlx5-rdmav34.so"  # rdma-core 44's real provider

GLCORE = SharedLib("libnvidia-glcore.so.550", needs=("GLIBC_2.2.5", "GLIBC_2.34"))
NVVM = SharedLib("libnvidia-nvvm.so.4", needs=("GLIBC_2.2.5", "GLIBCXX_3.4.29"))
GLDISPATCH = SharedLib("libGLdispatch.so.0", needs=("GLIBC_2.2.5", "GLIBC_2.34"))
CUDA32 = SharedLib("libcuda.so.1", bits=32)
# an older distribution's glibc and libstdc++: the same sonames, fewer symbol versions
OLD_LIBC = SharedLib("libc.so.6", needs=(), defines=("GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.31"))
OLD_LIBSTDCXX = SharedLib("libstdc++.so.6", needs=(), defines=("GLIBCXX_3.4", "GLIBCXX_3.4.28"))
# an rdma-core older than the host's: its providers' private ABI was 22
OLD_LIBIBVERBS = SharedLib("libibverbs.so.1", needs=(), defines=("IBVERBS_1.0", "IBVERBS_1.1", "IBVERBS_PRIVATE_22"))


# --- builders ------------------------------------------------------------------------------


def host_lib(tmp: Path, lib: SharedLib | str, provider: str = "gpu.nvidia", rule: str = "capability:graphics",
             version: str = "", destination: str = "") -> Mount:
    """A host library as a provider plans it: the file, and its ELF facts as provenance."""
    if isinstance(lib, SharedLib):
        path = tmp / "host" / lib.soname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(compile_lib(lib))
    else:
        path = Path(os.path.realpath(lib))
    info = elf_info(path)
    return Mount(str(path), destination or f"{CONTAINER_LIBDIR}/{path.name}", "lib", provider, rule,
                 provenance=Provenance(realpath=str(path), soname=info.soname, elf_class=info.elf_class,
                                       machine=info.machine, needs=info.needs, version=version))


def image(tmp: Path, *libs: SharedLib | str) -> ImageFacts:
    """An image tree: libraries in its multiarch directory (a compiled one under its soname, a
    real one under its real file name), soname links and cache made by ldconfig."""
    root = tmp / "image"
    lib_dir = root / MULTIARCH.lstrip("/")
    lib_dir.mkdir(parents=True, exist_ok=True)
    for lib in libs:
        if isinstance(lib, SharedLib):
            (lib_dir / lib.soname).write_bytes(compile_lib(lib))
        else:
            shutil.copyfile(os.path.realpath(lib), lib_dir / Path(os.path.realpath(lib)).name)
    run_ldconfig(root, [MULTIARCH])
    return image_facts(HostRoot(root))


def modern(tmp: Path, *more: SharedLib | str) -> ImageFacts:
    return image(tmp, HOST_LIBC, HOST_LIBSTDCXX, *more)


def old(tmp: Path, *more: SharedLib | str) -> ImageFacts:
    return image(tmp, OLD_LIBC, OLD_LIBSTDCXX, *more)


def busybox(arch: str) -> ImageFacts:
    from hpcbind.image.sif import SifImage

    sif = SIF_CORPUS / "singularityce" / "images" / f"busybox_{arch}.sif"
    return image_facts_from_squashfs(sif, SifImage.open(sif).primary_partition().offset)


def named(part: PlanPart, name: str) -> list[Check]:
    return [c for c in part.checks if c.name == name]


def summary(checks: list[Check]) -> list[tuple[Status, str, str]]:
    return [(c.status, c.message, c.fix) for c in checks]


# --- glibc and libstdc++ ---------------------------------------------------------------------


def test_glibc_floor_ok(tmp_path: Path) -> None:
    libs = [host_lib(tmp_path, GLCORE), host_lib(tmp_path, NVVM, rule="capability:compute")]
    facts = modern(tmp_path)
    have = ".".join(os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
    assert summary(named(preflight([PlanPart(mounts=libs)], facts, None), "glibc-floor")) == [
        (Status.OK, f"2 host libraries need at most GLIBC_2.34, image has {have}", "")]


def test_glibc_floor_fails_with_both_versions_and_the_capability(tmp_path: Path) -> None:
    part = preflight([PlanPart(mounts=[host_lib(tmp_path, GLCORE)])], old(tmp_path), None)
    assert summary(named(part, "glibc-floor")) == [(
        Status.FAIL, "libnvidia-glcore.so.550 needs GLIBC_2.34, image has 2.31",
        "use an image with glibc >= 2.34 or drop the 'graphics' capability")]
    assert all(c.provider == "preflight" for c in part.checks)


def test_glibc_floor_fix_names_the_option_without_a_capability(tmp_path: Path) -> None:
    lib = host_lib(tmp_path, GLCORE, provider="fabric.verbs", rule="verbs-lib")
    assert named(preflight([PlanPart(mounts=[lib])], old(tmp_path), None), "glibc-floor")[0].fix == (
        "use an image with glibc >= 2.34 or run without --ib")


def test_glibc_floor_fails_without_glibc() -> None:
    lib = host_lib(Path(), HOST_LIBIBVERBS, provider="fabric.verbs", rule="verbs-lib")
    facts = busybox("amd64")  # a static busybox: no libc.so.6 at all
    assert facts.glibc is None
    assert summary(named(preflight([PlanPart(mounts=[lib])], facts, None), "glibc-floor")) == [(
        Status.FAIL, "the image has no libc.so.6, which libibverbs.so.1 need",
        "use an image with glibc, or run without --ib")]


def test_libstdcxx_floor_ok_and_fail(tmp_path: Path) -> None:
    lib = host_lib(tmp_path, NVVM, rule="capability:compute")
    ok = named(preflight([PlanPart(mounts=[lib])], modern(tmp_path / "a"), None), "libstdcxx-floor")
    assert [(c.status, c.message.startswith("1 host libraries need at most GLIBCXX_3.4.29, image has 3.4."))
            for c in ok] == [(Status.OK, True)]
    fail = named(preflight([PlanPart(mounts=[lib])], old(tmp_path / "b"), None), "libstdcxx-floor")
    assert summary(fail) == [(Status.FAIL, "libnvidia-nvvm.so.4 needs GLIBCXX_3.4.29, image has 3.4.28",
                              "use an image with libstdc++ >= 3.4.29 or drop the 'compute' capability")]


def test_libstdcxx_missing(tmp_path: Path) -> None:
    lib = host_lib(tmp_path, NVVM, rule="capability:compute")
    facts = image(tmp_path, HOST_LIBC)
    assert summary(named(preflight([PlanPart(mounts=[lib])], facts, None), "libstdcxx-floor")) == [(
        Status.FAIL, "the image has no libstdc++.so.6, which libnvidia-nvvm.so.4 need",
        "use an image with libstdc++, or drop the 'compute' capability")]


def test_libraries_without_needs_are_not_floor_checked(tmp_path: Path) -> None:
    lib = host_lib(tmp_path, SharedLib("libplain.so.1", needs=()))
    part = preflight([PlanPart(mounts=[lib])], old(tmp_path), None)
    assert named(part, "libstdcxx-floor") == []


# --- architecture --------------------------------------------------------------------------


def test_architecture_ok_warn_fail(tmp_path: Path) -> None:
    x86 = host_lib(tmp_path, GLCORE)
    facts = modern(tmp_path)
    assert summary(named(preflight([PlanPart(mounts=[x86])], facts, None), "architecture")) == [
        (Status.OK, "1 host libraries match the image's EM_X86_64", "")]

    i386 = host_lib(tmp_path, CUDA32, rule="capability:compute")
    assert i386.provenance.machine == "EM_386"
    assert summary(named(preflight([PlanPart(mounts=[x86, i386])], facts, None), "architecture")) == [
        (Status.OK, "2 host libraries match the image's EM_X86_64", ""),
        (Status.WARN, "libcuda.so.1 is EM_386: only the image's 32-bit programs can load it",
         "install the image's 32-bit runtime if its programs need it")]

    arm = busybox("arm64")
    assert summary(named(preflight([PlanPart(mounts=[x86])], arm, None), "architecture")) == [
        (Status.FAIL, "libnvidia-glcore.so.550 is EM_X86_64, the image is EM_AARCH64",
         "use an image built for EM_X86_64, or drop the 'graphics' capability")]


def test_architecture_unknown_image(tmp_path: Path) -> None:
    empty = image_facts(HostRoot(tmp_path))
    assert summary(named(preflight([PlanPart(mounts=[host_lib(tmp_path, GLCORE)])], empty, None),
                         "architecture")) == [
        (Status.WARN, "the image has neither libc.so.6 nor /bin/sh to tell its architecture from",
         "check that the image is for this host's architecture")]


# --- container-first -----------------------------------------------------------------------


def test_container_first_rejects_what_the_image_ships(tmp_path: Path) -> None:
    mount = host_lib(tmp_path, GLDISPATCH)
    facts = old(tmp_path, GLDISPATCH)  # the image's own, older glibc
    part = preflight([PlanPart(mounts=[mount])], facts, None)
    assert [(r.candidate, r.provider, r.reason) for r in part.rejected] == [(
        mount.source, "gpu.nvidia", f"container-first: the image ships libGLdispatch.so.0 at "
                                    f"{MULTIARCH}/libGLdispatch.so.0")]
    assert summary(named(part, "container-first")) == [
        (Status.OK, "the image's own copies are used for libGLdispatch.so.0", "")]
    # not bound, so its GLIBC_2.34 need does not fail against the image's 2.31
    assert named(part, "glibc-floor") == []


def test_container_first_keeps_driver_libraries_and_warns(tmp_path: Path) -> None:
    mount = host_lib(tmp_path, GLCORE, version="550.54.14")
    facts = modern(tmp_path, GLCORE)
    part = preflight([PlanPart(mounts=[mount])], facts, None)
    assert part.rejected == []
    assert summary(named(part, "container-first")) == [(
        Status.WARN, "the image ships its own copy of host driver libraries, which the host's are bound "
                     f"ahead of: libnvidia-glcore.so.550 (driver 550.54.14; the image's is "
                     f"{MULTIARCH}/libnvidia-glcore.so.550)",
        "remove the driver libraries from the image: they must match the host's kernel driver")]


def test_replacements_over_image_paths_are_not_container_first(tmp_path: Path) -> None:
    facts = modern(tmp_path, f"{MULTIARCH}/libmpi.so.40")
    over = host_lib(tmp_path, f"{MULTIARCH}/libmpi.so.40", provider="mpi.host", rule="mpi-replace",
                    destination=facts.libraries["libmpi.so.40"])
    part = preflight([PlanPart(mounts=[over])], facts, None)
    assert part.rejected == [] and named(part, "container-first") == []


# --- verbs provider ABI --------------------------------------------------------------------


def _verbs_part(tmp: Path, with_libibverbs: bool) -> PlanPart:
    """As fabric.verbs plans a provider: Debian's libmlx5-rdmav34.so is a link to libmlx5.so.1,
    so the real file is bound and the provider name is a link to it."""
    provider = host_lib(tmp, HOST_MLX5, provider="fabric.verbs", rule="verbs-provider")
    file = posixpath.basename(provider.destination)
    part = PlanPart(mounts=[provider], links=[Link(f"{CONTAINER_LIBDIR}/{posixpath.basename(HOST_MLX5)}", file,
                                                   "fabric.verbs")])
    if with_libibverbs:
        part.mounts.append(host_lib(tmp, HOST_LIBIBVERBS, provider="fabric.verbs", rule="verbs-lib"))
    return part


def test_verbs_provider_abi_ok_with_the_same_rdma_core(tmp_path: Path) -> None:
    facts = modern(tmp_path, HOST_LIBIBVERBS)
    part = preflight([_verbs_part(tmp_path, True)], facts, None)
    assert summary(named(part, "verbs-provider-abi")) == [(
        Status.OK, "host providers mlx5 need IBVERBS_PRIVATE_34, which the image's libibverbs.so.1 defines", "")]
    # the image's libibverbs can load them: container-first leaves the host's out
    assert [r.candidate for r in part.rejected] == [os.path.realpath(HOST_LIBIBVERBS)]


def test_verbs_provider_abi_fails_against_an_older_rdma_core(tmp_path: Path) -> None:
    facts = modern(tmp_path, OLD_LIBIBVERBS)
    part = preflight([_verbs_part(tmp_path, False)], facts, None)
    [check] = named(part, "verbs-provider-abi")
    missing = [v for v in elf_info(Path(HOST_MLX5)).version_needs["libibverbs.so.1"]
               if v not in OLD_LIBIBVERBS.defines]
    assert "IBVERBS_PRIVATE_34" in missing
    assert (check.status, check.message) == (
        Status.FAIL, "the image's libibverbs.so.1 cannot load the host verbs providers: "
                     f"mlx5 needs {', '.join(missing)}, but it defines IBVERBS_PRIVATE_22")


def test_verbs_host_libibverbs_is_kept_ahead_of_an_incompatible_one(tmp_path: Path) -> None:
    facts = modern(tmp_path, OLD_LIBIBVERBS)
    part = preflight([_verbs_part(tmp_path, True)], facts, None)
    [check] = named(part, "verbs-provider-abi")
    assert check.status is Status.WARN
    assert check.message.endswith("; the host's libibverbs.so.1 is bound ahead of it instead")
    assert part.rejected == []


def test_no_verbs_check_when_the_image_has_no_libibverbs(tmp_path: Path) -> None:
    part = preflight([_verbs_part(tmp_path, True)], modern(tmp_path), None)
    assert named(part, "verbs-provider-abi") == []


# --- MPI -----------------------------------------------------------------------------------

OPENMPI = f"{MULTIARCH}/libmpi.so.40"
MPICH = f"{MULTIARCH}/libmpich.so.12"


def test_mpi_same_family_ok(tmp_path: Path) -> None:
    host = mpi_lib(HostRoot(), OPENMPI)
    part = preflight([], modern(tmp_path, OPENMPI), host)
    assert summary(named(part, "mpi-abi")) == [
        (Status.OK, f"host {host.describe()}, image {host.describe()}: compatible under the major rule", "")]


def test_mpi_family_mismatch_fails(tmp_path: Path) -> None:
    host = mpi_lib(HostRoot(), OPENMPI)
    [check] = named(preflight([], modern(tmp_path, MPICH), host), "mpi-abi")
    assert check.status is Status.FAIL
    assert check.message.endswith("different MPI ABI families (openmpi vs mpich)")


def test_mpi_rule_is_passed_on(tmp_path: Path) -> None:
    host = mpi_lib(HostRoot(), MPICH)
    newer = compile_source(tmp_path / "libmpich.so.12.9.0", "libmpich.so.12",
                           'const char MPII_Version_string[] = "4.9.0";')
    facts = modern(tmp_path, str(newer))
    assert facts.mpi[0].abi == (12, 9, 0)
    assert named(preflight([], facts, host), "mpi-abi")[0].status is Status.OK  # major
    assert named(preflight([], facts, host, mpi_rule="full"), "mpi-abi")[0].status is Status.WARN


def test_image_without_mpi_uses_the_hosts(tmp_path: Path) -> None:
    host = mpi_lib(HostRoot(), OPENMPI)
    assert summary(named(preflight([], modern(tmp_path), host), "mpi-abi")) == [
        (Status.OK, f"the image ships no MPI library: the host's {host.describe()} is the only one", "")]
    assert named(preflight([], modern(tmp_path), None), "mpi-abi") == []


# --- PMIx ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openmpi_env() -> dict[str, str]:
    """A real rank environment of Open MPI's mpirun (its PMIx server's version and URIs)."""
    out = subprocess.run(["mpirun.openmpi", "--allow-run-as-root", "-np", "1", "env", "-0"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def _pmix_image(tmp: Path, banner: str | None) -> ImageFacts:
    source = f'const char pmix_version_string[] = "{banner}";' if banner else "int unrelated;"
    lib = compile_source(tmp / "build" / "libpmix.so.2.9.9", "libpmix.so.2", source)
    return modern(tmp, str(lib), OPENMPI)


def _launcher(tmp: Path, env: dict[str, str]) -> PlanPart:
    return discover(HostRoot(tmp / "host-root"), env)


def test_pmix_same_release_ok(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    facts = modern(tmp_path, f"{MULTIARCH}/libpmix.so.2")
    version = openmpi_env["PMIX_VERSION"]
    assert summary(named(preflight([_launcher(tmp_path, openmpi_env)], facts, None), "pmix-version")) == [(
        Status.OK, f"the launcher's PMIx server {version}, the image's client {version}: "
                   "cross-version compatible (PMIx >= 3), common wire version 4.1", "")]


def test_pmix_v3_client_speaks_an_older_wire_version(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    facts = _pmix_image(tmp_path, "OpenPMIx 3.2.3 (PMIx Standard: 3.2, Stable ABI: 0.0, Provisional ABI: 0.0)")
    [check] = named(preflight([_launcher(tmp_path, openmpi_env)], facts, None), "pmix-version")
    assert (check.status, check.message.endswith("common wire version 3.0")) == (Status.OK, True)


def test_pmix_before_v3_warns(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    facts = _pmix_image(tmp_path, "OpenPMIx 2.1.1")
    assert summary(named(preflight([_launcher(tmp_path, openmpi_env)], facts, None), "pmix-version")) == [(
        Status.WARN, f"the launcher's PMIx server {openmpi_env['PMIX_VERSION']}, the image's client 2.1.1: "
                     "before v3, PMIx interoperates across versions only between the releases made for it "
                     "(1.2.5, 2.0.3, 2.1.1)", "use PMIx >= 3 on both sides")]


def test_pmix_v1_client_fails(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    facts = _pmix_image(tmp_path, "OpenPMIx 1.2.5")
    [check] = named(preflight([_launcher(tmp_path, openmpi_env)], facts, None), "pmix-version")
    assert (check.status, check.fix) == (Status.FAIL, "use PMIx >= 3 in the image")
    assert check.message.endswith("PMIx 1.x clients only speak the removed usock transport")


def test_pmix_v5_0_0_with_v5_0_1_needs_gds_hash(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    facts = _pmix_image(tmp_path, "OpenPMIx 5.0.0")
    server = {**openmpi_env, "PMIX_VERSION": "5.0.1"}
    [warn] = named(preflight([_launcher(tmp_path, server)], facts, None), "pmix-version")
    assert (warn.status, warn.fix) == (Status.WARN, "set PMIX_MCA_gds=hash (openpmix v5.0.1 release notes)")
    # a server that already chose hash: mpi.host restates it as PMIX_MCA_gds=hash
    hashed = {**server, "PMIX_GDS_MODULE": "hash"}
    [ok] = named(preflight([_launcher(tmp_path, hashed)], facts, None), "pmix-version")
    assert ok.status is Status.OK


def test_pmix_client_without_a_version_or_missing(tmp_path: Path, openmpi_env: dict[str, str]) -> None:
    launcher = _launcher(tmp_path, openmpi_env)
    silent = _pmix_image(tmp_path / "a", None)
    assert [c.status for c in named(preflight([launcher], silent, None), "pmix-version")] == [Status.WARN]
    no_pmix = modern(tmp_path / "b", OPENMPI)
    assert summary(named(preflight([launcher], no_pmix, None), "pmix-version")) == [(
        Status.WARN, f"the launcher's PMIx server {openmpi_env['PMIX_VERSION']}; the image ships no libpmix, "
                     "so its MPI must carry its own PMIx client",
        "install the PMIx client library in the image (Debian: libpmix2)")]
    no_mpi = modern(tmp_path / "c")
    assert named(preflight([launcher], no_mpi, None), "pmix-version") == []


def test_no_pmix_check_without_a_pmix_launcher(tmp_path: Path) -> None:
    facts = modern(tmp_path, f"{MULTIARCH}/libpmix.so.2")
    hydra = _launcher(tmp_path, {"PMI_RANK": "0", "PMI_SIZE": "1", "PMI_FD": "3"})
    assert named(preflight([hydra], facts, None), "pmix-version") == []


# --- no image ------------------------------------------------------------------------------


def test_no_image_no_checks(tmp_path: Path) -> None:
    assert preflight([PlanPart(mounts=[host_lib(tmp_path, GLCORE)])], None, None) == PlanPart()


# --- ROCm ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amd_node(tmp_path_factory) -> PlanPart:
    """gpu.rocm's part for an MI250X fixture node (ROCm in /opt/rocm, amdgpu loaded)."""
    from hpcbind.gpu import rocm

    root = tmp_path_factory.mktemp("amd")
    build_amd_node(root)
    return rocm.discover(HostRoot(root), {})


def _rocm_image(tmp: Path, version: str | None) -> ImageFacts:
    facts = modern(tmp)
    if version is None:
        return facts
    info = tmp / "image/opt" / f"rocm-{version}" / ".info"
    info.mkdir(parents=True)
    (info / "version").write_text(f"{version}-1\n")
    return image_facts(HostRoot(tmp / "image"))


def test_rocm_same_release_ok(amd_node: PlanPart, tmp_path: Path) -> None:
    [check] = named(preflight([amd_node], _rocm_image(tmp_path, ROCM_VERSION), None), "rocm-version")
    assert (check.status, check.message) == (Status.OK, f"host ROCm {ROCM_VERSION} and image ROCm "
                                                        f"{ROCM_VERSION}-1 match")


def test_rocm_other_release_warns(amd_node: PlanPart, tmp_path: Path) -> None:
    major, minor = ROCM_VERSION.split(".")[:2]
    other = f"{major}.{int(minor) + 1}.0"
    [check] = named(preflight([amd_node], _rocm_image(tmp_path, other), None), "rocm-version")
    assert (check.status, check.message) == (Status.WARN, f"host ROCm {ROCM_VERSION} and image ROCm {other}-1 differ")


def test_rocm_no_check_without_rocm_in_the_image_or_on_the_command(amd_node: PlanPart, tmp_path: Path) -> None:
    assert named(preflight([amd_node], _rocm_image(tmp_path / "a", None), None), "rocm-version") == []
    assert named(preflight([], _rocm_image(tmp_path / "b", ROCM_VERSION), None), "rocm-version") == []


def test_rocm_libraries_meet_the_glibc_floor(amd_node: PlanPart, tmp_path: Path) -> None:
    """The provider's own libraries go through the same floors: its libamdocl64 needs GLIBC_2.34."""
    failed = named(preflight([amd_node], old(tmp_path), None), "glibc-floor")
    needing = [m for m in amd_node.mounts if m.kind == "lib" and "GLIBC_2.34" in m.provenance.needs]
    assert needing
    assert {c.message for c in failed} == {f"{m.provenance.soname} needs GLIBC_2.34, image has 2.31" for m in needing}
    assert all(c.status is Status.FAIL for c in failed)
