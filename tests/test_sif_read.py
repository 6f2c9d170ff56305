"""SIF reading and siftool rendering against the reference corpus in tests/data/sif.

Expected values come from MANIFEST.md itself: its image table (section 1) and its whole-image
golden table (section 4) are parsed, row by row, and every field a row states is checked
against what ``SifImage`` decodes. The siftool goldens are compared byte for byte.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcbind.cli import main
from hpcbind.errors import HpcbindError
from hpcbind.image import siftool
from hpcbind.image.sif import (
    ARCH_CODES,
    GO_ZERO_TIME,
    DataType,
    FsType,
    HashType,
    PartType,
    SifImage,
    arch_code,
    arch_name,
    host_arch,
)

CORPUS = Path(__file__).resolve().parent / "data" / "sif"
GOLDEN = CORPUS / "sylabs-sif" / "golden"
IMAGES = CORPUS / "sylabs-sif" / "images"

# MANIFEST's spellings of the codes.
TYPES = {
    "Deffile": DataType.DEFFILE,
    "GenericJSON": DataType.GENERIC_JSON,
    "Generic": DataType.GENERIC,
    "Partition": DataType.PARTITION,
    "Signature": DataType.SIGNATURE,
    "CryptoMessage": DataType.CRYPTO_MESSAGE,
    "SBOM": DataType.SBOM,
    "OCIRootIndex": DataType.OCI_ROOT_INDEX,
    "OCIBlob": DataType.OCI_BLOB,
}
FS = {"Squashfs": FsType.SQUASHFS, "Raw": FsType.RAW, "Ext3": FsType.EXT3}
PARTS = {"System": PartType.SYSTEM, "PrimSys": PartType.PRIMSYS}
TOKEN = re.compile(r"([\w/]+)=('(?:[^'\\]|\\.)*'|\S+)|(\S+)")


@dataclass(frozen=True)
class Row:
    file: Path
    size: int | None
    sha256: str | None
    header: str
    descriptors: str


def manifest_rows() -> list[Row]:
    """Section 1 rows (6 cells) and section 4 whole-image golden rows (4 cells)."""
    rows = []
    for line in (CORPUS / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        path = re.fullmatch(r"`([\w./-]+/[\w.-]+\.(?:sif|golden))`", cells[0])
        if not line.startswith("| `") or path is None:
            continue
        if len(cells) == 6:
            _, size, digest, _origin, header, descriptors = cells
            rows.append(Row(CORPUS / path[1], int(size), digest.strip("`"), header, descriptors))
        elif len(cells) == 4:
            _, size, header, descriptors = cells
            rows.append(Row(GOLDEN / "pkg-sif" / path[1], int(size), None, header, descriptors))
    return rows


ROWS = manifest_rows()


def tokens(spec: str) -> list[tuple[str | None, str]]:
    return [(m[1], m[2]) if m[1] else (None, m[3]) for m in TOKEN.finditer(spec)]


def check_header(image: SifImage, spec: str) -> None:
    h = image.header
    for key, value in tokens(spec):
        if key is None:
            assert value == f"v{h.version_text}"
        elif key == "arch":
            assert h.primary_arch == ("unknown" if value == "-" else value)
        elif key == "id":
            assert h.id.int == 0 if value == "nil" else str(h.id).startswith(value.rstrip("…"))
        elif key == "ctime":
            assert h.created_at == int(value)
        elif key == "c/m":
            assert (h.created_at, h.modified_at) == tuple(map(int, value.split("/")))
        elif key == "used":
            used, total = map(int, value.split("/"))
            counts = (len(image.descriptors), h.descriptors_total, h.descriptors_free)
            assert counts == (used, total, total - used)
        elif key == "dataoff":
            assert h.data_offset == int(value)
        elif key == "datasize":
            assert h.data_size == int(value)
        elif key == "launch":
            assert h.launch_script_text == ast.literal_eval(value)
        else:
            pytest.fail(f"unparsed header token {key}={value}")


def signature_format(data: bytes) -> str:
    """How MANIFEST classifies a signature object's content."""
    if data.startswith(b"{"):
        envelope = json.loads(data)
        return "DSSE" if envelope["payloadType"] == "application/vnd.sylabs.sif-metadata+json" else "?"
    assert data.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\n")
    plaintext = data.split(b"\n\n", 1)[1]
    return "PGP-legacy" if plaintext.startswith(b"SIFHASH:\n") else "PGP"


