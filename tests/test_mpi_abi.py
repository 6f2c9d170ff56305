"""MPI and PMIx libraries read from the host's real files (Debian's Open MPI 4.1.4, MPICH 4.0.2,
PMIx 4.2.2), checked against what the installed tools and a live launcher report; Sarus's ABI
rule matrix (its own test_AbiChecker.cpp cases); and MPICH-derivative and MPI-5 ABI libraries
compiled here with the banners and sonames those vendors ship."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from hpcbind.errors import HpcbindError
from hpcbind.host.elf import elf_info
from hpcbind.hostroot import HostRoot
from hpcbind.host.loader import shipped_libraries
from hpcbind.mpi.abi import Family, MpiLib, find_mpi, find_pmix, mpi_abi_check, mpi_lib, pmix_lib
from hpcbind.plan import Status

LIBDIR = "/usr/lib/x86_64-linux-gnu"
OPENMPI = f"{LIBDIR}/libmpi.so.40"
MPICH = f"{LIBDIR}/libmpich.so.12"
PMIX = f"{LIBDIR}/libpmix.so.2"
HOST = HostRoot()


def _tool_version(argv: list[str], pattern: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return re.search(pattern, out).group(1)


@pytest.fixture(scope="module")
def openmpi() -> MpiLib:
    return mpi_lib(HOST, OPENMPI)


@pytest.fixture(scope="module")
def mpich() -> MpiLib:
    return mpi_lib(HOST, MPICH)


def _abi_of(path: str) -> tuple[int, ...]:
    real = os.path.realpath(path)
    return tuple(int(n) for n in Path(real).name.partition(".so.")[2].split("."))


def test_open_mpi_as_ompi_info_and_readelf_say(openmpi: MpiLib) -> None:
    elf = elf_info(Path(OPENMPI))
    assert openmpi.family is Family.OPENMPI
    assert openmpi.vendor == "Open MPI"
    assert openmpi.version == _tool_version(["ompi_info", "--version"], r"Open MPI v(\S+)")
    assert openmpi.soname == elf.soname == "libmpi.so.40"
    assert openmpi.path == os.path.realpath(OPENMPI)
    assert openmpi.abi == _abi_of(OPENMPI)
    assert (openmpi.machine, openmpi.elf_class) == (elf.machine, elf.elf_class)
    assert openmpi.describe() == f"Open MPI {openmpi.version} ({Path(os.path.realpath(OPENMPI)).name})"


def test_mpich_as_mpichversion_and_readelf_say(mpich: MpiLib) -> None:
    assert mpich.family is Family.MPICH
    assert mpich.vendor == "MPICH"
    assert mpich.version == _tool_version(["mpichversion"], r"MPICH Version:\s+(\S+)")
    assert mpich.soname == elf_info(Path(MPICH)).soname == "libmpich.so.12"
    assert mpich.abi == _abi_of(MPICH)


def test_pmix_version_is_the_one_a_live_server_announces() -> None:
    # the server in Open MPI's mpirun is the same libpmix: it puts its version in each rank's env
    out = subprocess.run(["mpirun.openmpi", "--allow-run-as-root", "-np", "1", "printenv", "PMIX_VERSION"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lib = pmix_lib(HOST, PMIX)
    assert lib.version == out.strip()
    assert lib.soname == elf_info(Path(PMIX)).soname == "libpmix.so.2"
    assert lib.abi == _abi_of(PMIX)
    assert lib.release == tuple(int(n) for n in re.match(r"[\d.]+", lib.version).group(0).split("."))


def test_find_on_the_host_via_its_loader_cache(openmpi: MpiLib, mpich: MpiLib) -> None:
    libraries = shipped_libraries(HOST)
    assert find_mpi(HOST, libraries) == (openmpi, mpich)  # by soname: libmpi < libmpich
    assert find_pmix(HOST, libraries) == pmix_lib(HOST, PMIX)


def test_other_libraries_are_not_mpi() -> None:
    assert mpi_lib(HOST, f"{LIBDIR}/libpmix.so.2") is None  # an ELF library, but no MPI
    assert mpi_lib(HOST, "/etc/hostname") is None  # not ELF
    assert mpi_lib(HOST, f"{LIBDIR}/no-such-lib.so.1") is None


# --- Sarus's rules ------------------------------------------------------------------------

# (host ABI, image ABI) -> status per rule, the cases of Sarus's test_AbiChecker.cpp
SARUS_CASES = [
    ((1, 2), (1, 2), {"major": Status.OK, "full": Status.OK, "strict": Status.OK}),
    ((1, 2, 3), (1, 2, 3), {"major": Status.OK, "full": Status.OK, "strict": Status.OK}),
    ((1, 3), (1, 2), {"major": Status.OK, "full": Status.OK, "strict": Status.FAIL}),
    ((1, 2, 4), (1, 2, 3), {"major": Status.OK, "full": Status.OK, "strict": Status.OK}),
    ((1, 2), (1, 3), {"major": Status.OK, "full": Status.WARN, "strict": Status.FAIL}),
    ((1, 2, 3), (1, 2, 4), {"major": Status.OK, "full": Status.OK, "strict": Status.OK}),
    ((1,), (1, 2), {"major": Status.OK, "full": Status.WARN, "strict": Status.FAIL}),
    ((1,), (1, 2, 3), {"major": Status.OK, "full": Status.WARN, "strict": Status.FAIL}),
    ((1, 2), (1,), {"major": Status.OK, "full": Status.OK, "strict": Status.FAIL}),
    ((1, 2), (1, 2, 3), {"major": Status.OK, "full": Status.OK, "strict": Status.OK}),
    ((1,), (2,), {"major": Status.FAIL, "full": Status.FAIL, "strict": Status.FAIL}),
    ((3,), (2,), {"major": Status.FAIL, "full": Status.FAIL, "strict": Status.FAIL}),
]


@pytest.mark.parametrize("rule", ["major", "full", "strict"])
@pytest.mark.parametrize(("host_abi", "image_abi", "expected"), SARUS_CASES)
def test_sarus_rule_matrix(mpich: MpiLib, rule: str, host_abi, image_abi, expected) -> None:
    host = replace(mpich, abi=host_abi)
    image = replace(mpich, abi=image_abi)
    check = mpi_abi_check(host, image, rule)
    assert (check.name, check.status, check.provider) == ("mpi-abi", expected[rule], "mpi.abi")
    assert (check.fix != "") == (check.status is not Status.OK)


def test_real_libraries_are_compatible_with_themselves(openmpi: MpiLib, mpich: MpiLib) -> None:
    for lib in (openmpi, mpich):
        for rule in ("major", "full", "strict"):
            assert mpi_abi_check(lib, lib, rule).status is Status.OK


def test_families_never_mix(openmpi: MpiLib, mpich: MpiLib) -> None:
    check = mpi_abi_check(openmpi, mpich)
    assert check.status is Status.FAIL
    assert check.message == (f"host {openmpi.describe()}, image {mpich.describe()}: "
                             "different MPI ABI families (openmpi vs mpich)")
    assert check.fix == ("use an image built against Open MPI, or run the image's own MPI "
                         "without binding the host's")


def test_mpich_abi_members_share_a_major_under_another_name(mpich: MpiLib) -> None:
    image = replace(mpich, soname="libmpi.so.12", vendor="Intel MPI", abi=(12, 0, 0))
    check = mpi_abi_check(mpich, image)
    assert check.status is Status.OK
    assert check.message.endswith("the image links libmpi.so.12, so bind the host's library under that name")


def test_unknown_rule_is_a_user_error(mpich: MpiLib) -> None:
    with pytest.raises(HpcbindError) as err:
        mpi_abi_check(mpich, mpich, "minor")
    assert str(err.value) == ("unknown MPI compatibility rule 'minor'; use one of major, full, strict "
                              "(Sarus's MPI_COMPATIBILITY_TYPE)")


# --- vendors no package here ships: compiled with their banners ---------------------------


def compile_source(path: Path, soname: str, source: str) -> Path:
    """A shared library built by gcc from C ``source`` (vendor banners are plain strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c_file = path.with_name(path.name + ".c")
    c_file.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(c_file), f"-Wl,-soname,{soname}"],
                   check=True, capture_output=True)
    c_file.unlink()
    return path


