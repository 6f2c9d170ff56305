"""The Singularity Image Format: reader, writer and the byte streams that signatures cover.

Byte for byte what sylabs/sif v2 (the Go library under Apptainer and SingularityCE) reads and
writes; ``shared/conformance/sif/FORMAT.md`` is the layout and ``MANIFEST.md`` the corpus this
module is tested against. A file is a 128-byte header, zeros up to ``DescriptorsOffset``, a
table of 585-byte descriptors, then the data objects at the absolute offsets the descriptors
give. Nothing here assumes the 32176 data offset of new images or contiguous objects: older
writers use 32768 and page-aligned objects.

``SifImage.open`` is on the per-rank hot path (``hpcrun exec`` finds the squashfs to mount), so
it reads the header and the descriptor table with two ``pread`` calls, and this module imports
only ``os``, ``struct``, ``collections`` and ``enum`` at load time. The records are namedtuples,
not dataclasses (which pull in ``inspect`` and ``ast``, ~7 ms a rank). ``uuid`` (which pulls in
``platform`` and ``re``) and ``pathlib`` load only when an image's header ID or ``Path`` is
first asked for, which the per-rank path never does; the writer's helpers (``hashlib``,
``tempfile``, ``time``) are imported where they are used.

Every check a hostile file can fail raises ``HpcbindError`` naming the file and the problem,
and nothing is allocated from a count before the count is bounded by the file's size.
"""

from __future__ import annotations

import os
import struct
from collections import namedtuple
from enum import IntEnum

from hpcbind.errors import HpcbindError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the hot path
if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    PathArg = str | os.PathLike[str]

MAGIC = b"SIF_MAGIC\0"
VERSION = b"01\0"  # the only version that exists; the Go loader rejects any other
GO_ZERO_TIME = -62135596800  # time.Time{}.Unix(): what "deterministic" images store
GROUP_MASK = 0xF0000000  # a raw group or linked-group field is GROUP_MASK | id
_MAX_ID = 0x0FFFFFFF  # group and link IDs must leave the mask bits clear

HEADER = struct.Struct("<32s10s3s3s16s8q")  # 128 bytes, Go encoding/binary: packed, LE
# The Used flag is read as a byte, not "?", so a value other than 0/1 is seen and rejected.
DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")  # 585 bytes
_INTEGRITY_FIELDS = struct.Struct("<i?IIqqqq")  # head of a descriptor's integrity stream
_PARTITION = struct.Struct("<ii3s")
_INT32 = struct.Struct("<i")
_INT32_PAIR = struct.Struct("<ii")

DESCRIPTORS_OFFSET = 4096
DEFAULT_CAPACITY = 48
PARTITION_ALIGNMENT = 4096  # sylabs/sif's default for partitions; other objects are unaligned
# Real images have 48 slots. The format allows 2**32-1, whose table alone is 2.5 TB; a bound
# keeps a hostile DescriptorsTotal from costing more than a 38 MB read.
MAX_DESCRIPTORS = 1 << 16
_LAUNCH_SCRIPT_LEN = 32
_NAME_LEN = 128
_EXTRA_LEN = 384
_ENTITY_LEN = 256
_COPY_CHUNK = 1 << 22


class DataType(IntEnum):
    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


class FsType(IntEnum):
    SQUASHFS = 1
    EXT3 = 2
    IMMUOBJ = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5
    GOCRYPTFS_SQUASHFS = 6  # apptainer/sif only


class PartType(IntEnum):
    SYSTEM = 1
    PRIMSYS = 2
    DATA = 3
    OVERLAY = 4


class HashType(IntEnum):
    SHA256 = 1
    SHA384 = 2
    SHA512 = 3
    BLAKE2S = 4
    BLAKE2B = 5


class CryptoFormat(IntEnum):
    OPENPGP = 1
    PEM = 2


class CryptoMessage(IntEnum):
    CLEAR_SIGNATURE = 0x100
    RSA_OAEP = 0x200


class SbomFormat(IntEnum):
    CYCLONEDX_JSON = 1
    CYCLONEDX_XML = 2
    GITHUB_JSON = 3
    SPDX_JSON = 4
    SPDX_RDF = 5
    SPDX_TAG_VALUE = 6
    SPDX_YAML = 7
    SYFT_JSON = 8


# Go architecture name -> the two-digit code SIF stores (sylabs/sif pkg/sif/arch.go).
ARCH_CODES: dict[str, str] = {
    "386": "01",
    "amd64": "02",
    "arm": "03",
    "arm64": "04",
    "ppc64": "05",
    "ppc64le": "06",
    "mips": "07",
    "mipsle": "08",
    "mips64": "09",
    "mips64le": "10",
    "s390x": "11",
    "riscv64": "12",
    "loong64": "13",
}
_ARCH_NAMES = {code: name for name, code in ARCH_CODES.items()}

# uname -m -> Go arch. MIPS machines report no endianness; host_arch() adds it.
_MACHINE_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "mips": "mips",
    "mips64": "mips64",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
}


def arch_name(code: str) -> str:
    """Go architecture name for a SIF arch code: "02" -> "amd64"; "unknown" if not one."""
    return _ARCH_NAMES.get(code, "unknown")