def check_descriptor(image: SifImage, spec: str, digest_of_data: bool) -> None:
    head, *rest = spec.split(" ")
    ident, type_name = head.split(":")
    d = image.get(int(ident))
    assert d.data_type == TYPES[type_name]
    for key, value in tokens(" ".join(rest)):
        if key is None and value[0] == "g":
            assert d.group_id == (0 if value == "g-" else int(value[1:]))
        elif key is None and value.startswith("→G"):
            assert (d.linked_group, d.linked_object) == (int(value[2:]), None)
        elif key is None and value.startswith("→"):
            assert (d.linked_group, d.linked_object) == (None, int(value[1:]))
        elif key is None and value.startswith("@"):
            offset, size = map(int, value[1:].split("+"))
            assert (d.offset, d.size) == (offset, size)
        elif key is None and value.count("/") == 2:
            fs, part, arch = value.split("/")
            p = d.partition
            assert (p.fstype, p.parttype, p.arch) == (FS[fs], PARTS[part], arch)
        elif key is None and value in ("PGP", "PGP-legacy", "DSSE"):
            assert signature_format(image.read(d)) == value
        elif key is None and value in ("SHA256", "SHA384"):
            assert d.signature_hash == HashType[value]
        elif key is None and value.startswith("sha256:"):
            assert d.oci_digest.startswith(value.rstrip("…"))
            if digest_of_data:
                assert d.oci_digest == "sha256:" + hashlib.sha256(image.read(d)).hexdigest()
        elif key == "fp":
            assert d.signature_fingerprint.hex().upper().endswith(value)
        elif key == "name":
            assert d.name_str == ast.literal_eval(value)
        elif key == "pad":
            assert d.size_with_padding == int(value)
        elif key == "t":
            assert (d.created_at, d.modified_at) == tuple(map(int, value.split("/")))
        elif key == "fmt" and d.data_type == DataType.SBOM:
            assert d.sbom_format == int(value)
        elif key == "fmt":
            assert d.crypto_message[0] == int(value)
        elif key == "msg":
            assert d.crypto_message[1] == int(value, 16)
        else:
            pytest.fail(f"unparsed descriptor token {key}={value}")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: str(r.file.relative_to(CORPUS)))
def test_manifest_row(row: Row) -> None:
    raw = row.file.read_bytes()
    assert len(raw) == row.size
    if row.sha256:
        assert hashlib.sha256(raw).hexdigest().startswith(row.sha256)
    with SifImage.open(row.file) as image:
        check_header(image, row.header)
        specs = [s for s in row.descriptors.split("; ") if s not in ("", "—")]
        assert [int(s.split(":")[0]) for s in specs] == [d.id for d in image.descriptors]
        for spec in specs:
            # The writer records the data's digest; the Set* goldens overwrote it on purpose.
            check_descriptor(image, spec, digest_of_data=row.file.suffix == ".sif")
        if row.file.suffix == ".golden":
            # The golden table states an object's times (t=) only where they are not zero.
            for spec, d in zip(specs, image.descriptors):
                if " t=" not in spec:
                    assert d.created_at == d.modified_at == GO_ZERO_TIME


def test_manifest_tables_cover_the_corpus() -> None:
    """Every image on disk is a MANIFEST row or a siftool golden's input; every whole-image
    writer golden is a row. A parser that silently found nothing would fail here."""
    listed = {r.file for r in ROWS}
    on_disk = set(CORPUS.rglob("*.sif"))
    golden_inputs = {image_for(case) for case in cases("TestApp_Header")}
    assert on_disk - listed <= golden_inputs
    assert on_disk - golden_inputs <= listed
    writer_goldens = {
        p
        for p in (GOLDEN / "pkg-sif").rglob("*.golden")
        if "IntegrityReader" not in p.parent.name and p.parent.name != "TestNewDescriptorInput"
    }
    assert writer_goldens == {r.file for r in ROWS if r.file.suffix == ".golden"}


def test_metadata_round_trips_byte_for_byte() -> None:
    """Packing what was read gives the stored bytes back, for every image in the corpus."""
    for path in CORPUS.rglob("*.sif"):
        raw = path.read_bytes()
        with SifImage.open(path) as image:
            h = image.header
            assert h.pack() == raw[:128]
            for slot, d in zip(image.slots, image.descriptors):
                start = h.descriptors_offset + slot * 585
                assert d.pack() == raw[start : start + 585]


