"""The pieces of SIF signing against sylabs/sif's own goldens (tests/data/sif).

Image metadata and digests are compared byte for byte with ``pkg/integrity/testdata`` (written
by Go's ``json.Encoder``, hence the final newline the signed message itself does not have),
DSSE envelopes with ``Test_dsseEncoder_signMessage``, and the metadata Singularity 3.8 signed
into the busybox images with what this code computes from those images.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from pgpy.constants import HashAlgorithm, SymmetricKeyAlgorithm

from hpcbind.errors import HpcbindError
from hpcbind.image import integrity
from hpcbind.image.integrity import (
    IntegrityError,
    digest,
    dsse_envelope,
    dsse_key_id,
    go_json,
    header_metadata,
    image_metadata,
    load_keyring,
    load_signing_key,
    object_metadata,
    parse_clearsigned,
    parse_digest,
)
from hpcbind.image.sif import DataType, SifImage

CORPUS = Path(__file__).resolve().parent / "data" / "sif"
GOLDEN = CORPUS / "sylabs-sif" / "golden" / "integrity"
IMAGES = CORPUS / "sylabs-sif" / "images"
KEYS = CORPUS / "sylabs-sif" / "keys"
BUSYBOX = sorted((CORPUS / "singularityce" / "images").glob("busybox_*.sif"))
MANIFEST = (CORPUS / "MANIFEST.md").read_text()

# The golden names' spelling of the digest algorithms.
ALGORITHMS = {"SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512",
              "SHA512_224": "sha512_224", "SHA512_256": "sha512_256"}
# sylabs/sif's TestDigest_MarshalJSON hashes "hello world\n" for these four; its SHA512/t
# values are constants of the Go test, checked here by the round trip alone.
HELLO = b"hello world\n"
# The input MANIFEST section 4 names for TestGetObjectMetadata.
OBJECT_DATA = b"blah"
# Test_dsseEncoder_signMessage's message and signers (pkg/integrity/dsse_test.go).
DSSE_MESSAGE = b'{"One":1,"Two":2}\n'
DSSE_CASES = {
    "ED25519": (["ed25519-private.pem"], "sha256"),
    "RSA_SHA256": (["rsa-private.pem"], "sha256"),
    "RSA_SHA384": (["rsa-private.pem"], "sha384"),
    "RSA_SHA512": (["rsa-private.pem"], "sha512"),
    "Multi": (["rsa-private.pem", "rsa-private.pem"], "sha256"),
}


def golden(case: str, name: str) -> bytes:
    return (GOLDEN / case / f"{name}.golden").read_bytes()


def private_key(name: str):
    return serialization.load_pem_private_key((KEYS / name).read_bytes(), password=None)


# ---------------------------------------------------------------------------------- digests


@pytest.mark.parametrize("name", ALGORITHMS)
def test_digest_json_round_trips_the_golden(name: str) -> None:
    text = golden("TestDigest_MarshalJSON", name)
    algorithm, raw = parse_digest(json.loads(text))
    assert algorithm == ALGORITHMS[name]
    assert go_json(f"{algorithm}:{raw.hex()}") + b"\n" == text


@pytest.mark.parametrize("name", ["SHA224", "SHA256", "SHA384", "SHA512"])
def test_digest_of_data_matches_the_golden(name: str) -> None:
    assert go_json(digest(ALGORITHMS[name], [HELLO])) + b"\n" == golden("TestDigest_MarshalJSON", name)


@pytest.mark.parametrize(("value", "error"), [
    # TestDigest_UnmarshalJSON's rejected inputs and the errors it expects
    ("bad", "digest malformed"),
    ("md5:b0804ec967f48520697662a204f5fe72", "hash algorithm unsupported"),
    ("sha1:597f6a540010f94c15d71806a99a2c8710e747bd", "hash algorithm unsupported"),
    ("sha256:oops", "digest malformed"),
    ("sha256:597f", "digest malformed"),
    ({}, "digest malformed"),
])
def test_parse_digest_rejects_what_sylabs_rejects(value: object, error: str) -> None:
    with pytest.raises(IntegrityError, match=f"^{error}$"):
        parse_digest(value)


# ---------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", ALGORITHMS)
def test_header_metadata_golden(name: str) -> None:
    stream = (GOLDEN / "sources" / "header.bin").read_bytes()
    assert go_json(header_metadata(stream, ALGORITHMS[name])) + b"\n" == golden("TestGetHeaderMetadata", name)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_object_metadata_golden(name: str) -> None:
    descriptor = (GOLDEN / "sources" / "descr-rid0.bin").read_bytes()
    metadata = object_metadata(0, descriptor, [OBJECT_DATA], ALGORITHMS[name])
    assert go_json(metadata) + b"\n" == golden("TestGetObjectMetadata", name)


def test_object_metadata_relative_id_golden() -> None:
    descriptor = (GOLDEN / "sources" / "descr-rid1.bin").read_bytes()
    metadata = object_metadata(1, descriptor, [OBJECT_DATA])
    assert go_json(metadata) + b"\n" == golden("TestGetObjectMetadata", "RelativeID")


@pytest.mark.parametrize(("name", "ids"), [
    ("SHA224", (1, 2)), ("SHA256", (1, 2)), ("SHA384", (1, 2)), ("SHA512", (1, 2)),
    ("Object1", (1,)), ("Object2", (2,)),
])
def test_image_metadata_golden(name: str, ids: tuple[int, ...]) -> None:
    with SifImage.open(IMAGES / "one-group.sif") as image:
        objects = [image.get(id) for id in ids]
        metadata = image_metadata(image, 1, objects, ALGORITHMS.get(name, "sha256"))
    assert go_json(metadata) + b"\n" == golden("TestGetImageMetadata", name)


@pytest.mark.parametrize("path", BUSYBOX, ids=lambda p: p.name)
def test_busybox_metadata_is_what_singularity_signed(path: Path) -> None:
    """Singularity 3.8.1's key is nowhere, but the JSON it signed is readable: the header and
    all four objects' digests computed here are exactly that text."""
    with SifImage.open(path) as image:
        (signature,) = image.of_type(DataType.SIGNATURE)
        signed = parse_clearsigned(image.read(signature))
        objects = sorted((d for d in image.descriptors if d.group_id == 1), key=lambda d: d.id)
        computed = go_json(image_metadata(image, objects[0].id, objects))
    assert [d.id for d in objects] == [1, 2, 3, 4]
    assert signed is not None and signed.plaintext == computed