def arch_code(name: str) -> str:
    """SIF arch code for a Go architecture name: "amd64" -> "02"."""
    try:
        return ARCH_CODES[name]
    except KeyError:
        raise HpcbindError(
            f"unknown architecture {name!r}", f"use one of: {', '.join(ARCH_CODES)}"
        ) from None


def host_arch() -> str:
    """Go architecture name of this machine ("amd64" on x86_64, "arm64" on aarch64, ...)."""
    import sys

    machine = os.uname().machine
    name = _MACHINE_ARCH.get(machine)
    if name is None:
        raise HpcbindError(
            f"this machine's architecture {machine!r} has no SIF code",
            f"SIF knows: {', '.join(ARCH_CODES)}",
        )
    if name.startswith("mips") and sys.byteorder == "little":
        name += "le"
    return name


def _field_arch(raw: bytes) -> str:
    """Go name for a stored 3-byte arch field; Go compares all three bytes, NUL included."""
    return arch_name(raw[:2].decode("ascii", "replace")) if raw[2:] == b"\0" else "unknown"


def _arch_field(name: str) -> bytes:
    return arch_code(name).encode("ascii") + b"\0"


def _known(enum: type[IntEnum], value: int) -> int:
    """The enum member for ``value``, or ``value`` itself: files may carry codes from newer
    writers, and reading them must not fail (siftool shows them as "Unknown")."""
    try:
        return enum(value)
    except ValueError:
        return value


def _text(raw: bytes) -> str:
    """A NUL-padded field as text, trimmed as Go's ``bytes.TrimRight(b, "\\x00")``."""
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class Partition(namedtuple("Partition", "fstype parttype arch")):
    """fstype: FsType; parttype: PartType; arch: Go name, "unknown" when the stored code is
    not one."""

    __slots__ = ()

    def extra(self) -> bytes:
        return _partition_extra(self.fstype, self.parttype, _arch_field(self.arch))


def _partition_extra(fstype: int, parttype: int, arch: bytes) -> bytes:
    return _PARTITION.pack(fstype, parttype, arch)


_HEADER_FIELDS = (
    "launch_script magic version arch id created_at modified_at descriptors_free "
    "descriptors_total descriptors_offset descriptors_size data_offset data_size"
)


class Header(namedtuple("Header", _HEADER_FIELDS)):
    """The 128-byte global header, fields as stored (fixed-size byte fields keep their NULs):
    launch_script, magic, version, arch (b"02\\0"): bytes; id: uuid.UUID; the rest ints."""

    __slots__ = ()

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        import uuid

        launch, magic, version, arch, ident, *numbers = HEADER.unpack(raw)
        return cls(launch, magic, version, arch, uuid.UUID(bytes=ident), *numbers)

    def pack(self) -> bytes:
        return HEADER.pack(
            self.launch_script,
            self.magic,
            self.version,
            self.arch,
            self.id.bytes,
            self.created_at,
            self.modified_at,
            self.descriptors_free,
            self.descriptors_total,
            self.descriptors_offset,
            self.descriptors_size,
            self.data_offset,
            self.data_size,
        )

    @property
    def launch_script_text(self) -> str:
        return _text(self.launch_script)

    @property
    def version_text(self) -> str:
        return _text(self.version)

    @property
    def primary_arch(self) -> str:
        """Go name of the primary partition's architecture, "unknown" if there is none."""
        return _field_arch(self.arch)

    @property
    def deterministic(self) -> bool:
        """Nil ID and zero times: later edits keep zero times unless given one (sylabs/sif)."""
        return self.id.int == 0 and self.created_at == self.modified_at == GO_ZERO_TIME


_DESCRIPTOR_FIELDS = (
    "data_type used id raw_group_id raw_linked_id offset size size_with_padding created_at "
    "modified_at uid gid name extra"
)