@pytest.mark.parametrize(
    "path", sorted(CORPUS.rglob("*.sif")), ids=lambda p: str(p.relative_to(CORPUS))
)
def test_object_data_is_the_stored_bytes(path: Path) -> None:
    raw = path.read_bytes()
    with SifImage.open(path) as image:
        for d in image.descriptors:
            assert image.read(d) == raw[d.offset : d.end]
            assert b"".join(image.chunks(d, chunk_size=1000)) == raw[d.offset : d.end]


def test_inputs_are_embedded_verbatim() -> None:
    """gen_sifs.go put input/root.squashfs and input/root.ext3 in two-groups.sif."""
    with SifImage.open(IMAGES / "two-groups.sif") as image:
        assert image.read(image.get(2)) == (CORPUS / "sylabs-sif/input/root.squashfs").read_bytes()
        assert image.read(image.get(3)) == (CORPUS / "sylabs-sif/input/root.ext3").read_bytes()


@pytest.mark.parametrize(
    ("image", "offset", "size", "arch"),
    [
        ("singularityce/images/busybox_amd64.sif", 45056, 745472, "amd64"),
        ("singularityce/images/busybox_arm64.sif", 45056, 794624, "arm64"),
        ("singularityce/images/busybox_ppc64le.sif", 262144, 2568192, "ppc64le"),
        ("sylabs-sif/images/two-groups-signed-pgp.sif", 36864, 4096, "386"),
    ],
)
def test_primary_partition(image: str, offset: int, size: int, arch: str) -> None:
    with SifImage.open(CORPUS / image) as sif:
        d = sif.primary_partition()
        assert (d.offset, d.size, d.partition.arch) == (offset, size, arch)
        assert sif.read(d)[:4] == b"hsqs"  # squashfs superblock magic, little-endian


