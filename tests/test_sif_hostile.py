"""Corrupt and hostile SIF files: each is one HpcbindError naming the file and the problem.

The named cases damage one field of a real image (sylabs/sif's one-group.sif) at the offsets
FORMAT.md gives. The fuzz test mutates corpus images at random and holds the parser to its
contract: HpcbindError or a usable image, never another exception, memory bounded by the
file's size, and edits of whatever it accepts produce images it accepts again.
"""

from __future__ import annotations

import os
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpcbind.cli import main
from hpcbind.errors import HpcbindError
from hpcbind.image import siftool
from hpcbind.image.sif import (
    DataType,
    ObjectInput,
    SifImage,
    add_object,
    delete_objects,
    set_primary_partition,
)

CORPUS = Path(__file__).resolve().parent / "data" / "sif"
BASE = CORPUS / "sylabs-sif" / "images" / "one-group.sif"  # objects 1 @32768+4, 2 @36864+4096

# Byte offsets of the header's int64 fields, and of fields inside a 585-byte descriptor.
HEADER_FIELDS = {
    "created_at": 64, "modified_at": 72, "free": 80, "total": 88,
    "table_offset": 96, "table_size": 104, "data_offset": 112, "data_size": 120,
}
DESCRIPTOR_FIELDS = {  # name: (offset, struct format)
    "data_type": (0, "<i"), "used": (4, "<B"), "id": (5, "<I"), "group": (9, "<I"), "link": (13, "<I"),
    "offset": (17, "<q"), "size": (25, "<q"), "size_with_padding": (33, "<q"),
    "created_at": (41, "<q"), "modified_at": (49, "<q"), "extra": (201, "<i"),
}
TABLE = 4096


def header(field: str, value: int) -> Callable[[bytearray], bytes]:
    def mutate(raw: bytearray) -> bytes:
        struct.pack_into("<q", raw, HEADER_FIELDS[field], value)
        return bytes(raw)

    return mutate


def descriptor(slot: int, field: str, value: int) -> Callable[[bytearray], bytes]:
    offset, fmt = DESCRIPTOR_FIELDS[field]

    def mutate(raw: bytearray) -> bytes:
        struct.pack_into(fmt, raw, TABLE + slot * 585 + offset, value)
        return bytes(raw)

    return mutate


def replace_bytes(at: int, data: bytes) -> Callable[[bytearray], bytes]:
    def mutate(raw: bytearray) -> bytes:
        raw[at : at + len(data)] = data
        return bytes(raw)

    return mutate


def cut(length: int) -> Callable[[bytearray], bytes]:
    return lambda raw: bytes(raw[:length])


def primary_twice(raw: bytearray) -> bytes:
    """Object 1's partition type (Extra bytes 4..8) becomes PrimSys, beside object 2's."""
    struct.pack_into("<i", raw, TABLE + 201 + 4, 2)
    return bytes(raw)


CASES: dict[str, tuple[Callable[[bytearray], bytes], str]] = {
    "empty file": (cut(0), "0 bytes, shorter than the 128-byte header"),
    "truncated header": (cut(100), "100 bytes, shorter than the 128-byte header"),
    "bad magic": (replace_bytes(32, b"NOT_MAGIC\0"), "bad magic b'NOT_MAGIC\\x00'"),
    "bad version": (replace_bytes(42, b"02\0"), "unsupported SIF version b'02\\x00'"),
    "absurd descriptor count": (header("total", 2**40), "DescriptorsTotal 1099511627776 is outside"),
    "negative descriptor count": (header("total", -1), "DescriptorsTotal -1 is outside"),
    "free above total": (header("free", 49), "DescriptorsFree 49 is outside 0..48"),
    "negative free": (header("free", -3), "DescriptorsFree -3 is outside"),
    "table size mismatch": (header("table_size", 1000), "DescriptorsSize 1000 is not 48 x 585"),
    "table past end of file": (header("table_offset", 2**40), "runs past the end of the file"),
    "table over the header": (header("table_offset", 64), "overlaps the 128-byte header"),
    "negative table offset": (header("table_offset", -4096), "overlaps the 128-byte header"),
    "truncated in the table": (cut(10000), "descriptor table [4096, 32176) runs past the end"),
    "truncated in the data": (cut(38000), "object 2 [36864, 40960) runs past the end of the file (38000"),
    "data section far past the end": (header("data_offset", 2**40), "DataOffset 1099511627776 is past the end"),
    "data section inside the table": (header("data_offset", 5000), "DataOffset 5000 is before the end of the descriptor table (32176)"),
    "negative data size": (header("data_size", -1), "negative DataSize -1"),
    "object past end of file": (descriptor(0, "offset", 2**40), "object 1 [1099511627776, "),
    "object size past end of file": (descriptor(0, "size", 2**62), "runs past the end of the file"),
    "offset plus size overflows int64": (descriptor(1, "size", 2**63 - 1), "object 2 [36864, "),
    "negative object offset": (descriptor(0, "offset", -1), "object 1 has offset -1"),
    "negative object size": (descriptor(0, "size", -5), "size -5"),
    "object inside the table": (descriptor(0, "offset", 4096), "starts before the data section"),
    "overlapping objects": (descriptor(1, "offset", 32770), "objects 1 [32768, 32772) and 2 [32770, "),
    "duplicate IDs": (descriptor(1, "id", 1), "two descriptors have ID 1"),
    "ID zero": (descriptor(0, "id", 0), "a used descriptor has ID 0"),
    "bad used flag": (descriptor(0, "used", 7), "slot 0 has Used flag 7"),
    "two primary partitions": (primary_twice, "objects [1, 2] are all marked primary partition"),
}