def test_signature_claims_name_the_descriptor_and_envelope_signers() -> None:
    busybox_signer = re.search(r"signed by key fp (\w{40})", MANIFEST).group(1)
    assert integrity.signature_claims(BUSYBOX[0]) == [busybox_signer]
    envelope = json.loads(golden("Test_dsseEncoder_signMessage", "Multi"))
    keyids = {s["keyid"] for s in json.loads(golden("Test_dsseEncoder_signMessage", "ED25519"))["signatures"]}
    keyids |= {s["keyid"] for s in envelope["signatures"]}
    assert integrity.signature_claims(IMAGES / "two-groups-signed-dsse.sif") == sorted(keyids)
    assert integrity.signature_claims(IMAGES / "two-groups.sif") == []


# ---------------------------------------------------------------------------------- DSSE


@pytest.mark.parametrize("name", DSSE_CASES)
def test_dsse_envelope_golden(name: str) -> None:
    key_names, hash_name = DSSE_CASES[name]
    envelope = dsse_envelope(DSSE_MESSAGE, [private_key(k) for k in key_names], hash_name)
    assert envelope == golden("Test_dsseEncoder_signMessage", name)


@pytest.mark.parametrize("name", ["ed25519", "rsa"])
def test_dsse_key_ids_are_those_manifest_lists(name: str) -> None:
    prefix = re.search(rf"{name} `([\w/+]+)…`", MANIFEST).group(1)
    public = load_keyring([KEYS / f"{name}-public.pem"]).pem[0]
    private = load_keyring([KEYS / f"{name}-private.pem"]).pem[0]
    assert dsse_key_id(public) == dsse_key_id(private)
    assert dsse_key_id(public).startswith(f"SHA256:{prefix}")