class Descriptor(namedtuple("Descriptor", _DESCRIPTOR_FIELDS)):
    """One 585-byte descriptor, fields as stored; the properties decode them as sylabs/sif.

    data_type: DataType, or the raw int for a type this library does not know; used: bool;
    uid, gid: deprecated by the format (old writers stored the builder's); name (128 bytes)
    and extra (384 bytes): NUL-padded bytes; the rest ints.
    """

    __slots__ = ()

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> Descriptor:
        data_type, used, *rest = DESCRIPTOR.unpack(raw)
        return cls(_known(DataType, data_type), bool(used), *rest)

    def pack(self) -> bytes:
        return DESCRIPTOR.pack(
            self.data_type,
            self.used,
            self.id,
            self.raw_group_id,
            self.raw_linked_id,
            self.offset,
            self.size,
            self.size_with_padding,
            self.created_at,
            self.modified_at,
            self.uid,
            self.gid,
            self.name,
            self.extra,
        )

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def group_id(self) -> int:
        """The object's group, 0 for none."""
        return self.raw_group_id & ~GROUP_MASK

    @property
    def linked_group(self) -> int | None:
        if self.raw_linked_id & GROUP_MASK == GROUP_MASK:
            return self.raw_linked_id & ~GROUP_MASK or None
        return None

    @property
    def linked_object(self) -> int | None:
        if self.raw_linked_id & GROUP_MASK == GROUP_MASK:
            return None
        return self.raw_linked_id & ~GROUP_MASK or None

    @property
    def name_str(self) -> str:
        return _text(self.name)

    @property
    def partition(self) -> Partition | None:
        if self.data_type != DataType.PARTITION:
            return None
        fstype, parttype, arch = _PARTITION.unpack_from(self.extra)
        return Partition(_known(FsType, fstype), _known(PartType, parttype), _field_arch(arch))

    @property
    def signature_hash(self) -> HashType | None:
        if self.data_type != DataType.SIGNATURE:
            return None
        return _known(HashType, _INT32.unpack_from(self.extra)[0])

    @property
    def signature_fingerprint(self) -> bytes | None:
        """The signer's 20-byte key fingerprint; None when absent (DSSE signatures)."""
        if self.data_type != DataType.SIGNATURE:
            return None
        fingerprint = self.extra[4:24]
        return fingerprint if any(fingerprint) else None

    @property
    def crypto_message(self) -> tuple[CryptoFormat, CryptoMessage] | None:
        if self.data_type != DataType.CRYPTO_MESSAGE:
            return None
        format_type, message_type = _INT32_PAIR.unpack_from(self.extra)
        return _known(CryptoFormat, format_type), _known(CryptoMessage, message_type)

    @property
    def sbom_format(self) -> SbomFormat | None:
        if self.data_type != DataType.SBOM:
            return None
        return _known(SbomFormat, _INT32.unpack_from(self.extra)[0])

    @property
    def oci_digest(self) -> str | None:
        """``sha256:<hex>`` of an OCI object's data as recorded; None if absent or malformed."""
        if self.data_type not in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB):
            return None
        text = self.extra.split(b"\0", 1)[0].decode("ascii", "replace")
        return text if _valid_digest(text) else None


def _valid_digest(text: str) -> bool:
    """As go-containerregistry's v1.Hash parser: sha256 only, 64 lowercase hex digits."""
    algorithm, _, hexdigits = text.partition(":")
    return algorithm == "sha256" and len(hexdigits) == 64 and set(hexdigits) <= set("0123456789abcdef")


def header_integrity_bytes(header: Header) -> bytes:
    """The 61 bytes a signature protects of the header: launch script, magic, version, ID."""
    return header.launch_script + header.magic + header.version + header.id.bytes


def descriptor_integrity_bytes(desc: Descriptor, relative_id: int) -> bytes:
    """The 557 bytes a signature protects of a descriptor; ``relative_id`` is the object's ID
    minus the lowest ID in its group. ID, group, offset, padding and mtime are not covered."""
    head = _INTEGRITY_FIELDS.pack(
        desc.data_type,
        desc.used,
        relative_id,
        desc.raw_linked_id,
        desc.size,
        desc.created_at,
        desc.uid,
        desc.gid,
    )
    return head + desc.name + desc.extra


# ---------------------------------------------------------------------------------- reading


def _corrupt(path: PathArg, problem: str) -> HpcbindError:
    return HpcbindError(
        f"{os.fspath(path)}: corrupt or not a SIF image: {problem}",
        "rebuild the image or fetch it again",
    )


def _check_header(path: PathArg, header: Header, file_size: int) -> None:
    if header.magic != MAGIC:
        raise _corrupt(path, f"bad magic {header.magic!r} (expected {MAGIC!r})")
    if header.version != VERSION:
        raise _corrupt(path, f"unsupported SIF version {header.version!r} (only '01' exists)")
    total, free = header.descriptors_total, header.descriptors_free
    if not 0 <= total <= MAX_DESCRIPTORS:
        raise _corrupt(path, f"DescriptorsTotal {total} is outside 0..{MAX_DESCRIPTORS}")
    if not 0 <= free <= total:
        raise _corrupt(path, f"DescriptorsFree {free} is outside 0..{total}")
    if header.descriptors_size != total * DESCRIPTOR.size:
        raise _corrupt(
            path,
            f"DescriptorsSize {header.descriptors_size} is not {total} x {DESCRIPTOR.size} bytes",
        )
    start = header.descriptors_offset
    end = start + header.descriptors_size
    if start < HEADER.size:
        raise _corrupt(path, f"descriptor table at offset {start} overlaps the 128-byte header")
    if end > file_size:
        raise _corrupt(
            path, f"descriptor table [{start}, {end}) runs past the end of the file ({file_size} bytes)"
        )
    if header.data_offset < end:
        raise _corrupt(
            path, f"DataOffset {header.data_offset} is before the end of the descriptor table ({end})"
        )
    # Objects lie inside the file, so only an image without data can have its data section
    # start past the end: sif-v1 writers put it at the next page even then (32768, for a
    # table ending at 32176). Further out, an edit would write there: a terabyte sparse file.
    if header.data_offset > max(file_size, next_aligned(end, PARTITION_ALIGNMENT)):
        raise _corrupt(
            path, f"DataOffset {header.data_offset} is past the end of the file ({file_size} bytes)"
        )
    if header.data_size < 0:
        raise _corrupt(path, f"negative DataSize {header.data_size}")


