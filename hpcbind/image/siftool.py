"""Text output identical to the reference ``siftool header|list|info`` (sylabs/sif v2,
``internal/app/siftool/info.go``), so scripts and eyes used to siftool read ours unchanged.

Names follow the Go ``String()`` methods: "FS" for a partition, "*System" for the primary
partition type, ``crypto.Hash`` names ("SHA-256") for signature hashes. Go's ``text/tabwriter``
is reproduced only as far as siftool uses it: one label column padded to its widest cell plus
the writer's padding.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import BinaryIO

from hpcbind.errors import HpcbindError
from hpcbind.image.sif import (
    GO_ZERO_TIME,
    CryptoFormat,
    CryptoMessage,
    DataType,
    Descriptor,
    FsType,
    HashType,
    PartType,
    SbomFormat,
    SifImage,
)

DATA_TYPE_NAMES = {
    DataType.DEFFILE: "Def.FILE",
    DataType.ENVVAR: "Env.Vars",
    DataType.LABELS: "JSON.Labels",
    DataType.PARTITION: "FS",
    DataType.SIGNATURE: "Signature",
    DataType.GENERIC_JSON: "JSON.Generic",
    DataType.GENERIC: "Generic/Raw",
    DataType.CRYPTO_MESSAGE: "Cryptographic Message",
    DataType.SBOM: "SBOM",
    DataType.OCI_ROOT_INDEX: "OCI.RootIndex",
    DataType.OCI_BLOB: "OCI.Blob",
}
# sylabs/sif has no name for apptainer's GocryptfsSquashfs (6): its siftool prints "Unknown".
FS_NAMES = {
    FsType.SQUASHFS: "Squashfs",
    FsType.EXT3: "Ext3",
    FsType.IMMUOBJ: "Archive",
    FsType.RAW: "Raw",
    FsType.ENCRYPTED_SQUASHFS: "Encrypted squashfs",
}
PART_NAMES = {
    PartType.SYSTEM: "System",
    PartType.PRIMSYS: "*System",
    PartType.DATA: "Data",
    PartType.OVERLAY: "Overlay",
}
HASH_NAMES = {
    HashType.SHA256: "SHA-256",
    HashType.SHA384: "SHA-384",
    HashType.SHA512: "SHA-512",
    HashType.BLAKE2S: "BLAKE2s-256",
    HashType.BLAKE2B: "BLAKE2b-256",
}
CRYPTO_FORMAT_NAMES = {CryptoFormat.OPENPGP: "OpenPGP", CryptoFormat.PEM: "PEM"}
CRYPTO_MESSAGE_NAMES = {
    CryptoMessage.CLEAR_SIGNATURE: "Clear Signature",
    CryptoMessage.RSA_OAEP: "RSA-OAEP",
}
SBOM_NAMES = {
    SbomFormat.CYCLONEDX_JSON: "cyclonedx-json",
    SbomFormat.CYCLONEDX_XML: "cyclonedx-xml",
    SbomFormat.GITHUB_JSON: "github-json",
    SbomFormat.SPDX_JSON: "spdx-json",
    SbomFormat.SPDX_RDF: "spdx-rdf",
    SbomFormat.SPDX_TAG_VALUE: "spdx-tag-value",
    SbomFormat.SPDX_YAML: "spdx-yaml",
    SbomFormat.SYFT_JSON: "syft-json",
}
_RULE = "-" * 78


def readable_size(size: int) -> str:
    """siftool's readableSize: "27 KiB"; Go's math.Round rounds halves away from zero."""
    if -1024 < size < 1024:
        return f"{size} B"
    divisor, exponent = 1024, 0
    scaled = abs(size) // 1024
    while scaled >= 1024:
        divisor *= 1024
        exponent += 1
        scaled //= 1024
    # Integer rounding; Go divides float64s, which is exact here for any size below 8 PiB.
    quotient, remainder = divmod(abs(size), divisor)
    rounded = quotient + (2 * remainder >= divisor)
    return f"{'-' if size < 0 else ''}{rounded} {'KMGTPE'[exponent]}iB"


def go_time(seconds: int) -> str:
    """Go's ``time.Unix(seconds, 0).UTC().String()``: "2020-06-30 00:01:56 +0000 UTC"."""
    try:
        t = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        # Past year 9999 Python has no calendar; Go would print one. Say what is stored.
        return f"{seconds} seconds after 1970-01-01 +0000 UTC"
    return f"{t.year:04d}-{t:%m-%d %H:%M:%S} +0000 UTC"


def _columns(rows: list[tuple[str, str]], padding: int, indent: str = "") -> str:
    width = max(len(label) for label, _ in rows) + padding
    return "".join(f"{indent}{label:<{width}}{value}\n" for label, value in rows)