def test_busybox_partition_is_a_real_squashfs() -> None:
    """unsquashfs (squashfs-tools) lists the root filesystem at the offset we report."""
    path = CORPUS / "singularityce/images/busybox_amd64.sif"
    with SifImage.open(path) as sif:
        offset = sif.primary_partition().offset
    listing = subprocess.run(
        ["unsquashfs", "-o", str(offset), "-l", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "squashfs-root/bin/busybox" in listing.split()


@pytest.mark.parametrize("image", ["sylabs-sif/images/empty.sif", "singularityce/images/empty.oci.sif"])
def test_no_primary_partition_is_one_actionable_line(image: str) -> None:
    with SifImage.open(CORPUS / image) as sif, pytest.raises(HpcbindError) as err:
        sif.primary_partition()
    message = str(err.value)
    assert str(CORPUS / image) in message and "no primary partition" in message
    assert "hpcrun sif setprim" in message and "\n" not in message


def test_get_unknown_id() -> None:
    with SifImage.open(IMAGES / "one-group.sif") as sif:
        with pytest.raises(HpcbindError, match="no object with ID 9"):
            sif.get(9)


def test_of_type() -> None:
    with SifImage.open(CORPUS / "singularityce/images/busybox_arm64.sif") as sif:
        names = [d.name_str for d in sif.of_type(DataType.GENERIC_JSON)]
        assert names == ["inspect-metadata.json", "oci-config.json"]


def test_architectures() -> None:
    assert arch_name("02") == "amd64" and arch_name("00") == "unknown" and arch_name("99") == "unknown"
    assert arch_code("amd64") == "02" and arch_code("loong64") == "13"
    assert all(arch_name(arch_code(name)) == name for name in ARCH_CODES)
    with pytest.raises(HpcbindError, match="unknown architecture 'vax'"):
        arch_code("vax")


def test_host_arch_agrees_with_dpkg() -> None:
    dpkg = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    debian_to_go = {
        "amd64": "amd64", "arm64": "arm64", "i386": "386", "ppc64el": "ppc64le", "s390x": "s390x",
        "riscv64": "riscv64", "armhf": "arm", "loong64": "loong64",
    }
    assert host_arch() == debian_to_go[dpkg.stdout.strip()]


# ------------------------------------------------------------------------- siftool output


def golden_text(test: str, case: str) -> str:
    return (GOLDEN / "siftool" / test / f"{case}.golden").read_text()


def cases(test: str) -> list[str]:
    return sorted(p.stem for p in (GOLDEN / "siftool" / test).glob("*.golden"))


def image_for(case: str) -> Path:
    """TestApp_Header/List case name -> image: "OneObjectGenericJSON" -> one-object-generic-json.sif."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z]*", case)
    return IMAGES / ("-".join(words).lower() + ".sif")


INFO_CASES = {
    "Time": ("one-object-time.sif", 1),
    "GenericJSON": ("one-object-generic-json.sif", 1),
    "CryptMessage": ("one-object-crypt-message.sif", 1),
    "SBOM": ("one-object-sbom.sif", 1),
    "OCIRootIndex": ("one-object-oci-root-index.sif", 1),
    "OCIBlob": ("one-object-oci-blob.sif", 1),
    "DataPartitionRaw": ("two-groups-signed-pgp.sif", 1),
    "DataPartitionSquashFS": ("two-groups-signed-pgp.sif", 2),
    "DataPartitionEXT3": ("two-groups-signed-pgp.sif", 3),
    "DataSignature": ("two-groups-signed-pgp.sif", 4),
}


@pytest.mark.parametrize("case", cases("TestApp_Header"))
def test_siftool_header(case: str) -> None:
    with SifImage.open(image_for(case)) as image:
        assert siftool.render_header(image) == golden_text("TestApp_Header", case)


@pytest.mark.parametrize("case", cases("TestApp_List"))
def test_siftool_list(case: str) -> None:
    with SifImage.open(image_for(case)) as image:
        assert siftool.render_list(image) == golden_text("TestApp_List", case)


def test_info_cases_are_all_the_goldens() -> None:
    assert set(INFO_CASES) == set(cases("TestApp_Info"))


@pytest.mark.parametrize("case", sorted(INFO_CASES))
def test_siftool_info(case: str) -> None:
    name, ident = INFO_CASES[case]
    with SifImage.open(IMAGES / name) as image:
        assert siftool.render_info(image.get(ident)) == golden_text("TestApp_Info", case)


@pytest.mark.parametrize(("case", "ident"), [("One", 1), ("Two", 2)])
def test_siftool_dump(case: str, ident: int, tmp_path: Path) -> None:
    out = tmp_path / "dump"
    with SifImage.open(IMAGES / "one-group.sif") as image, out.open("wb") as stream:
        siftool.dump(image, ident, stream)
    assert out.read_bytes() == (GOLDEN / "siftool/TestApp_Dump" / f"{case}.golden").read_bytes()


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1535, "1 KiB"), (1536, "2 KiB"), (28080, "27 KiB"),
     (1024**2 * 5 // 2, "3 MiB"), (1024**3 * 3, "3 GiB"), (-2048, "-2 KiB")],
)
def test_readable_size(size: int, text: str) -> None:
    assert siftool.readable_size(size) == text


def test_go_time() -> None:
    assert siftool.go_time(1593475316) == "2020-06-30 00:01:56 +0000 UTC"
    assert siftool.go_time(GO_ZERO_TIME) == "0001-01-01 00:00:00 +0000 UTC"
    assert siftool.go_time(2**62).startswith(str(2**62))


# ------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("command", ["header", "list"])
def test_cli_renders_like_siftool(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    case = "TwoGroupsSignedPGP"
    assert main(["sif", command, str(image_for(case))]) == 0
    golden = GOLDEN / "siftool" / f"TestApp_{command.title()}" / f"{case}.golden"
    assert capsys.readouterr().out == golden.read_text()


def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sif", "info", str(IMAGES / "two-groups-signed-pgp.sif"), "4"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "siftool/TestApp_Info/DataSignature.golden").read_text()


def test_cli_dump(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["sif", "dump", str(IMAGES / "one-group.sif"), "2"]) == 0
    assert capsysbinary.readouterr().out == (GOLDEN / "siftool/TestApp_Dump/Two.golden").read_bytes()


def test_cli_unknown_id_exits_255(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sif", "info", str(IMAGES / "one-group.sif"), "7"]) == 255
    err = capsys.readouterr().err
    assert err.startswith("hpcrun: error: ") and "no object with ID 7" in err and err.count("\n") == 1