@pytest.fixture
def hostile(tmp_path: Path) -> Callable[[Callable[[bytearray], bytes]], Path]:
    def write(mutate: Callable[[bytearray], bytes]) -> Path:
        path = tmp_path / "hostile.sif"
        path.write_bytes(mutate(bytearray(BASE.read_bytes())))
        return path

    return write


def test_base_image_is_sound() -> None:
    with SifImage.open(BASE) as image:
        assert [(d.id, d.offset, d.size) for d in image.descriptors] == [(1, 32768, 4), (2, 36864, 4096)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file(case: str, hostile: Callable[[Callable[[bytearray], bytes]], Path]) -> None:
    mutate, problem = CASES[case]
    path = hostile(mutate)
    with pytest.raises(HpcbindError) as err:
        SifImage.open(path)
    message = str(err.value)
    assert message.startswith(f"{path}: corrupt or not a SIF image: ")
    assert problem in message and "\n" not in message


@pytest.mark.parametrize("case", ["absurd descriptor count", "truncated in the data", "bad magic"])
def test_cli_exits_255_on_hostile_file(
    case: str, hostile: Callable[[Callable[[bytearray], bytes]], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = hostile(CASES[case][0])
    assert main(["sif", "list", str(path)]) == 255
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"hpcrun: error: {path}: corrupt") and captured.err.count("\n") == 1


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(HpcbindError, match=f"{tmp_path} is not a regular file"):
        SifImage.open(tmp_path)


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "image.sif"
    os.mkfifo(fifo)
    with pytest.raises(HpcbindError, match="is not a regular file"):
        SifImage.open(fifo)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HpcbindError, match=f"cannot open SIF image {tmp_path}/nope.sif: No such file"):
        SifImage.open(tmp_path / "nope.sif")


def test_edits_refuse_hostile_files(hostile: Callable[[Callable[[bytearray], bytes]], Path]) -> None:
    path = hostile(CASES["overlapping objects"][0])
    before = path.read_bytes()
    with pytest.raises(HpcbindError, match="overlap"):
        add_object(path, ObjectInput(DataType.GENERIC, data=b"x"))
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------- fuzzing

SEEDS = [
    CORPUS / "sylabs-sif/images/one-group.sif",
    CORPUS / "sylabs-sif/images/one-object-sbom.sif",
    CORPUS / "sylabs-sif/images/one-object-oci-blob.sif",
    CORPUS / "sylabs-sif/images/two-groups-signed-legacy-all.sif",
    CORPUS / "singularityce/images/one-group.sif",
    CORPUS / "singularityce/images/empty.sif",
]
FIELD_SPOTS = [(offset, 8) for offset in HEADER_FIELDS.values()] + [
    (TABLE + slot * 585 + offset, struct.calcsize(fmt))
    for slot in range(6)
    for offset, fmt in DESCRIPTOR_FIELDS.values()
]
# Spots where damage matters most: the header, the first descriptors, anywhere at all.
POSITIONS = st.one_of(st.integers(0, 127), st.integers(TABLE, TABLE + 6 * 585 - 1), st.integers(0, 40000))
INTERESTING = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2, 48, 585, 4096, 28080, 32176, 32768, 2**31 - 1, 2**32, 2**40, 2**63 - 1]),
)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITIONS, st.integers(0, 7)),
    st.tuples(st.just("field"), st.sampled_from(FIELD_SPOTS), INTERESTING),
    st.tuples(st.just("cut"), st.integers(0, 50000)),
)


def mutate(raw: bytearray, mutation: tuple) -> bytearray:
    kind, *args = mutation
    if kind == "flip":
        position, bit = args
        if position < len(raw):
            raw[position] ^= 1 << bit
    elif kind == "field":
        (offset, width), value = args
        if offset + width <= len(raw):
            raw[offset : offset + width] = value.to_bytes(8, "little", signed=True)[:width]
    else:
        del raw[args[0] :]
    return raw


def exercise(path: Path) -> None:
    """Everything a caller may do with an image that opened."""
    with SifImage.open(path) as image:
        siftool.render_header(image)
        siftool.render_list(image)
        for d in image.descriptors:
            assert len(image.read(d)) == d.size
            try:
                siftool.render_info(d)
            except HpcbindError:
                pass
        try:
            image.primary_partition()
        except HpcbindError:
            pass


# derandomized: CI runs the same examples on every push (a wider search is a manual run)
@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzzed_images(seed: Path, mutations: list[tuple], tmp_path_factory: pytest.TempPathFactory) -> None:
    raw = bytearray(seed.read_bytes())
    for mutation in mutations:
        raw = mutate(raw, mutation)
    path = tmp_path_factory.mktemp("fuzz") / "image.sif"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        exercise(path)
        opened = True
    except HpcbindError:
        opened = False
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2 * len(raw) + (1 << 20)
    event("opened" if opened else "rejected")
    if not opened:
        return
    # Whatever we accept, we can edit, and the result (or what a refused edit leaves) is again
    # an image we accept.
    edited = path.with_name("edited.sif")
    shutil.copyfile(path, edited)
    try:
        add_object(edited, ObjectInput(DataType.GENERIC, data=b"\xfa\xce"))
    except HpcbindError:
        pass
    exercise(edited)
    with SifImage.open(edited) as image:
        remaining = [d.id for d in image.descriptors]
    for ident in remaining:
        try:
            set_primary_partition(edited, ident)
        except HpcbindError:
            pass
        exercise(edited)
    if remaining:
        delete_objects(edited, lambda d: True, compact=True)
        exercise(edited)
