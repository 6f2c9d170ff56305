"""Signing and verifying SIF images, against the signed corpus of tests/data/sif.

Every expectation of MANIFEST section 1a is checked: the PGP, DSSE and legacy images verify
(or report "signature not found") exactly as sylabs/sif's ``Verifier.Verify`` does, with its
error texts; signing the unsigned corpus images with the corpus keys reproduces the signed
ones byte for byte; a PGP signature made here is checked by the real ``gpg``; tampering with
any signed byte is caught with the right reason; and the signer policy allows, denies and
refuses as documented.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbind.commands import sign as sign_command
from hpcbind.commands import verify as verify_command
from hpcbind.errors import HpcbindError
from hpcbind.image import integrity
from hpcbind.image.integrity import (
    Keyring,
    Signer,
    dsse_envelope,
    go_json,
    image_metadata,
    load_keyring,
    load_signing_key,
    sign,
    verify,
)
from hpcbind.image.policy import check_signers
from hpcbind.image.sif import (
    DESCRIPTOR,
    DataType,
    HashType,
    ObjectInput,
    SifImage,
    add_object,
    delete_object,
)

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "sif"
IMAGES = CORPUS / "sylabs-sif" / "images"
KEYS = CORPUS / "sylabs-sif" / "keys"
BUSYBOX = sorted((CORPUS / "singularityce" / "images").glob("busybox_*.sif"))
MANIFEST = (CORPUS / "MANIFEST.md").read_text()

# MANIFEST section 2 / 1a: the PGP key of every sylabs-sif PGP and legacy signature, and the
# time gen_sifs.go signs at (OptSignWithTime 2020-06-30T00:01:56Z).
FINGERPRINT, USER_ID = re.search(r"fp (\w{40}), \"([^\"]+)\"", MANIFEST).groups()
BUSYBOX_SIGNER = re.search(r"signed by key fp (\w{40})", MANIFEST).group(1)
SIGN_TIME = 1593475316
PGP = Signer("pgp", FINGERPRINT, USER_ID)
# Byte offsets inside a 585-byte descriptor (FORMAT.md section 1).
NAME_AT, EXTRA_AT = 73, 201

NOT_FOUND_G1 = "signature not found for object group 1"
NOT_FOUND_G2 = "signature not found for object group 2"


def keyring(*names: str) -> Keyring:
    return load_keyring([KEYS / n for n in names])


def dsse_signer(name: str) -> Signer:
    return Signer("dsse", integrity.dsse_key_id(keyring(f"{name}-public.pem").pem[0]), name)


def outcome(results: list[integrity.VerifyResult]) -> list[tuple]:
    return [(r.task, r.signature, r.verified, r.signers, r.error) for r in results]


def copy(tmp_path: Path, name: str, source: Path = IMAGES) -> Path:
    target = tmp_path / name
    shutil.copyfile(source / name, target)
    return target


# ---------------------------------------------------------------------------------- MANIFEST 1a

ED, RSA = dsse_signer("ed25519"), dsse_signer("rsa")
NONE_ACCEPTED = "dsse: verify envelope failed: Accepted signatures do not match threshold, Found: 0, Expected 1"

# (image, key files, verify options) -> [(task, signature ID, verified IDs, signers, error)]
EXPECTED = {
    ("one-group-signed-pgp.sif", ("private.asc",), ()): [
        ("object group 1", 3, (1, 2), (PGP,), None)],
    ("two-groups-signed-pgp.sif", ("private.asc",), ()): [
        ("object group 1", 4, (1, 2), (PGP,), None), ("object group 2", 5, (3,), (PGP,), None)],
    ("two-groups-signed-pgp.sif", ("private.asc",), (("group", 2),)): [
        ("object group 2", 5, (3,), (PGP,), None)],
    ("two-groups-signed-pgp.sif", ("private.asc",), (("object_id", 2),)): [
        ("object 2", 4, (2,), (PGP,), None)],
    ("one-group-signed-dsse.sif", ("ed25519-public.pem",), ()): [
        ("object group 1", 3, (1, 2), (ED,), None)],
    ("one-group-signed-dsse.sif", ("rsa-public.pem",), ()): [
        ("object group 1", 3, (1, 2), (RSA,), None)],
    ("two-groups-signed-dsse.sif", ("ed25519-public.pem",), ()): [
        ("object group 1", 4, (1, 2), (ED,), None), ("object group 2", 5, (3,), (ED,), None)],
    ("two-groups-signed-dsse.sif", ("rsa-private.pem", "ed25519-public.pem"), ()): [
        ("object group 1", 4, (1, 2), (ED, RSA), None), ("object group 2", 5, (3,), (ED, RSA), None)],
    ("one-group-signed-dsse.sif", ("ecdsa-public.pem",), ()): [
        ("object group 1", 3, (), (), f"signature object 3 not valid: {NONE_ACCEPTED}")],
    ("two-groups-signed-dsse.sif", ("ecdsa-public.pem",), ()): [
        ("object group 1", 4, (), (), f"signature object 4 not valid: {NONE_ACCEPTED}"),
        ("object group 2", 5, (), (), f"signature object 5 not valid: {NONE_ACCEPTED}")],
    # A key of the other kind is no key at all for a signature.
    ("two-groups-signed-dsse.sif", ("private.asc",), (("group", 1),)): [
        ("object group 1", 4, (), (), "key material not provided for DSSE envelope signature")],
    ("one-group-signed-pgp.sif", ("rsa-public.pem",), ()): [
        ("object group 1", 3, (), (), "key material not provided for PGP clear-sign signature")],
    # Unsigned images.
    ("one-group.sif", ("private.asc",), ()): [("object group 1", None, (), (), NOT_FOUND_G1)],
    ("two-groups.sif", ("private.asc",), ()): [
        ("object group 1", None, (), (), NOT_FOUND_G1), ("object group 2", None, (), (), NOT_FOUND_G2)],
    ("one-object-sbom.sif", ("private.asc",), ()): [("object group 1", None, (), (), NOT_FOUND_G1)],
    # Legacy signatures: object 2 only (legacy), group 1 (legacy-group), objects 1 and 2
    # (legacy-all); non-legacy verification does not see them.
    ("one-group-signed-legacy.sif", ("private.asc",), ()): [("object group 1", None, (), (), NOT_FOUND_G1)],
    ("one-group-signed-legacy.sif", ("private.asc",), (("legacy", True),)): [
        ("object group 1", None, (), (), NOT_FOUND_G1)],
    ("one-group-signed-legacy.sif", ("private.asc",), (("legacy", True), ("object_id", 2))): [
        ("object 2", 3, (2,), (PGP,), None)],
    ("one-group-signed-legacy.sif", ("private.asc",), (("legacy_all", True),)): [
        ("object 1", None, (), (), "signature not found for object 1"), ("object 2", 3, (2,), (PGP,), None)],
    ("one-group-signed-legacy-group.sif", ("private.asc",), ()): [
        ("object group 1", None, (), (), NOT_FOUND_G1)],
    ("one-group-signed-legacy-group.sif", ("private.asc",), (("legacy", True),)): [
        ("object group 1", 3, (1, 2), (PGP,), None)],
    ("one-group-signed-legacy-all.sif", ("private.asc",), (("legacy_all", True),)): [
        ("object 1", 3, (1,), (PGP,), None), ("object 2", 4, (2,), (PGP,), None)],
    ("two-groups-signed-legacy.sif", ("private.asc",), ()): [
        ("object group 1", None, (), (), NOT_FOUND_G1), ("object group 2", None, (), (), NOT_FOUND_G2)],
    ("two-groups-signed-legacy.sif", ("private.asc",), (("legacy_all", True),)): [
        ("object 1", None, (), (), "signature not found for object 1"), ("object 2", 4, (2,), (PGP,), None),
        ("object 3", None, (), (), "signature not found for object 3")],
    ("two-groups-signed-legacy-group.sif", ("private.asc",), (("legacy", True),)): [
        ("object group 1", 4, (1, 2), (PGP,), None), ("object group 2", None, (), (), NOT_FOUND_G2)],
    ("two-groups-signed-legacy-group.sif", ("private.asc",), (("legacy", True), ("group", 2))): [
        ("object group 2", None, (), (), NOT_FOUND_G2)],
    ("two-groups-signed-legacy-all.sif", ("private.asc",), (("legacy_all", True),)): [
        ("object 1", 4, (1,), (PGP,), None), ("object 2", 5, (2,), (PGP,), None),
        ("object 3", None, (), (), "signature not found for object 3")],
    ("two-groups-signed-legacy-all.sif", ("private.asc",), (("legacy", True),)): [
        ("object group 1", None, (), (), NOT_FOUND_G1), ("object group 2", None, (), (), NOT_FOUND_G2)],
}


@pytest.mark.parametrize(("image", "keys", "options"), EXPECTED, ids=lambda v: str(v))
def test_manifest_verification(image: str, keys: tuple[str, ...], options: tuple) -> None:
    results = verify(IMAGES / image, keyring(*keys), **dict(options))
    assert outcome(results) == EXPECTED[image, keys, options]


@pytest.mark.parametrize("path", BUSYBOX, ids=lambda p: p.name)
def test_busybox_signer_is_unknown(path: Path) -> None:
    assert outcome(verify(path, keyring("private.asc"))) == [
        ("object group 1", 5, (), (),
         "signature object 5 not valid: openpgp: signature made by unknown entity")]


@pytest.mark.parametrize(("image", "options", "message"), [
    ("two-groups-signed-pgp.sif", {"group": 3}, "no object group 3"),
    ("two-groups-signed-pgp.sif", {"object_id": 9}, "no object with ID 9"),
    ("two-groups-signed-pgp.sif", {"group": 0}, "invalid group ID 0"),
    ("empty.sif", {}, "the image has no object groups"),
])
def test_what_cannot_be_asked(image: str, options: dict, message: str) -> None:
    with pytest.raises(HpcbindError, match=message):
        verify(IMAGES / image, keyring("private.asc"), **options)


# ---------------------------------------------------------------------------------- signing


@pytest.mark.parametrize("base", ["one-group", "two-groups"])
@pytest.mark.parametrize(("kind", "keys"), [
    ("dsse", ["ed25519-private.pem", "rsa-private.pem"]),
    ("pgp", ["private.asc"]),
])
def test_signing_reproduces_the_corpus(tmp_path: Path, base: str, kind: str, keys: list[str]) -> None:
    """gen_sifs.go signs with OptSignWithTime(2020-06-30T00:01:56Z) and OptSignDeterministic;
    Ed25519 and RSA PKCS#1 v1.5 are deterministic, so the same keys give the same bytes."""
    image = copy(tmp_path, f"{base}.sif")
    added = sign(image, load_signing_key([KEYS / k for k in keys]), deterministic_time=SIGN_TIME)
    assert image.read_bytes() == (IMAGES / f"{base}-signed-{kind}.sif").read_bytes()
    assert added == ([(1, 3)] if base == "one-group" else [(1, 4), (2, 5)])


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[Path]:
    """A GnuPG home of its own; the agent gpg starts for it is stopped afterwards."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def gpg(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", *args], input=input,
                          capture_output=True)


def gpg_verify(home: Path, path: Path) -> tuple[int, str]:
    result = gpg(home, "--status-fd", "1", "--verify", str(path))
    return result.returncode, result.stdout.decode()


def test_keyring_file_with_several_keys(gnupg_home: Path, tmp_path: Path) -> None:
    """An armored or binary keyring holding several keys, as gpg exports them."""
    assert gpg(gnupg_home, "--import", str(KEYS / "private.asc")).returncode == 0
    assert gpg(gnupg_home, "--passphrase", "", "--quick-gen-key", "Second <second@example.org>",
               "ed25519", "sign", "never").returncode == 0
    ring = tmp_path / "ring.asc"
    ring.write_bytes(gpg(gnupg_home, "--armor", "--export").stdout)
    listing = gpg(gnupg_home, "--with-colons", "--list-keys").stdout.decode()
    primaries = set(re.findall(r"^pub:(?:.*\n)+?fpr:+(\w{40}):", listing, re.M))
    assert len(primaries) == 2 and FINGERPRINT in primaries
    assert {str(k.fingerprint) for k in load_keyring([ring]).pgp} == primaries
    binary = tmp_path / "ring.gpg"
    binary.write_bytes(gpg(gnupg_home, "--export").stdout)
    assert {str(k.fingerprint) for k in load_keyring([binary]).pgp} == primaries


def test_pgp_signature_verifies_here_and_with_gpg(tmp_path: Path, gnupg_home: Path) -> None:
    image = copy(tmp_path, "two-groups.sif")
    key = load_signing_key([KEYS / "private.asc"])
    assert sign(image, key) == [(1, 4), (2, 5)]
    assert outcome(verify(image, keyring("private.asc"))) == [
        ("object group 1", 4, (1, 2), (PGP,), None), ("object group 2", 5, (3,), (PGP,), None)]
    public = tmp_path / "public.asc"
    public.write_text(str(key.pgp.pubkey))
    assert gpg(gnupg_home, "--import", str(public)).returncode == 0
    with SifImage.open(image) as sif:
        messages = [sif.read(sif.get(id)) for id in (4, 5)]
    for n, message in enumerate(messages):
        signed = tmp_path / f"signature{n}.asc"
        signed.write_bytes(message)
        code, status = gpg_verify(gnupg_home, signed)
        assert code == 0 and f"[GNUPG:] VALIDSIG {FINGERPRINT}" in status
        signed.write_bytes(message.replace(b'"relativeId":0', b'"relativeId":1'))
        code, status = gpg_verify(gnupg_home, signed)
        assert code != 0 and "[GNUPG:] BADSIG" in status


@pytest.mark.parametrize(("options", "error"), [
    ((), None),
    (("--faked-system-time", "20200630T000156", "--default-sig-expire", "1d"),
     "signature object 3 not valid: openpgp: signature expired"),
    (("--digest-algo", "SHA1"),
     "signature object 3 not valid: openpgp: invalid signature: hash algorithm SHA1 not allowed"),
])
def test_signatures_made_by_gpg(tmp_path: Path, gnupg_home: Path, options: tuple[str, ...],
                                error: str | None) -> None:
    """gpg's own clear-signed metadata verifies as go-crypto's does, and go-crypto's limits
    (no expired signature, SHA-224 to SHA-512 only) hold for it too."""
    image = copy(tmp_path, "one-group.sif")
    with SifImage.open(image) as sif:
        payload = go_json(image_metadata(sif, 1, sif.descriptors))
    assert gpg(gnupg_home, "--import", str(KEYS / "private.asc")).returncode == 0
    signed = gpg(gnupg_home, *options, "--clearsign", input=payload).stdout
    add_object(image, ObjectInput(DataType.SIGNATURE, data=signed, group=0, linked_group=1,
                                  signature=(HashType.SHA256, bytes.fromhex(FINGERPRINT))))
    expected = (3, (1, 2), None) if error is None else (3, (), error)
    assert [(r.signature, r.verified, r.error) for r in verify(image, keyring("private.asc"))] == [expected]


def test_ecdsa_and_single_group_signing(tmp_path: Path) -> None:
    image = copy(tmp_path, "two-groups.sif")
    assert sign(image, load_signing_key([KEYS / "ecdsa-private.pem"]), group=2) == [(2, 4)]
    ecdsa = dsse_signer("ecdsa")
    assert outcome(verify(image, keyring("ecdsa-public.pem"))) == [
        ("object group 1", None, (), (), NOT_FOUND_G1), ("object group 2", 4, (3,), (ecdsa,), None)]
    assert outcome(verify(image, keyring("ed25519-public.pem"), group=2)) == [
        ("object group 2", 4, (), (), f"signature object 4 not valid: {NONE_ACCEPTED}")]
    with SifImage.open(image) as sif:
        signature = sif.get(4)
    assert (signature.group_id, signature.linked_group, signature.signature_fingerprint) == (0, 2, None)
    with pytest.raises(HpcbindError, match="no object group 7"):
        sign(image, load_signing_key([KEYS / "ecdsa-private.pem"]), group=7)


def test_dsse_hash_is_the_descriptors(tmp_path: Path) -> None:
    """RSA and ECDSA verifiers hash with the descriptor's hash type, as sylabs/sif's do."""
    image = copy(tmp_path, "one-group.sif")
    with SifImage.open(image) as sif:
        payload = go_json(image_metadata(sif, 1, sif.descriptors))
    envelope = dsse_envelope(payload, load_signing_key([KEYS / "rsa-private.pem"]).pem, "sha384")
    for hash_type in (HashType.SHA384, HashType.SHA256):
        add_object(image, ObjectInput(DataType.SIGNATURE, data=envelope, group=0, linked_group=1,
                                      signature=(hash_type, b"")))
    assert [(r.signature, r.verified, r.error) for r in verify(image, keyring("rsa-public.pem"))] == [
        (3, (1, 2), None), (4, (), f"signature object 4 not valid: {NONE_ACCEPTED}")]


# ---------------------------------------------------------------------------------- tampering


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def slot_offset(path: Path, id: int) -> int:
    with SifImage.open(path) as image:
        slot = image.slots[image.descriptors.index(image.get(id))]
        return image.header.descriptors_offset + slot * DESCRIPTOR.size


def object_offset(path: Path, id: int) -> int:
    with SifImage.open(path) as image:
        return image.get(id).offset


@pytest.mark.parametrize("signed", ["two-groups-signed-pgp.sif", "two-groups-signed-dsse.sif"])
@pytest.mark.parametrize(("tamper", "expected"), [
    (lambda p: flip(p, object_offset(p, 2)),
     [("object group 1", 4, (1,), "data object integrity compromised: 2"),
      ("object group 2", 5, (3,), None)]),
    (lambda p: flip(p, slot_offset(p, 1) + NAME_AT),
     [("object group 1", 4, (), "data object descriptor integrity compromised: 1"),
      ("object group 2", 5, (3,), None)]),
    (lambda p: flip(p, 0),  # the launch script, first of the header's signed bytes
     [("object group 1", 4, (), "header integrity compromised"),
      ("object group 2", 5, (), "header integrity compromised")]),
    (lambda p: flip(p, object_offset(p, 3) + 1024),
     [("object group 1", 4, (1, 2), None),
      ("object group 2", 5, (), "data object integrity compromised: 3")]),
], ids=["object", "descriptor-name", "launch-script", "group-2-object"])
def test_tampering_is_caught(tmp_path: Path, signed: str, tamper, expected: list[tuple]) -> None:
    image = copy(tmp_path, signed)
    tamper(image)
    keys = keyring("private.asc", "rsa-public.pem")
    assert [(r.task, r.signature, r.verified, r.error) for r in verify(image, keys)] == expected


def test_tampered_signatures_do_not_verify(tmp_path: Path) -> None:
    pgp = copy(tmp_path, "two-groups-signed-pgp.sif")
    with SifImage.open(pgp) as image:
        text = image.read(image.get(5))
    flip(pgp, object_offset(pgp, 5) + text.index(b'"relativeId":0') + len(b'"relativeId":'))
    dsse = copy(tmp_path, "two-groups-signed-dsse.sif")
    with SifImage.open(dsse) as image:
        envelope = image.read(image.get(5))
    flip(dsse, object_offset(dsse, 5) + envelope.index(b'"payload":"') + 20)
    keys = keyring("private.asc", "rsa-public.pem")
    assert [(r.task, r.error) for r in verify(pgp, keys)] == [
        ("object group 1", None),
        ("object group 2",
         "signature object 5 not valid: openpgp: invalid signature: RSA verification failure")]
    assert [(r.task, r.error) for r in verify(dsse, keys)] == [
        ("object group 1", None), ("object group 2", f"signature object 5 not valid: {NONE_ACCEPTED}")]


def test_descriptor_must_name_the_signer(tmp_path: Path) -> None:
    image = copy(tmp_path, "one-group-signed-pgp.sif")
    flip(image, slot_offset(image, 3) + EXTRA_AT + 4)  # the entity, after the hash type
    assert [(r.signature, r.signers, r.error) for r in verify(image, keyring("private.asc"))] == [
        (3, (PGP,), "fingerprint in descriptor does not correspond to signing entity")]


def test_group_signature_covers_exactly_the_group(tmp_path: Path) -> None:
    image = copy(tmp_path, "two-groups-signed-pgp.sif")
    added = add_object(image, ObjectInput(DataType.GENERIC, data=b"late", group=1))
    keys = keyring("private.asc")
    assert [(r.task, r.error) for r in verify(image, keys, group=1)] == [
        ("object group 1", f"object {added}: object not signed")]
    assert [(r.task, r.verified, r.error) for r in verify(image, keys, object_id=1)] == [
        ("object 1", (1,), None)]
    delete_object(image, added)
    delete_object(image, 1)  # the group's lowest ID moves to 2: signed IDs become 2 and 3
    assert [(r.task, r.error) for r in verify(image, keys, group=1)] == [
        ("object group 1", "object 3: signed object not found")]


def test_every_data_object_must_be_grouped(tmp_path: Path) -> None:
    image = copy(tmp_path, "one-group-signed-pgp.sif")
    added = add_object(image, ObjectInput(DataType.GENERIC, data=b"loose", group=0))
    assert outcome(verify(image, keyring("private.asc"))) == [
        ("image", None, (), (), f"non-signature object {added} not associated with object group")]


def test_envelope_of_another_payload_type_is_not_a_signature(tmp_path: Path) -> None:
    image = copy(tmp_path, "one-group.sif")
    envelope = json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                           "signatures": [{"keyid": "", "sig": "AAAA"}]}).encode()
    add_object(image, ObjectInput(DataType.SIGNATURE, data=envelope, group=0, linked_group=1,
                                  signature=(1, b"")))
    assert [(r.signature, r.error) for r in verify(image, keyring("rsa-public.pem"))] == [
        (3, "signature format not recognized")]


# ---------------------------------------------------------------------------------- policy


def test_policy_allows_listed_signers() -> None:
    pgp_keys = [str(KEYS / "private.asc")]
    check_signers(str(IMAGES / "two-groups-signed-pgp.sif"), [FINGERPRINT.lower()], [], pgp_keys)
    check_signers(str(IMAGES / "two-groups-signed-dsse.sif"), [RSA.id], [], [str(KEYS / "rsa-public.pem")])
    spaced = " ".join(FINGERPRINT[i : i + 4] for i in range(0, 40, 4))  # as gpg prints it
    check_signers(str(IMAGES / "one-group-signed-pgp.sif"), [spaced], [ED.id], pgp_keys)


@pytest.mark.parametrize(("image", "denied"), [
    ("two-groups-signed-pgp.sif", FINGERPRINT),
    ("two-groups-signed-dsse.sif", ED.id),
    ("two-groups-signed-legacy.sif", FINGERPRINT),
])
def test_policy_denies_by_claim_without_keys(image: str, denied: str) -> None:
    with pytest.raises(HpcbindError, match=f"is signed by {re.escape(denied)}, a signer the site denies"):
        check_signers(str(IMAGES / image), [], [denied], [])


@pytest.mark.parametrize(("image", "allowed", "keys", "message"), [
    ("two-groups.sif", [FINGERPRINT], ["private.asc"],
     f"is not signed \\({NOT_FOUND_G1}\\)"),
    ("two-groups-signed-legacy.sif", [FINGERPRINT], ["private.asc"],
     f"is not signed \\({NOT_FOUND_G1}\\)"),
    ("two-groups-signed-pgp.sif", [BUSYBOX_SIGNER], ["private.asc"],
     f"object group 1 is signed by {FINGERPRINT}, which is not in trust.allowed_signers"),
    ("two-groups-signed-dsse.sif", [ED.id], ["rsa-public.pem"],
     f"object group 1 is signed by {re.escape(RSA.id)}, which is not in"),
    ("two-groups-signed-pgp.sif", [FINGERPRINT], [],
     "signature does not verify: key material not provided for PGP clear-sign signature"),
])
def test_policy_refuses(image: str, allowed: list[str], keys: list[str], message: str) -> None:
    with pytest.raises(HpcbindError, match=message) as err:
        check_signers(str(IMAGES / image), allowed, [], [str(KEYS / k) for k in keys])
    assert "\n" not in str(err.value)


def test_policy_names_an_unknown_signer() -> None:
    message = f"signature made by unknown entity \\(it claims to be by {BUSYBOX_SIGNER}\\)"
    with pytest.raises(HpcbindError, match=message):
        check_signers(str(BUSYBOX[0]), [BUSYBOX_SIGNER], [], [str(KEYS / "private.asc")])


def test_policy_refuses_a_tampered_image(tmp_path: Path) -> None:
    image = copy(tmp_path, "one-group-signed-pgp.sif")
    flip(image, object_offset(image, 2))
    with pytest.raises(HpcbindError, match="does not verify: data object integrity compromised: 2"):
        check_signers(str(image), [FINGERPRINT], [], [str(KEYS / "private.asc")])


def test_policy_and_unsignable_images(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    with pytest.raises(HpcbindError, match="is not a SIF image"):
        check_signers(str(tmp_path), [FINGERPRINT], [], [])
    check_signers(str(tmp_path), [], [FINGERPRINT], [])  # deny-only: nothing claims a signer
    with pytest.raises(HpcbindError, match="'12AB' is neither a PGP fingerprint nor a DSSE key ID"):
        check_signers(str(IMAGES / "one-group.sif"), ["12AB"], [], [])


def test_no_policy_costs_nothing() -> None:
    """No lists: the image is not even opened, and neither PGPy, cryptography nor the SIF
    reader is imported."""
    check_signers("/nonexistent/image.sif", [], [], ["/nonexistent/keys.asc"])
    code = ("import sys; from hpcbind.image.policy import check_signers; "
            "check_signers('/nonexistent.sif', [], [], []); "
            "print([m for m in ('pgpy', 'cryptography', 'hpcbind.image.integrity', 'hpcbind.image.sif') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- commands


def command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return module.run(parser.parse_args(argv))


def test_verify_command(capsys: pytest.CaptureFixture[str]) -> None:
    pgp_key = ["--key", str(KEYS / "private.asc")]
    assert command(verify_command, [*pgp_key, str(IMAGES / "two-groups-signed-pgp.sif")]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == [
        f"object group {g}: verified objects {objects} (signature object {s}); "
        f'signed by {FINGERPRINT} "{USER_ID}"'
        for g, objects, s in ((1, "1, 2", 4), (2, "3", 5))]
    assert command(verify_command, [*pgp_key, "--legacy-all",
                                    str(IMAGES / "two-groups-signed-legacy-group.sif")]) == 255
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines() == [
        f"object {id}: FAILED: signature not found for object {id}" for id in (1, 2, 3)]
    with pytest.raises(HpcbindError, match="no key to verify with"):
        command(verify_command, [str(IMAGES / "one-group-signed-pgp.sif")])


def test_sign_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = copy(tmp_path, "one-group.sif")
    assert command(sign_command, ["--key", str(KEYS / "ed25519-private.pem"), "--key",
                                  str(KEYS / "rsa-private.pem"), str(image)]) == 0
    assert capsys.readouterr().out == (f"object group 1: signed with ed25519 key {ED.id}, rsa key {RSA.id} "
                                       "(signature object 3)\n")
    assert command(verify_command, ["--key", str(KEYS / "rsa-public.pem"), str(image)]) == 0
    assert capsys.readouterr().out.startswith("object group 1: verified objects 1, 2 (signature object 3)")