def render_header(image: SifImage) -> str:
    """``siftool header IMAGE``."""
    h = image.header
    rows = []
    if launch := h.launch_script_text:
        rows.append(("Launch Script:", launch.removesuffix("\n")))
    rows.append(("Version:", h.version_text))
    if (arch := h.primary_arch) != "unknown":
        rows.append(("Primary Architecture:", arch))
    if h.id.int:
        rows.append(("ID:", str(h.id)))
    if h.created_at != GO_ZERO_TIME:
        rows.append(("Created At:", go_time(h.created_at)))
    if h.modified_at != GO_ZERO_TIME:
        rows.append(("Modified At:", go_time(h.modified_at)))
    rows += [
        ("Descriptors Free:", str(h.descriptors_free)),
        ("Descriptors Total:", str(h.descriptors_total)),
        ("Descriptors Offset:", str(h.descriptors_offset)),
        ("Descriptors Size:", readable_size(h.descriptors_size)),
        ("Data Offset:", str(h.data_offset)),
        ("Data Size:", readable_size(h.data_size)),
    ]
    return _columns(rows, padding=1)


def _type_name(d: Descriptor) -> str:
    return DATA_TYPE_NAMES.get(d.data_type, "Unknown")


def _hash_name(d: Descriptor) -> str:
    # Go's SignatureMetadata fails on a hash code it does not know, and siftool then drops
    # the row's type column (list) or the whole command (info); we name it "Unknown".
    return HASH_NAMES.get(d.signature_hash, "Unknown")


def _type_detail(d: Descriptor) -> str:
    """The TYPE column of ``siftool list``."""
    if (p := d.partition) is not None:
        detail = f"{FS_NAMES.get(p.fstype, 'Unknown')}/{PART_NAMES.get(p.parttype, 'Unknown')}/{p.arch}"
    elif d.data_type == DataType.SIGNATURE:
        detail = _hash_name(d)
    elif (message := d.crypto_message) is not None:
        fmt, kind = message
        detail = f"{CRYPTO_FORMAT_NAMES.get(fmt, 'Unknown')}/{CRYPTO_MESSAGE_NAMES.get(kind, 'Unknown')}"
    elif (sbom := d.sbom_format) is not None:
        detail = SBOM_NAMES.get(sbom, "unknown")
    else:
        return _type_name(d)
    return f"{_type_name(d)} ({detail})"


def _group(d: Descriptor) -> str:
    return str(d.group_id) if d.group_id else "NONE"


def render_list(image: SifImage) -> str:
    """``siftool list IMAGE``."""
    lines = [_RULE, f"{'ID':<4} {'|GROUP':<8} {'|LINK':<8} {'|SIF POSITION (start-end)':<26} |TYPE", _RULE]
    for d in image.descriptors:
        if (group := d.linked_group) is not None:
            link = f"|{group:<3} (G) "
        else:
            link = f"|{d.linked_object or 'NONE':<7} "
        lines.append(
            f"{d.id:<4} |{_group(d):<7} {link}{f'|{d.offset}-{d.end} ':<26} |{_type_detail(d)}"
        )
    return "\n".join(lines) + "\n"


def render_info(d: Descriptor) -> str:
    """``siftool info ID IMAGE`` for descriptor ``d``."""
    if (group := d.linked_group) is not None:
        linked = f"{group} (G)"
    else:
        linked = str(d.linked_object or "NONE")
    rows = [
        ("Data Type:", _type_name(d)),
        ("ID:", str(d.id)),
        ("Group ID:", _group(d)),
        ("Linked ID:", linked),
        ("Offset:", str(d.offset)),
        ("Size:", str(d.size)),
    ]
    if d.created_at != GO_ZERO_TIME:
        rows.append(("Created At:", go_time(d.created_at)))
    if d.modified_at != GO_ZERO_TIME:
        rows.append(("Modified At:", go_time(d.modified_at)))
    if name := d.name_str:
        rows.append(("Name:", name))
    rows += _info_metadata(d)
    # Go's tabwriter pads siftool's leading empty cell to 0 + padding = 2 spaces.
    return _columns(rows, padding=2, indent="  ")


def _info_metadata(d: Descriptor) -> list[tuple[str, str]]:
    if (p := d.partition) is not None:
        return [
            ("Filesystem Type:", FS_NAMES.get(p.fstype, "Unknown")),
            ("Partition Type:", PART_NAMES.get(p.parttype, "Unknown")),
            ("Architecture:", p.arch),
        ]
    if d.data_type == DataType.SIGNATURE:
        rows = [("Hash Type:", _hash_name(d))]
        if (fingerprint := d.signature_fingerprint) is not None:
            rows.append(("Entity:", fingerprint.hex().upper()))
        return rows
    if (message := d.crypto_message) is not None:
        fmt, kind = message
        return [
            ("Format Type:", CRYPTO_FORMAT_NAMES.get(fmt, "Unknown")),
            ("Message Type:", CRYPTO_MESSAGE_NAMES.get(kind, "Unknown")),
        ]
    if (sbom := d.sbom_format) is not None:
        return [("Format:", SBOM_NAMES.get(sbom, "unknown"))]
    if d.data_type in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB):
        if (digest := d.oci_digest) is None:
            raise HpcbindError(
                f"object {d.id} records no valid OCI digest", "set one with set_oci_blob_digest"
            )
        return [("Digest:", digest)]
    return []


def dump(image: SifImage, id: int, out: BinaryIO) -> None:
    """``siftool dump ID IMAGE``: the object's data, streamed."""
    for chunk in image.chunks(image.get(id)):
        out.write(chunk)
