"""Image facts read without mounting: a small image tree of the host's real libraries (glibc,
libstdc++, Open MPI, PMIx, libibverbs), indexed by the real ``ldconfig -r`` and packed by the
real ``mksquashfs``, read as a directory, as a squashfs and as a squashfs at an offset; and the
real busybox SIFs of the conformance corpus (amd64, arm64, ppc64le), read at their partition's
offset. Expected values come from other tools: glibc's confstr, binutils' readelf, ldconfig -p,
ompi_info, and the SIF reader."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import BUSYBOX_SIF, SIF_CORPUS
from hpcbind.errors import HpcbindError
from hpcbind.hostroot import HostRoot
from hpcbind.host.loader import library_dirs
from hpcbind.image.contents import ImageFacts, image_facts, image_facts_from_squashfs
from hpcbind.mpi.abi import mpi_lib, pmix_lib

MULTIARCH = "/usr/lib/x86_64-linux-gnu"
# image path -> the host file copied there (its real file, links followed)
IMAGE_LIBS = {
    f"{MULTIARCH}/libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    f"{MULTIARCH}/libstdc++.so.6.0.30": f"{MULTIARCH}/libstdc++.so.6",
    f"{MULTIARCH}/libmpi.so.40.30.4": f"{MULTIARCH}/libmpi.so.40",
    f"{MULTIARCH}/pmix2/lib/libpmix.so.2.6.2": f"{MULTIARCH}/libpmix.so.2",
    f"{MULTIARCH}/libibverbs.so.1.14.44.0": f"{MULTIARCH}/libibverbs.so.1",
}
ROCM = "6.0.2-115"
CUDA = {"cuda": {"name": "CUDA SDK", "version": "12.2.0"}, "cuda_cudart": {"version": "12.2.53"}}
SIF_BUSYBOX = [("amd64", "EM_X86_64"), ("arm64", "EM_AARCH64"), ("ppc64le", "EM_PPC64")]


def _readelf_defs(path: Path | str, prefix: str) -> tuple[int, ...]:
    out = subprocess.run(["readelf", "-VW", str(path)], capture_output=True, text=True, check=True).stdout
    found = re.findall(rf"Name: {prefix}_([\d.]+)\b", out)
    return max(tuple(int(n) for n in v.split(".")) for v in found)


def _build_image(root: Path) -> None:
    for dest, source in IMAGE_LIBS.items():
        target = root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.realpath(source), target)
    # Debian's layout: the library dirs come from ld.so.conf.d, and libpmix lives in a
    # private directory with only a link in the multiarch one
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# as Debian ships it\ninclude /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/x86_64-linux-gnu.conf").write_text(f"# Multiarch support\n{MULTIARCH}\n")
    (root / MULTIARCH.lstrip("/") / "libpmix.so.2").symlink_to("pmix2/lib/libpmix.so.2.6.2")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").mkdir()
    shutil.copyfile("/bin/dash", root / "bin/dash")
    (root / "bin/sh").symlink_to("dash")
    # absolute links, as the installers write them: they must resolve inside the image
    (root / "opt/rocm-6.0.2/.info").mkdir(parents=True)
    (root / "opt/rocm-6.0.2/.info/version").write_text(ROCM + "\n")
    (root / "opt/rocm").symlink_to("/opt/rocm-6.0.2")
    (root / "usr/local/cuda-12.2").mkdir(parents=True)
    (root / "usr/local/cuda-12.2/version.json").write_text(json.dumps(CUDA))
    (root / "usr/local/cuda").symlink_to("/usr/local/cuda-12.2")


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image") / "root"
    root.mkdir()
    _build_image(root)
    return root


@pytest.fixture(scope="module")
def squashfs(image_tree: Path) -> Path:
    path = image_tree.parent / "image.sqfs"
    subprocess.run(["mksquashfs", str(image_tree), str(path), "-noappend", "-no-progress", "-quiet"],
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def facts(image_tree: Path) -> ImageFacts:
    return image_facts(HostRoot(image_tree))


def test_glibc_and_libstdcxx_as_glibc_and_readelf_say(facts: ImageFacts, image_tree: Path) -> None:
    confstr = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36": the libc copied into the image
    assert facts.glibc == tuple(int(n) for n in confstr.split()[1].split("."))
    assert facts.glibcxx == _readelf_defs(image_tree / MULTIARCH.lstrip("/") / "libstdc++.so.6.0.30", "GLIBCXX")
    assert (facts.machine, facts.elf_class) == ("EM_X86_64", "ELFCLASS64")


def test_sonames_are_what_ldconfig_lists(facts: ImageFacts, image_tree: Path) -> None:
    out = subprocess.run(["ldconfig", "-p", "-C", str(image_tree / "etc/ld.so.cache")],
                         capture_output=True, text=True, check=True).stdout
    listed = dict(re.findall(r"^\s+(\S+) \(.*\) => (\S+)$", out, re.MULTILINE))
    assert listed  # ldconfig found the libraries
    assert {name: facts.libraries[name] for name in listed} == listed
    # and the real files in the library directories, which a loader without a cache finds
    assert facts.libraries["libmpi.so.40.30.4"] == f"{MULTIARCH}/libmpi.so.40.30.4"


def test_mpi_pmix_and_verbs_of_the_image(facts: ImageFacts, image_tree: Path) -> None:
    root = HostRoot(image_tree)
    assert facts.mpi == (mpi_lib(root, f"{MULTIARCH}/libmpi.so.40"),)
    assert facts.mpi[0].path == f"{MULTIARCH}/libmpi.so.40.30.4"  # image paths, not the tree's
    ompi = subprocess.run(["ompi_info", "--version"], capture_output=True, text=True, check=True).stdout
    assert f"Open MPI v{facts.mpi[0].version}" in ompi
    assert facts.pmix == pmix_lib(root, f"{MULTIARCH}/libpmix.so.2")
    assert facts.pmix.path == f"{MULTIARCH}/pmix2/lib/libpmix.so.2.6.2"
    defs = subprocess.run(["readelf", "-VW", str(image_tree / MULTIARCH.lstrip("/") / "libibverbs.so.1.14.44.0")],
                          capture_output=True, text=True, check=True).stdout
    assert set(facts.ibverbs_defs) == set(re.findall(r"Name: (IBVERBS_\S+)", defs))


def test_toolkit_versions_through_absolute_links(facts: ImageFacts) -> None:
    assert facts.rocm_version == ROCM
    assert facts.cuda_version == CUDA["cuda"]["version"]


def test_cuda_10_version_txt(tmp_path: Path) -> None:
    (tmp_path / "usr/local/cuda/").mkdir(parents=True)
    (tmp_path / "usr/local/cuda/version.txt").write_text("CUDA Version 10.2.89\n")
    assert image_facts(HostRoot(tmp_path)).cuda_version == "10.2.89"


def test_library_dirs_follow_includes_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "etc/ld.so.conf.d"
    conf.mkdir(parents=True)
    (tmp_path / "etc/ld.so.conf").write_text(
        "/opt/first  # comment\ninclude ld.so.conf.d/*.conf\nhwcap 0 nosegneg\n/usr/lib:/opt/old=libc6\n")
    (conf / "b.conf").write_text("/opt/b\n")
    (conf / "a.conf").write_text("/opt/a\ninclude /etc/ld.so.conf\n")  # a loop: must end
    (conf / "a.conf.disabled").write_text("/opt/never\n")
    # the include loop ends at its depth limit; each directory is listed once, where first seen
    dirs = library_dirs(HostRoot(tmp_path))
    assert dirs[:8] == (
        "/opt/first", "/opt/a", "/usr/lib", "/opt/old", "/opt/b", "/lib64", "/usr/lib64", "/lib")
    # then the multiarch directories Debian's loader searches without any configuration
    assert dirs[8:10] == ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
    assert "/usr/lib/aarch64-linux-gnu" in dirs[10:]


# --- squashfs ---------------------------------------------------------------------------


def test_squashfs_reads_as_the_directory(squashfs: Path, facts: ImageFacts) -> None:
    assert image_facts_from_squashfs(squashfs) == facts


def test_squashfs_at_an_offset(squashfs: Path, facts: ImageFacts, tmp_path: Path) -> None:
    padded = tmp_path / "padded.img"
    padded.write_bytes(b"\0" * 4096 + squashfs.read_bytes())  # as a SIF puts its partition
    assert image_facts_from_squashfs(padded, offset=4096) == facts


@pytest.mark.parametrize(("arch", "machine"), SIF_BUSYBOX)
def test_busybox_sifs(arch: str, machine: str) -> None:
    from hpcbind.image.sif import SifImage

    sif = SIF_CORPUS / "singularityce" / "images" / f"busybox_{arch}.sif"
    offset = SifImage.open(sif).primary_partition().offset
    facts = image_facts_from_squashfs(sif, offset)
    assert facts.machine == machine
    assert facts.mpi == () and facts.pmix is None and facts.rocm_version == facts.cuda_version == ""
    listing = subprocess.run(["unsquashfs", "-o", str(offset), "-lln", str(sif)],
                             capture_output=True, text=True, check=True).stdout
    entry = re.search(r"squashfs-root(/\S+/libc\.so\.6)(?: -> (\S+))?$", listing, re.MULTILINE)
    if entry is None:  # static busybox: no glibc, no library at all
        assert (facts.glibc, facts.libraries) == (None, {})
        return
    assert facts.libraries["libc.so.6"].endswith("/libc.so.6")
    real = os.path.join(os.path.dirname(entry.group(1)), entry.group(2) or "libc.so.6")
    libc = subprocess.run(["unsquashfs", "-o", str(offset), "-cat", str(sif), real],
                          capture_output=True, check=True).stdout
    with tempfile.NamedTemporaryFile() as copy:
        copy.write(libc)
        copy.flush()
        assert facts.glibc == _readelf_defs(copy.name, "GLIBC")


def test_amd64_partition_is_where_the_brief_says() -> None:
    from hpcbind.image.sif import SifImage

    assert SifImage.open(SIF_CORPUS / "singularityce/images/busybox_amd64.sif").primary_partition().offset == 45056


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hpcbind-facts-*")}


def test_not_a_squashfs_is_a_user_error_and_leaves_nothing(squashfs: Path) -> None:
    before = _leftovers()
    with pytest.raises(HpcbindError) as err:
        image_facts_from_squashfs(squashfs, offset=4096)
    assert str(err.value).startswith(f"cannot read a squashfs in {squashfs} at offset 4096: ")
    assert str(err.value).endswith("give the partition's offset (hpcrun sif list)")
    with pytest.raises(HpcbindError):
        image_facts_from_squashfs(squashfs.parent / "missing.sqfs")
    assert _leftovers() == before


def test_facts_leave_no_temporary_directory(squashfs: Path) -> None:
    before = _leftovers()
    image_facts_from_squashfs(squashfs)
    assert _leftovers() == before


def test_rocm_side_by_side_without_the_link(tmp_path: Path) -> None:
    tree = tmp_path / "image"
    for version, full in (("6.9.1", "6.9.1-10"), ("6.10.0", "6.10.0-3")):
        info = tree / f"opt/rocm-{version}/.info"
        info.mkdir(parents=True)
        (info / "version").write_text(full + "\n")
    assert image_facts(HostRoot(tree)).rocm_version == "6.10.0-3"  # newest, compared as numbers
    squashfs = tmp_path / "rocm.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(squashfs), "-noappend", "-no-progress", "-quiet"],
                   check=True, capture_output=True)
    assert image_facts_from_squashfs(squashfs).rocm_version == "6.10.0-3"


def test_cached_facts_equal_fresh_ones_and_follow_the_file(tmp_path: Path) -> None:
    from hpcbind.image.contents import cached_image_facts, facts_from_dict, facts_to_dict

    image = tmp_path / "busybox.sif"
    image.write_bytes(BUSYBOX_SIF.read_bytes())
    fresh = image_facts_from_squashfs(image, 45056)
    assert facts_from_dict(json.loads(json.dumps(facts_to_dict(fresh)))) == fresh
    cache = tmp_path / "cache"
    assert cached_image_facts(image, 45056, cache) == fresh
    entries = list((cache / "hpcbind" / "facts").iterdir())
    assert len(entries) == 1
    entries[0].write_text(json.dumps({**facts_to_dict(fresh), "cuda_version": "from-cache"}))
    assert cached_image_facts(image, 45056, cache).cuda_version == "from-cache"
    image.write_bytes(BUSYBOX_SIF.read_bytes() + b"\0")  # a new file: a new key, read afresh
    assert cached_image_facts(image, 45056, cache).cuda_version == ""


def test_stored_facts_read_without_building_them(tmp_path: Path) -> None:
    """What hpcrun mpirun reads before any rank starts: the JSON as stored, None where none
    is stored or it is not JSON (the caller then computes the facts)."""
    from hpcbind.image import facts_cache
    from hpcbind.image.contents import cached_image_facts, facts_to_dict

    image, cache = tmp_path / "busybox.sif", tmp_path / "cache"
    image.write_bytes(BUSYBOX_SIF.read_bytes())
    assert facts_cache.read(str(image), 45056, str(cache)) is None
    facts = cached_image_facts(image, 45056, cache)
    assert facts_cache.read(str(image), 45056, str(cache)) == json.loads(
        json.dumps(facts_to_dict(facts)))
    Path(facts_cache.entry_path(str(image), 45056, str(cache))).write_text("{not json")
    assert facts_cache.read(str(image), 45056, str(cache)) is None
    assert cached_image_facts(image, 45056, cache) == facts  # computed and stored again
    assert facts_cache.read(str(image), 45056, str(cache)) is not None