# ---------------------------------------------------------------------------------- PGP


def test_clearsigned_without_armor_checksum_is_read() -> None:
    """go-crypto 2024 output has no CRC24 line; Singularity 3.5's has one: both parse."""
    with SifImage.open(IMAGES / "one-group-signed-pgp.sif") as image:
        data = image.read(image.get(3))
    with SifImage.open(IMAGES / "one-group-signed-legacy.sif") as image:
        legacy = image.read(image.get(3))
        legacy_object = image.read(image.get(2))
    assert not re.search(rb"^=", data, re.MULTILINE) and re.search(rb"^=", legacy, re.MULTILINE)
    with SifImage.open(IMAGES / "one-group.sif") as image:
        objects = list(image.descriptors)
        expected = go_json(image_metadata(image, 1, objects))
    assert parse_clearsigned(data).plaintext == expected
    legacy_digest = digest("sha384", [legacy_object]).removeprefix("sha384:")
    assert parse_clearsigned(legacy).plaintext == b"SIFHASH:\n" + legacy_digest.encode()


def test_non_clearsigned_data_is_none() -> None:
    assert parse_clearsigned(golden("Test_dsseEncoder_signMessage", "ED25519")) is None
    assert parse_clearsigned(b"\xff\xfe not text") is None


# ---------------------------------------------------------------------------------- keys


def test_keyring_mixes_pgp_and_pem() -> None:
    keyring = load_keyring([KEYS / "private.asc", KEYS / "ecdsa-public.pem", KEYS / "ed25519-private.pem"])
    fingerprint = re.search(r"fp (\w{40}), \"Unit Test", MANIFEST).group(1)
    assert [str(k.fingerprint) for k in keyring.pgp] == [fingerprint]
    ecdsa, ed = keyring.pem
    assert isinstance(ecdsa, ec.EllipticCurvePublicKey) and isinstance(ed, ed25519.Ed25519PublicKey)


@pytest.mark.parametrize(("content", "message"), [
    (b"not a key at all", "not an OpenPGP key"),
    (b"\x99\x00\x01garbage", "no OpenPGP key found"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a usable PEM key"),
])
def test_unusable_key_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(HpcbindError, match=message) as err:
        load_keyring([path])
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("key", [ed448.Ed448PrivateKey.generate(), ec.generate_private_key(ec.SECP384R1())],
                         ids=["ed448", "p384"])
def test_key_types_sylabs_cannot_use_are_refused(tmp_path: Path, key) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(HpcbindError, match="unsupported key type"):
        load_keyring([path])


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(HpcbindError, match="cannot read key .*No such file"):
        load_keyring([tmp_path / "absent.asc"])


def test_signing_key_must_be_secret_and_usable(tmp_path: Path) -> None:
    key = load_signing_key([KEYS / "private.asc"]).pgp
    public = tmp_path / "public.asc"
    public.write_text(str(key.pubkey))
    with pytest.raises(HpcbindError, match="is a public key, which cannot sign"):
        load_signing_key([public])
    with warnings.catch_warnings():  # PGPy's cipher table names ciphers cryptography deprecated
        warnings.simplefilter("ignore")
        key.protect("secret", SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)
    locked = tmp_path / "locked.asc"
    locked.write_text(str(key))
    with pytest.raises(HpcbindError, match="protected by a passphrase"):
        load_signing_key([locked])
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(private_key("ed25519-private.pem").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(HpcbindError, match="the private key is encrypted"):
        load_signing_key([encrypted])
    with pytest.raises(HpcbindError, match="more than one signing key"):
        load_signing_key([KEYS / "private.asc", KEYS / "rsa-private.pem"])
    with pytest.raises(HpcbindError, match="no signing key given"):
        load_signing_key([])