def _check_descriptor(path: PathArg, d: Descriptor, header: Header, file_size: int) -> None:
    if d.id == 0:
        raise _corrupt(path, "a used descriptor has ID 0")
    if d.size < 0 or d.offset < 0:
        raise _corrupt(path, f"object {d.id} has offset {d.offset} and size {d.size}")
    if d.offset < header.data_offset:
        raise _corrupt(
            path, f"object {d.id} at offset {d.offset} starts before the data section ({header.data_offset})"
        )
    if d.end > file_size:
        raise _corrupt(
            path, f"object {d.id} [{d.offset}, {d.end}) runs past the end of the file ({file_size} bytes)"
        )


def _check_objects(path: PathArg, descriptors: Sequence[Descriptor]) -> None:
    seen: set[int] = set()
    for d in descriptors:
        if d.id in seen:
            raise _corrupt(path, f"two descriptors have ID {d.id}")
        seen.add(d.id)
    placed = sorted((d for d in descriptors if d.size), key=lambda d: d.offset)
    for before, after in zip(placed, placed[1:]):
        if after.offset < before.end:
            raise _corrupt(
                path,
                f"objects {before.id} [{before.offset}, {before.end}) and "
                f"{after.id} [{after.offset}, {after.end}) overlap",
            )
    primaries = [d.id for d in descriptors if _is_primary(d)]
    if len(primaries) > 1:
        raise _corrupt(path, f"objects {primaries} are all marked primary partition")


def _parse_table(
    path: PathArg, table: bytes, header: Header, file_size: int
) -> tuple[tuple[Descriptor, ...], tuple[int, ...]]:
    """Used descriptors in table order, and the table slot of each."""
    descriptors: list[Descriptor] = []
    slots: list[int] = []
    view = memoryview(table)
    for slot in range(header.descriptors_total):
        raw = view[slot * DESCRIPTOR.size : (slot + 1) * DESCRIPTOR.size]
        used = raw[4]
        if used == 0:
            continue
        if used != 1:
            raise _corrupt(path, f"descriptor slot {slot} has Used flag {used} (expected 0 or 1)")
        d = Descriptor.unpack(raw)
        _check_descriptor(path, d, header, file_size)
        descriptors.append(d)
        slots.append(slot)
    _check_objects(path, descriptors)
    return tuple(descriptors), tuple(slots)


def _is_primary(d: Descriptor) -> bool:
    partition = d.partition
    return partition is not None and partition.parttype == PartType.PRIMSYS