@pytest.mark.parametrize(("soname", "source", "family", "vendor", "version"), [
    # Intel MPI's MPI_Get_library_version banner is a literal with the release in it
    ("libmpi.so.12", 'const char banner[] = "Intel(R) MPI Library 2021.10 for Linux* OS";',
     Family.MPICH, "Intel MPI", "2021.10"),
    # ... and wins over the MPICH base release a derivative's symbol names
    ("libmpi.so.12", 'const char banner[] = "Intel(R) MPI Library 2021.10 for Linux* OS";\n'
                     'const char MPIR_Version_string[] = "3.4a2";',
     Family.MPICH, "Intel MPI", "2021.10"),
    ("libmpi_cray.so.12", 'const char banner[] = "CRAY MPICH version 8.1.26 (ANL base 3.4a2)";',
     Family.MPICH, "Cray MPICH", "8.1.26"),
    # MVAPICH2 prints its version through a format: the release comes from MPICH's symbol
    ("libmpi.so.12", 'const char banner[] = "MVAPICH2 Version      :\\t%s";\n'
                     'const char MPIR_Version_string[] = "3.2.1";',
     Family.MPICH, "MVAPICH", "3.2.1"),
    # MPICH --enable-mpi-abi: the standard ABI, whoever built it
    ("libmpi_abi.so.0", 'const char MPII_Version_string[] = "4.3.0";', Family.MPI_ABI, "MPICH", "4.3.0"),
    # nothing but the name to go by
    ("libmpi.so.12", "int unrelated;", Family.MPICH, "MPICH", ""),
])
def test_vendor_from_banner_symbol_or_soname(tmp_path: Path, soname, source, family, vendor, version) -> None:
    lib = compile_source(tmp_path / (soname + ".7.1"), soname, source)
    found = mpi_lib(HostRoot(tmp_path), "/" + lib.name)
    assert (found.family, found.vendor, found.version) == (family, vendor, version)
    assert found.soname == soname
    assert found.abi == tuple(int(n) for n in lib.name.partition(".so.")[2].split("."))


def test_unknown_soname_without_banner_is_not_mpi(tmp_path: Path) -> None:
    lib = compile_source(tmp_path / "libmpi.so.99", "libmpi.so.99", "int unrelated;")
    assert mpi_lib(HostRoot(tmp_path), "/" + lib.name) is None