def _pread_exact(fd: int, size: int, offset: int, path: PathArg) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = os.pread(fd, remaining, offset + size - remaining)
        if not chunk:
            raise _corrupt(path, f"file ends inside [{offset}, {offset + size}); was it truncated?")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class SifImage:
    """An open, validated SIF file. Use as a context manager, or call ``close()``.

    ``header`` and ``path`` are built on first use: a ``uuid.UUID`` and a ``Path`` cost
    imports (uuid, platform, re, pathlib: ~8 ms) that the per-rank path, which needs only the
    descriptors, should not pay.
    """

    def __init__(
        self,
        path: PathArg,
        fd: int,
        size: int,
        raw_header: bytes,
        descriptors: tuple[Descriptor, ...],
        slots: tuple[int, ...],
    ) -> None:
        self.size = size
        self.descriptors = descriptors
        self.slots = slots  # the table slot of each descriptor
        self._path = path
        self._raw_header = raw_header
        self._header: Header | None = None
        self._fd = fd

    @property
    def path(self) -> Path:
        from pathlib import Path

        return Path(self._path)

    @property
    def header(self) -> Header:
        if self._header is None:
            self._header = Header.unpack(self._raw_header)
        return self._header

    @classmethod
    def open(cls, path: PathArg) -> SifImage:
        """Open and validate ``path``; ``HpcbindError`` on anything that is not a sound SIF."""
        import stat

        try:
            # O_NONBLOCK: opening a FIFO someone passed as the image must not hang.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as err:
            raise HpcbindError(
                f"cannot open SIF image {os.fspath(path)}: {err.strerror}",
                "check the path and its permissions",
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise HpcbindError(
                    f"{os.fspath(path)} is not a regular file", "give the path of a .sif image"
                )
            size = info.st_size
            if size < HEADER.size:
                raise _corrupt(path, f"{size} bytes, shorter than the {HEADER.size}-byte header")
            raw_header = _pread_exact(fd, HEADER.size, 0, path)
            # Validated with the ID left as its 16 stored bytes (no check reads it), so that
            # opening never imports uuid; ``header`` decodes it when asked.
            stored = Header._make(HEADER.unpack(raw_header))
            _check_header(path, stored, size)
            table = _pread_exact(fd, stored.descriptors_size, stored.descriptors_offset, path)
            descriptors, slots = _parse_table(path, table, stored, size)
        except OSError as err:
            os.close(fd)
            raise HpcbindError(
                f"cannot read SIF image {os.fspath(path)}: {err.strerror}",
                "check that the file is readable",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, raw_header, descriptors, slots)

    def __enter__(self) -> SifImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def chunks(self, d: Descriptor, chunk_size: int = _COPY_CHUNK) -> Iterator[bytes]:
        """The object's data in pieces, so a multi-GB partition never sits in memory."""
        for start in range(d.offset, d.end, chunk_size):
            yield _pread_exact(self._fd, min(chunk_size, d.end - start), start, self.path)

    def read(self, d: Descriptor) -> bytes:
        return _pread_exact(self._fd, d.size, d.offset, self.path)

    def get(self, id: int) -> Descriptor:
        for d in self.descriptors:
            if d.id == id:
                return d
        raise HpcbindError(
            f"{self.path}: no object with ID {id}",
            f"run 'hpcrun sif list {self.path}' to see the object IDs",
        )

    def of_type(self, data_type: DataType) -> tuple[Descriptor, ...]:
        return tuple(d for d in self.descriptors if d.data_type == data_type)

    def primary_partition(self) -> Descriptor:
        """The root filesystem partition (validation guarantees there is at most one)."""
        for d in self.descriptors:
            if _is_primary(d):
                return d
        raise HpcbindError(
            f"{self.path}: the image has no primary partition (no root filesystem to run)",
            f"mark a system partition primary with 'hpcrun sif setprim {self.path} ID', "
            "or rebuild the image with 'hpcrun build'",
        )


# ---------------------------------------------------------------------------------- writing


_OBJECT_INPUT_FIELDS = (
    "data_type data source name group linked_id linked_group alignment partition signature "
    "crypto sbom_format extra created_at"
)


class ObjectInput(
    namedtuple(
        "ObjectInput",
        _OBJECT_INPUT_FIELDS,
        defaults=(b"", None, "", 1, 0, 0, None, None, None, None, None, None, None),
    )
):
    """A data object to add, with the options of sylabs/sif's ``NewDescriptorInput``.

    data_type: DataType; data: bytes, or source: a path to stream instead; name: str;
    group: int, 0 = no group (default 1); linked_id: object link; linked_group: group link;
    alignment: None = 4096 for partitions, none otherwise; partition: Partition;
    signature: (HashType, fingerprint bytes); crypto: (CryptoFormat, CryptoMessage);
    sbom_format: SbomFormat; extra: custom metadata bytes (OptMetadata), replacing the typed
    kinds; created_at: object time, default the image's create or edit time.
    """

    __slots__ = ()


# Typed metadata and the one data type each belongs to (sylabs/sif's unexpectedDataTypeError).
_EXTRA_KINDS = (
    ("partition", DataType.PARTITION),
    ("signature", DataType.SIGNATURE),
    ("crypto", DataType.CRYPTO_MESSAGE),
    ("sbom_format", DataType.SBOM),
)
_OCI_TYPES = (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB)


def _type_name(data_type: int) -> str:
    return data_type.name if isinstance(data_type, DataType) else f"type {data_type:#x}"


def _check_input(obj: ObjectInput) -> None:
    def bad(what: str, fix: str) -> HpcbindError:
        return HpcbindError(f"cannot add {_type_name(obj.data_type)} object: {what}", fix)

    if not isinstance(obj.data_type, DataType):
        raise bad("unknown data type", f"use one of {', '.join(t.name for t in DataType)}")
    if obj.data and obj.source is not None:
        raise bad("both data and a source file given", "give one of them")
    if len(obj.name.encode()) > _NAME_LEN:
        raise bad(f"name longer than {_NAME_LEN} bytes", "use a shorter name")
    for label, value in (("group", obj.group), ("linked group", obj.linked_group), ("link", obj.linked_id)):
        if not 0 <= value <= _MAX_ID:
            raise bad(f"{label} {value} is outside 0..{_MAX_ID}", "use a smaller ID")
    if obj.linked_id and obj.linked_group:
        raise bad("linked to both an object and a group", "link to one of them")
    if obj.alignment is not None and obj.alignment < 0:
        raise bad(f"negative alignment {obj.alignment}", "use 0 (none) or a positive alignment")
    if obj.extra is not None and len(obj.extra) > _EXTRA_LEN:
        raise bad(f"metadata longer than {_EXTRA_LEN} bytes", "store it as a data object instead")
    if obj.signature is not None and len(obj.signature[1]) > _ENTITY_LEN:
        raise bad(f"fingerprint longer than {_ENTITY_LEN} bytes", "give the key's fingerprint")
    for attribute, owner in _EXTRA_KINDS:
        if getattr(obj, attribute) is not None and obj.data_type != owner:
            raise bad(f"{attribute} metadata given", f"it belongs to a {owner.name} object")


def _typed_extra(obj: ObjectInput, oci_digest: str | None) -> bytes:
    if obj.extra is not None:
        return obj.extra
    if obj.partition is not None:
        return obj.partition.extra()
    if obj.signature is not None:
        hash_type, fingerprint = obj.signature
        return _INT32.pack(hash_type) + fingerprint.ljust(_ENTITY_LEN, b"\0")
    if obj.crypto is not None:
        return _INT32_PAIR.pack(*obj.crypto)
    if obj.sbom_format is not None:
        return _INT32.pack(obj.sbom_format)
    if obj.data_type in _OCI_TYPES:
        return (oci_digest or _sha256_digest(obj.data)).encode("ascii")
    return b""


def _sha256_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor_for(obj: ObjectInput, t: int, oci_digest: str | None = None) -> Descriptor:
    """The descriptor sylabs/sif's ``fillDescriptor`` makes for ``obj`` at time ``t``, before
    the object is placed (unused, ID 0, no offset). OCI objects record the digest of their
    data: ``oci_digest`` when the caller streamed it, else the digest of ``obj.data``."""
    _check_input(obj)
    when = t if obj.created_at in (None, GO_ZERO_TIME) else obj.created_at
    linked = obj.linked_id or (GROUP_MASK | obj.linked_group if obj.linked_group else 0)
    return Descriptor(
        data_type=obj.data_type,
        used=False,
        id=0,
        raw_group_id=GROUP_MASK | obj.group,
        raw_linked_id=linked,
        offset=0,
        size=0,
        size_with_padding=0,
        created_at=when,
        modified_at=when,
        uid=0,
        gid=0,
        name=obj.name.encode().ljust(_NAME_LEN, b"\0"),
        extra=_typed_extra(obj, oci_digest).ljust(_EXTRA_LEN, b"\0"),
    )


def next_aligned(offset: int, alignment: int) -> int:
    """The first offset at or after ``offset`` that is a multiple of ``alignment`` (0: any)."""
    if alignment <= 0 or offset % alignment == 0:
        return offset
    return offset + alignment - offset % alignment


def _data_end(header: Header, used: dict[int, Descriptor]) -> int:
    """sylabs/sif's calculatedDataSize: DataSize recomputed from the objects still in use."""
    return max([header.data_offset, *(d.end for d in used.values())]) - header.data_offset


def _now() -> int:
    import time

    return int(time.time())


def _edit_time(header: Header, at: int | None) -> int:
    if at is not None:
        return at
    return GO_ZERO_TIME if header.deterministic else _now()


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _write_zeros(fd: int, offset: int, size: int) -> None:
    zeros = bytes(min(size, _COPY_CHUNK))
    for start in range(offset, offset + size, _COPY_CHUNK):
        _write_all(fd, zeros[: min(_COPY_CHUNK, offset + size - start)], start)


def _copy_into(fd: int, obj: ObjectInput, offset: int) -> tuple[int, str | None]:
    """Write the object's data at ``offset``; return its size and, for OCI objects, digest."""
    import hashlib

    hasher = hashlib.sha256() if obj.data_type in _OCI_TYPES else None
    if obj.source is None:
        pieces: Iterator[bytes] = iter((obj.data,))
        stream = None
    else:
        try:
            stream = open(obj.source, "rb")  # noqa: SIM115 - closed below, read lazily by pieces
        except OSError as err:
            raise HpcbindError(
                f"cannot read {obj.source}: {err.strerror}", "check the path of the object's contents"
            ) from None
        pieces = iter(lambda: stream.read(_COPY_CHUNK), b"")
    size = 0
    try:
        for piece in pieces:
            _write_all(fd, piece, offset + size)
            size += len(piece)
            if hasher is not None:
                hasher.update(piece)
    finally:
        if stream is not None:
            stream.close()
    return size, None if hasher is None else "sha256:" + hasher.hexdigest()


class _Editor:
    """A SIF file being changed in place, as sylabs/sif does it: object data first, then the
    descriptor slots, then the header, so an interrupted edit leaves at worst unreferenced
    bytes. Holds the header and the used descriptors by table slot."""

    def __init__(self, path: PathArg, fd: int, header: Header, used: dict[int, Descriptor]) -> None:
        self.path = path
        self.fd = fd
        self.header = header
        self.used = used

    @classmethod
    def open(cls, path: PathArg) -> _Editor:
        with SifImage.open(path) as image:
            header, used = image.header, dict(zip(image.slots, image.descriptors))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as err:
            raise HpcbindError(
                f"cannot open {os.fspath(path)} for writing: {err.strerror}",
                "check that you own the image and it is not on a read-only filesystem",
            ) from None
        return cls(path, fd, header, used)

    def __enter__(self) -> _Editor:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        os.close(self.fd)
        if isinstance(error, OSError):
            raise _write_error(self.path, error) from error

    def find(self, id: int) -> tuple[int, Descriptor]:
        for slot, d in self.used.items():
            if d.id == id:
                return slot, d
        raise HpcbindError(
            f"{os.fspath(self.path)}: no object with ID {id}",
            f"run 'hpcrun sif list {os.fspath(self.path)}' to see the object IDs",
        )

    def free_slots(self) -> int:
        """sylabs/sif counts DescriptorsFree up and down; counting the slots gives the same
        number for every sound image and repairs a wrong count instead of carrying it on."""
        return self.header.descriptors_total - len(self.used)

    def new_id(self, slot: int) -> int:
        """sylabs/sif numbers an object by its slot. In an image from an older writer that ID
        may be taken, and Go would write a duplicate; we take the next unused one instead."""
        taken = {d.id for d in self.used.values()}
        return slot + 1 if slot + 1 not in taken else max(taken) + 1

    def primary(self) -> tuple[int, Descriptor] | None:
        return next(((s, d) for s, d in self.used.items() if _is_primary(d)), None)

    def put(self, slot: int, d: Descriptor | None) -> None:
        """Write one table slot (None: an unused, all-zero slot)."""
        if d is None:
            self.used.pop(slot, None)
        else:
            self.used[slot] = d
        raw = bytes(DESCRIPTOR.size) if d is None else d.pack()
        _write_all(self.fd, raw, self.header.descriptors_offset + slot * DESCRIPTOR.size)

    def write_header(self, **changes: object) -> None:
        self.header = self.header._replace(**changes)
        _write_all(self.fd, self.header.pack(), 0)

    def add(self, obj: ObjectInput, t: int) -> int:
        """Place ``obj`` after the last object in the first free slot; return its ID."""
        template = descriptor_for(obj, t)  # validates obj before anything is written
        slot = next((s for s in range(self.header.descriptors_total) if s not in self.used), None)
        if slot is None:
            raise HpcbindError(
                f"{os.fspath(self.path)}: all {self.header.descriptors_total} descriptor slots are used",
                "delete an object first, or create the image with more capacity",
            )
        arch = self.header.arch
        if obj.partition is not None and obj.partition.parttype == PartType.PRIMSYS:
            if self.primary() is not None:
                raise HpcbindError(
                    f"{os.fspath(self.path)}: the image already has a primary partition",
                    "add this one as a system partition (PartType.SYSTEM), or delete the other",
                )
            arch = _arch_field(obj.partition.arch)
        data_size = _data_end(self.header, self.used)
        unaligned = self.header.data_offset + data_size
        default_alignment = PARTITION_ALIGNMENT if obj.data_type == DataType.PARTITION else 0
        offset = next_aligned(unaligned, default_alignment if obj.alignment is None else obj.alignment)
        size, digest = _copy_into(self.fd, obj, offset)
        if digest is not None and obj.extra is None:
            template = template._replace(extra=digest.encode("ascii").ljust(_EXTRA_LEN, b"\0"))
        padded = offset - unaligned + size
        placed = template._replace(
            used=True, id=self.new_id(slot), offset=offset, size=size, size_with_padding=padded
        )
        self.put(slot, placed)
        self.write_header(
            arch=arch,
            descriptors_free=self.free_slots(),
            data_size=data_size + padded,
            modified_at=t,
        )
        return placed.id


def _write_error(path: PathArg, error: OSError) -> HpcbindError:
    return HpcbindError(
        f"cannot write {os.fspath(path)}: {error.strerror}",
        "check the free space and permissions of its filesystem",
    )


def create(
    path: PathArg,
    objects: Sequence[ObjectInput],
    *,
    launch_script: str = "",
    image_id: uuid.UUID | None = None,
    created_at: int | None = None,
    deterministic: bool = False,
    capacity: int = DEFAULT_CAPACITY,
) -> None:
    """Write a new SIF at ``path`` holding ``objects`` (IDs 1, 2, ... in order).

    Default: a random ID and the current time; ``deterministic``: nil ID and Go's zero time.
    ``image_id`` and ``created_at`` override either. The image is written to a temporary file
    beside ``path`` and renamed over it, so a failure never leaves a half-written image there.
    """
    import tempfile
    import uuid

    launch = launch_script.encode()
    if len(launch) >= _LAUNCH_SCRIPT_LEN:
        raise HpcbindError(
            f"launch script {launch_script!r} is {len(launch)} bytes",
            f"a SIF launch script must be shorter than {_LAUNCH_SCRIPT_LEN} bytes",
        )
    if not 0 <= capacity <= MAX_DESCRIPTORS:
        raise HpcbindError(f"descriptor capacity {capacity}", f"use 0..{MAX_DESCRIPTORS}")
    if len(objects) > capacity:
        raise HpcbindError(
            f"{len(objects)} objects do not fit in {capacity} descriptor slots",
            "create the image with a larger capacity",
        )
    for obj in objects:
        _check_input(obj)
    t = created_at if created_at is not None else GO_ZERO_TIME if deterministic else _now()
    ident = image_id or (uuid.UUID(int=0) if deterministic else uuid.uuid4())
    table_size = capacity * DESCRIPTOR.size
    header = Header(
        launch_script=launch.ljust(_LAUNCH_SCRIPT_LEN, b"\0"),
        magic=MAGIC,
        version=VERSION,
        arch=b"00\0",
        id=ident,
        created_at=t,
        modified_at=t,
        descriptors_free=capacity,
        descriptors_total=capacity,
        descriptors_offset=DESCRIPTORS_OFFSET,
        descriptors_size=table_size,
        data_offset=DESCRIPTORS_OFFSET + table_size,
        data_size=0,
    )
    target = os.path.abspath(path)
    directory, name = os.path.split(target)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise HpcbindError(
            f"cannot create {target}: {err.strerror}", "check that the directory exists and is writable"
        ) from None
    try:
        # The zeroed header page and descriptor table, as the Go library leaves them.
        os.ftruncate(fd, header.data_offset)
        editor = _Editor(temp, fd, header, {})
        editor.write_header()
        for obj in objects:
            editor.add(obj, t)
        os.fchmod(fd, 0o755 & ~_umask())  # sylabs/sif creates images 0755 (less the umask)
        os.close(fd)
        fd = -1
        os.replace(temp, target)
    except BaseException as error:
        if fd >= 0:
            os.close(fd)
        os.unlink(temp)
        if isinstance(error, OSError):
            raise _write_error(target, error) from error
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def add_object(path: PathArg, obj: ObjectInput, *, at: int | None = None) -> int:
    """Add ``obj`` to the image at ``path`` in its first free slot; return the new ID.

    ``at`` is the edit time; default: now, or Go's zero time for a deterministic image.
    """
    with _Editor.open(path) as editor:
        return editor.add(obj, _edit_time(editor.header, at))


def delete_objects(
    path: PathArg,
    select: Callable[[Descriptor], bool],
    *,
    zero: bool = False,
    compact: bool = False,
    at: int | None = None,
) -> tuple[int, ...]:
    """Delete every object ``select`` accepts; return their IDs.

    ``zero`` overwrites their data with zeros; ``compact`` recomputes DataSize and truncates
    the file after the last remaining object. Deleting the primary partition clears the
    image's architecture. ``at`` is the edit time, as for ``add_object``.
    """
    with _Editor.open(path) as editor:
        chosen = [slot for slot, d in editor.used.items() if select(d)]
        if not chosen:
            raise HpcbindError(
                f"{os.fspath(path)}: no object matches",
                f"run 'hpcrun sif list {os.fspath(path)}' to see the objects",
            )
        return _delete(editor, sorted(chosen), zero=zero, compact=compact, at=at)


def delete_object(
    path: PathArg, id: int, *, zero: bool = False, compact: bool = False, at: int | None = None
) -> None:
    """Delete object ``id``; see ``delete_objects``."""
    with _Editor.open(path) as editor:
        slot, _ = editor.find(id)
        _delete(editor, [slot], zero=zero, compact=compact, at=at)


def _delete(
    editor: _Editor, slots: Sequence[int], *, zero: bool, compact: bool, at: int | None
) -> tuple[int, ...]:
    header = editor.header
    arch = header.arch
    ids = []
    for slot in slots:
        d = editor.used[slot]
        ids.append(d.id)
        if zero:
            _write_zeros(editor.fd, d.offset, d.size)
        if _is_primary(d):
            arch = b"00\0"
        editor.put(slot, None)
    data_size = _data_end(header, editor.used) if compact else header.data_size
    editor.write_header(
        arch=arch,
        descriptors_free=editor.free_slots(),
        modified_at=_edit_time(header, at),
        data_size=data_size,
    )
    if compact:
        # After the table and header, so an interruption cannot leave descriptors that point
        # past the end of the file; the bytes are those of sylabs/sif's truncate-first order.
        os.ftruncate(editor.fd, header.data_offset + data_size)
    return tuple(ids)


def set_primary_partition(path: PathArg, id: int, *, at: int | None = None) -> None:
    """Make system partition ``id`` the primary one; the old primary becomes a system
    partition and the header takes the new one's architecture. No-op if already primary."""
    with _Editor.open(path) as editor:
        slot, d = editor.find(id)
        if d.data_type != DataType.PARTITION:
            raise HpcbindError(
                f"{os.fspath(path)}: object {id} is not a partition", "give the ID of a partition"
            )
        fstype, parttype, arch = _PARTITION.unpack_from(d.extra)
        if parttype == PartType.PRIMSYS:
            return
        if parttype != PartType.SYSTEM:
            raise HpcbindError(
                f"{os.fspath(path)}: partition {id} is not a system partition",
                "only a system partition can become the primary one",
            )
        t = _edit_time(editor.header, at)
        old = editor.primary()
        if old is not None:
            old_slot, old_d = old
            old_fs, _, old_arch = _PARTITION.unpack_from(old_d.extra)
            editor.put(old_slot, _with_extra(old_d, _partition_extra(old_fs, PartType.SYSTEM, old_arch), t))
        editor.put(slot, _with_extra(d, _partition_extra(fstype, PartType.PRIMSYS, arch), t))
        editor.write_header(arch=arch, modified_at=t)


def _with_extra(d: Descriptor, extra: bytes, t: int) -> Descriptor:
    return d._replace(extra=extra.ljust(_EXTRA_LEN, b"\0"), modified_at=t)


def set_metadata(path: PathArg, id: int, extra: bytes, *, at: int | None = None) -> None:
    """Replace object ``id``'s metadata (the descriptor's Extra field) with ``extra``."""
    _set_extra(path, id, extra, at, kinds=None)


def set_oci_blob_digest(path: PathArg, id: int, digest: str, *, at: int | None = None) -> None:
    """Record ``digest`` ("sha256:<hex>") as the digest of OCI object ``id``."""
    if not _valid_digest(digest):
        raise HpcbindError(f"malformed OCI digest {digest!r}", "give sha256: and 64 lowercase hex digits")
    _set_extra(path, id, digest.encode("ascii"), at, kinds=_OCI_TYPES)


def _set_extra(
    path: PathArg, id: int, extra: bytes, at: int | None, kinds: tuple[DataType, ...] | None
) -> None:
    if len(extra) > _EXTRA_LEN:
        raise HpcbindError(f"metadata of {len(extra)} bytes", f"metadata holds at most {_EXTRA_LEN}")
    with _Editor.open(path) as editor:
        slot, d = editor.find(id)
        if kinds is not None and d.data_type not in kinds:
            raise HpcbindError(
                f"{os.fspath(path)}: object {id} is a {_type_name(d.data_type)} object",
                f"give the ID of a {' or '.join(k.name for k in kinds)} object",
            )
        t = _edit_time(editor.header, at)
        editor.put(slot, _with_extra(d, extra, t))
        editor.write_header(modified_at=t)
