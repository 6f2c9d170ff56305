"""SIF signatures: the signed image metadata, signing and verification, as sylabs/sif's
``pkg/integrity`` does them (``shared/conformance/sif/FORMAT.md`` section 4).

A signature object signs one object group. Its data is the group's *image metadata*, the
digests of the header, of each object's descriptor and of each object's data, as the exact
bytes of Go's ``json.Marshal``, wrapped either in a PGP clear-signed message or in a DSSE
envelope (Ed25519, RSA PKCS#1 v1.5 or ECDSA P-256 keys in PEM files). Singularity 3.5 and
older wrote *legacy* signatures instead: a clear-signed ``SIFHASH:`` digest of object data
only, which protects no metadata; they are checked only when asked for.

``verify`` walks the tasks ``Verifier.Verify`` walks, in its order, with its error texts;
where Go stops at the first failure, ``verify`` reports it and goes on, so that one run names
every problem (the verdict, all passed or not, is Go's). ``sign`` adds one signature object
per group, in ascending group order, byte for byte as ``integrity.Signer`` does: the corpus
images signed by gen_sifs.go come out identical when signed again with the corpus keys.

The cryptography is PGPy's (OpenPGP) and cryptography's (DSSE); this module only frames it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import pgpy
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pgpy.constants import HashAlgorithm, PubKeyAlgorithm, SignatureType
from pgpy.errors import PGPError
from pgpy.packet.packets import SignatureV4
from pgpy.types import Armorable

from hpcbind.errors import HpcbindError
from hpcbind.image.gojson import go_json
from hpcbind.image.sif import (
    GO_ZERO_TIME,
    DataType,
    Descriptor,
    HashType,
    ObjectInput,
    SifImage,
    add_object,
    descriptor_integrity_bytes,
    header_integrity_bytes,
)

PathArg = str | os.PathLike[str]
PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

METADATA_VERSION = 1
METADATA_MEDIA_TYPE = "application/vnd.sylabs.sif-metadata+json"  # the DSSE payloadType
DEFAULT_DIGEST = "sha256"
# sylabs/sif's digest names, which are also hashlib's names for the same functions.
DIGEST_ALGORITHMS = ("sha224", "sha256", "sha384", "sha512", "sha512_224", "sha512_256")
# The descriptor's hash type: the hash of RSA and ECDSA DSSE signatures and of legacy digests
# (PGP signatures name their own). The format also names BLAKE2s/BLAKE2b, which neither
# sylabs/sif's digests nor sigstore's RSA and ECDSA verifiers accept.
_DESCRIPTOR_HASHES = {HashType.SHA256: "sha256", HashType.SHA384: "sha384", HashType.SHA512: "sha512"}
_CRYPTO_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# go-crypto's clear-sign check accepts these (RFC 4880's, less those NIST retired).
_PGP_HASHES = frozenset({HashAlgorithm.SHA224, HashAlgorithm.SHA256, HashAlgorithm.SHA384,
                         HashAlgorithm.SHA512})
# go-crypto's name for each algorithm in "openpgp: invalid signature: RSA verification failure".
_PGP_ALGORITHM_NAMES = {
    PubKeyAlgorithm.RSAEncryptOrSign: "RSA",
    PubKeyAlgorithm.RSASign: "RSA",
    PubKeyAlgorithm.DSA: "DSA",
    PubKeyAlgorithm.ECDSA: "ECDSA",
    PubKeyAlgorithm.EdDSA: "EdDSA",
}
_LEGACY_PREFIX = b"SIFHASH:\n"
_SIGNED_MESSAGE = "-----BEGIN PGP SIGNED MESSAGE-----"
_SIGNATURE_BEGIN = "-----BEGIN PGP SIGNATURE-----"
_SIGNATURE_END = "-----END PGP SIGNATURE-----"
_ARMOR_WIDTH = 64  # go-crypto's armor line length


class IntegrityError(Exception):
    """Why one signature, or one task, did not verify: sylabs/sif's error text."""


# ---------------------------------------------------------------------------------- digests


def digest(algorithm: str, chunks: Iterable[bytes]) -> str:
    """``alg:hex`` of the bytes in ``chunks``, as the image metadata records a digest."""
    hasher = hashlib.new(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


def parse_digest(value: object) -> tuple[str, bytes]:
    """(algorithm, digest bytes) of an ``alg:hex`` metadata value; ``IntegrityError`` as
    sylabs/sif's ``digest.UnmarshalJSON`` rejects it."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 2:
        raise IntegrityError("digest malformed")
    algorithm, hexdigits = parts
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError:
        raise IntegrityError("digest malformed") from None
    return algorithm, _checked_digest(algorithm, raw)


def _checked_digest(algorithm: str, raw: bytes) -> bytes:
    if algorithm not in DIGEST_ALGORITHMS:
        raise IntegrityError("hash algorithm unsupported")
    if len(raw) != hashlib.new(algorithm).digest_size:
        raise IntegrityError("digest malformed")
    return raw


def _matches(signed: tuple[str, bytes], chunks: Iterable[bytes]) -> bool:
    algorithm, raw = signed
    return digest(algorithm, chunks) == f"{algorithm}:{raw.hex()}"


# ---------------------------------------------------------------------------------- metadata


def header_metadata(integrity_bytes: bytes, algorithm: str = DEFAULT_DIGEST) -> dict:
    """The header part of the metadata, over the header's 61 signed bytes."""
    return {"digest": digest(algorithm, [integrity_bytes])}


def object_metadata(
    relative_id: int, descriptor_bytes: bytes, data: Iterable[bytes], algorithm: str = DEFAULT_DIGEST
) -> dict:
    """One object's entry: its ID relative to its group's lowest, and the digests of its
    descriptor's 557 signed bytes and of its data."""
    return {
        "relativeId": relative_id,
        "descriptorDigest": digest(algorithm, [descriptor_bytes]),
        "objectDigest": digest(algorithm, data),
    }


def image_metadata(
    image: SifImage, min_id: int, descriptors: Sequence[Descriptor], algorithm: str = DEFAULT_DIGEST
) -> dict:
    """The metadata a signature over ``descriptors`` signs; ``min_id`` is the lowest object ID
    in their group (sylabs/sif's ``getImageMetadata``)."""
    return {
        "version": METADATA_VERSION,
        "header": header_metadata(header_integrity_bytes(image.header), algorithm),
        "objects": [
            object_metadata(d.id - min_id, descriptor_integrity_bytes(d, d.id - min_id),
                            image.chunks(d), algorithm)
            for d in descriptors
        ],
    }


@dataclass(frozen=True)
class SignedMetadata:
    """Signed image metadata as a verifier reads it: digests parsed, object IDs absolute."""

    header: tuple[str, bytes]
    objects: dict[int, tuple[tuple[str, bytes], tuple[str, bytes]]]  # ID -> (descriptor, data)


def parse_metadata(payload: bytes, min_id: int) -> SignedMetadata:
    """As Go's ``json.Unmarshal`` into ``imageMetadata``: unknown keys are ignored, and so is
    the version, which no verifier checks."""
    try:
        document = json.loads(payload)
        objects = {
            min_id + entry["relativeId"]: (parse_digest(entry["descriptorDigest"]),
                                           parse_digest(entry["objectDigest"]))
            for entry in document["objects"]
        }
        return SignedMetadata(parse_digest(document["header"]["digest"]), objects)
    except (ValueError, KeyError, TypeError) as err:
        raise IntegrityError(f"image metadata malformed: {err}") from None


# ---------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Keyring:
    """Key material for verification: OpenPGP primary keys (public, or secret ones, whose
    public half is used) and the public keys of PEM files, for DSSE."""

    pgp: tuple[pgpy.PGPKey, ...] = ()
    pem: tuple[PublicKey, ...] = ()


@dataclass(frozen=True)
class Signer:
    """Who made a signature that verified. PGP: ``id`` is the primary key's fingerprint (40
    hex digits), ``name`` its user ID; DSSE: ``id`` is the key ID ("SHA256:..."), ``name``
    the key type (ed25519, rsa, ecdsa)."""

    kind: str  # "pgp" or "dsse"
    id: str
    name: str

    def __str__(self) -> str:
        return f'{self.id} "{self.name}"' if self.kind == "pgp" else f"{self.id} ({self.name})"


def load_keyring(paths: Sequence[PathArg]) -> Keyring:
    """The keys in ``paths``: armored or binary OpenPGP keyrings (several keys each), PEM
    public keys (PKIX) or private keys (PKCS#8, PKCS#1, SEC1)."""
    pgp: dict[str, pgpy.PGPKey] = {}
    pem: list[PublicKey] = []
    for path in paths:
        data = _read_key(path)
        if _is_pem(data):
            pem.append(_pem_public_key(path, data))
        else:
            for key in _pgp_keys(path, data):
                pgp.setdefault(str(key.fingerprint), key)
    return Keyring(tuple(pgp.values()), tuple(pem))


def _read_key(path: PathArg) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise HpcbindError(f"cannot read key {os.fspath(path)}: {err.strerror}",
                           "check the path given with --key or in trust.keyrings") from None


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data and b"-----BEGIN PGP " not in data


def _bad_key(path: PathArg, problem: str) -> HpcbindError:
    return HpcbindError(
        f"{os.fspath(path)}: {problem}",
        "give an OpenPGP key (armored or binary) or a PEM Ed25519, RSA or ECDSA P-256 key",
    )


def _pem_public_key(path: PathArg, data: bytes) -> PublicKey:
    try:
        if b"PRIVATE KEY-----" in data:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise _bad_key(path, f"not a usable PEM key ({err})") from None
    return _dsse_key(path, key)


def _dsse_key(path: PathArg, key: object) -> PublicKey:
    """The key types sigstore's signature package, which sylabs/sif uses, accepts."""
    if isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise _bad_key(path, f"unsupported key type {type(key).__name__}")


def _pgp_keys(path: PathArg, data: bytes) -> list[pgpy.PGPKey]:
    try:
        with _quiet():
            first, loaded = pgpy.PGPKey.from_blob(data)
    except (ValueError, PGPError, NotImplementedError) as err:
        raise _bad_key(path, f"not an OpenPGP key ({err})") from None
    if first.fingerprint is None or not first.is_primary:  # PGPy's result for bytes it cannot use
        raise _bad_key(path, "no OpenPGP key found")
    return [first, *(k for k in loaded.values() if k.is_primary and k.fingerprint != first.fingerprint)]


@contextmanager
def _quiet() -> Iterator[None]:
    """PGPy warns on every call about checks it has not implemented; they are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fingerprint(key: pgpy.PGPKey) -> bytes:
    return bytes.fromhex(str(key.fingerprint))


def _user_id(key: pgpy.PGPKey) -> str:
    uids = [u for u in key.userids if u.is_uid]
    primary = next((u for u in uids if u.is_primary), uids[0] if uids else None)
    return primary.userid if primary is not None else ""


def dsse_key_id(key: PublicKey) -> str:
    """go-securesystemslib's ``SHA256KeyID``: unpadded base64 of SHA-256 over the key's SSH
    wire format."""
    ssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(ssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def _key_type(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    return "rsa" if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey) else "ecdsa"


# ---------------------------------------------------------------------------------- PGP


@dataclass(frozen=True)
class ClearSigned:
    """A PGP clear-signed message: the text that was signed, without its final newline, and
    the first signature (the only one go-crypto checks)."""

    plaintext: bytes
    signature: pgpy.PGPSignature


def parse_clearsigned(data: bytes) -> ClearSigned | None:
    """The clear-signed message in ``data``, or None if there is none (go-crypto's
    ``clearsign.Decode``)."""
    try:
        text = data.decode("utf-8")
        with _quiet():
            message = pgpy.PGPMessage.from_blob(_with_armor_checksum(text))
    except (ValueError, PGPError, NotImplementedError):
        return None
    signatures = list(message.signatures)
    if message.type != "cleartext" or not signatures:
        return None
    return ClearSigned(message.message.encode("utf-8"), signatures[0])


def _with_armor_checksum(text: str) -> str:
    """PGPy's armor parser insists on the CRC24 line that RFC 9580 made optional and that
    go-crypto (2024 on) leaves out, so the corpus's newer signatures cannot be read as they
    are. This adds the line, computed with PGPy's own crc24, to a signature block without one;
    it is a transport checksum, outside what the signature covers."""
    head, begin, rest = text.partition(_SIGNATURE_BEGIN)
    armor, end, tail = rest.partition(_SIGNATURE_END)
    if not begin or not end:
        return text
    lines = [line.strip() for line in armor.splitlines()]
    if any(line.startswith("=") for line in lines):
        return text
    body = "".join(line for line in lines if line and ":" not in line)  # not armor headers
    try:
        crc = Armorable.crc24(bytearray(base64.b64decode(body)))
    except ValueError:
        return text
    checksum = base64.b64encode(crc.to_bytes(3, "big")).decode()
    return f"{head}{begin}{armor.rstrip()}\n={checksum}\n{end}{tail}"


def _verify_clearsigned(message: ClearSigned, keyring: Keyring) -> pgpy.PGPKey:
    """The primary key that made ``message``'s signature; ``IntegrityError`` in go-crypto's
    words (``CheckDetachedSignatureAndHash``)."""
    signature = message.signature
    if signature.hash_algorithm not in _PGP_HASHES:
        raise IntegrityError(
            f"openpgp: invalid signature: hash algorithm {signature.hash_algorithm.name} not allowed"
        )
    key = next((k for k in keyring.pgp if signature.signer in (k.fingerprint.keyid, *k.subkeys)), None)
    if key is None:
        raise IntegrityError("openpgp: signature made by unknown entity")
    try:
        with _quiet():
            good = bool(key.verify(message.plaintext.decode("utf-8"), signature))
    except (PGPError, NotImplementedError, ValueError):  # e.g. a key algorithm PGPy lacks
        good = False
    if not good:
        name = _PGP_ALGORITHM_NAMES.get(signature.key_algorithm, signature.key_algorithm.name)
        raise IntegrityError(f"openpgp: invalid signature: {name} verification failure")
    if signature.is_expired:
        raise IntegrityError("openpgp: signature expired")
    return key


def _clearsign(text: bytes, key: pgpy.PGPKey, when: datetime) -> bytes:
    """go-crypto's ``clearsign.Encode`` of a one-line message: a v4 canonical-text signature
    over SHA-256 whose hashed subpackets are a critical creation time, the issuer key ID and
    the issuer fingerprint, in that order, with no salt notation (as gen_sifs.go signs).

    PGPy's ``sign`` puts the key ID in the unhashed area and does not mark the time critical,
    so the packet is assembled here from PGPy's packet classes and signed by PGPy's
    ``_sign``, the step ``sign`` itself ends with."""
    packet = SignatureV4()
    packet.header.tag = 2
    packet.header.version = 4
    packet.sigtype = SignatureType.CanonicalDocument
    packet.pubalg = key.key_algorithm
    packet.halg = HashAlgorithm.SHA256
    packet.subpackets.addnew("CreationTime", hashed=True, created=when)
    packet.subpackets["h_CreationTime"][0].header.critical = True
    packet.subpackets.addnew("Issuer", hashed=True, _issuer=key.fingerprint.keyid)
    packet.subpackets.addnew("IssuerFingerprint", hashed=True, _version=4, _issuer_fpr=key.fingerprint)
    signature = pgpy.PGPSignature()
    signature._signature = packet
    with _quiet():
        signature = key._sign(text.decode("utf-8"), signature, include_issuer_fingerprint=False)
    armored = base64.b64encode(bytes(signature)).decode()
    lines = [armored[i : i + _ARMOR_WIDTH] for i in range(0, len(armored), _ARMOR_WIDTH)]
    return "\n".join(
        [_SIGNED_MESSAGE, "Hash: SHA256", "", text.decode("utf-8"), _SIGNATURE_BEGIN, "", *lines,
         _SIGNATURE_END]
    ).encode("utf-8")


# ---------------------------------------------------------------------------------- DSSE


def _pae(payload_type: bytes, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, the bytes each signature covers."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def _envelope(data: bytes) -> dict | None:
    """The DSSE envelope in ``data``, or None: Go decodes the first JSON value and ignores
    what follows (older writers end the envelope with a newline)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(data.decode("utf-8").lstrip())
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("payloadType") != METADATA_MEDIA_TYPE:
        return None
    return value


def dsse_envelope(payload: bytes, keys: Sequence[PrivateKey], hash_name: str = "sha256") -> bytes:
    """A DSSE envelope of ``payload`` signed by each key in turn, as sylabs/sif's
    ``dsseEncoder``: Ed25519 signs the PAE itself, RSA (PKCS#1 v1.5) and ECDSA a
    ``hash_name`` digest of it."""
    pae = _pae(METADATA_MEDIA_TYPE.encode(), payload)
    return go_json({
        "payloadType": METADATA_MEDIA_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": dsse_key_id(key.public_key()),
             "sig": base64.b64encode(_dsse_sign(key, pae, hash_name)).decode()}
            for key in keys
        ],
    })


def _dsse_sign(key: PrivateKey, pae: bytes, hash_name: str) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(pae)
    algorithm = _CRYPTO_HASHES[hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(pae, padding.PKCS1v15(), algorithm)
    return key.sign(pae, ec.ECDSA(algorithm))


def _dsse_verifies(key: PublicKey, signature: bytes, pae: bytes, hash_name: str) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, pae)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, pae, padding.PKCS1v15(), _CRYPTO_HASHES[hash_name]())
        else:
            key.verify(signature, pae, ec.ECDSA(_CRYPTO_HASHES[hash_name]()))
    except InvalidSignature:
        return False
    return True


def _verify_dsse(
    envelope: dict, keys: Sequence[PublicKey], hash_name: str
) -> tuple[bytes, list[PublicKey]]:
    """The payload and the keys whose signatures verified, as go-securesystemslib's envelope
    verifier with threshold 1: each signature is tried against each key not yet accepted,
    skipping a key whose ID differs from the signature's keyid. (An envelope of another
    payload type is not taken for a SIF signature at all: "signature format not recognized".)
    """
    try:
        payload = base64.b64decode(envelope.get("payload", ""), validate=True)
        signatures = [(s.get("keyid", ""), base64.b64decode(s.get("sig", ""), validate=True))
                      for s in envelope.get("signatures") or ()]
    except (ValueError, TypeError, AttributeError) as err:
        raise IntegrityError(f"dsse: verify envelope failed: {err}") from None
    if not signatures:
        raise IntegrityError("dsse: verify envelope failed: no signature found")
    pae = _pae(METADATA_MEDIA_TYPE.encode(), payload)
    candidates = list(keys)
    accepted: list[PublicKey] = []
    for key_id, signature in signatures:
        for key in candidates:
            if key_id and key_id != dsse_key_id(key):
                continue
            if _dsse_verifies(key, signature, pae, hash_name):
                candidates.remove(key)
                accepted.append(key)
                break
    if not accepted:
        raise IntegrityError("dsse: verify envelope failed: Accepted signatures do not match "
                             "threshold, Found: 0, Expected 1")
    return payload, accepted


# ---------------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class VerifyResult:
    """The outcome for one signature (or for a task that found none): ``task`` names what was
    checked ("object group 1", "object 2"); ``signature`` is the signature object's ID, None
    when no signature was found; ``verified`` the IDs of the objects whose digests matched."""

    task: str
    signature: int | None
    verified: tuple[int, ...] = ()
    signers: tuple[Signer, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.task}: FAILED: {self.error}"
        objects = ", ".join(map(str, self.verified))
        signers = ", ".join(map(str, self.signers))
        return (f"{self.task}: verified objects {objects} (signature object {self.signature}); "
                f"signed by {signers}")


@dataclass(frozen=True)
class _Task:
    """One unit of ``Verifier.Verify``: a group (``objects`` all of it, or the chosen objects
    of it when ``subset``), a legacy group, or a legacy object (``linked_object`` set)."""

    name: str
    group: int
    objects: tuple[Descriptor, ...]
    legacy: bool = False
    subset: bool = False
    linked_object: int | None = None


@dataclass(frozen=True)
class _Checked:
    """A signature that verified cryptographically: the signed bytes and who signed them."""

    payload: bytes
    signers: tuple[Signer, ...]


def verify(
    image_path: PathArg,
    keyring: Keyring,
    *,
    legacy: bool = False,
    legacy_all: bool = False,
    group: int | None = None,
    object_id: int | None = None,
) -> list[VerifyResult]:
    """Verify the signatures of the image at ``image_path`` with the keys of ``keyring``
    (``load_keyring``); one result per signature checked, or per task that found none.

    By default every object group is verified against its non-legacy signatures. ``group``
    or ``object_id`` chooses one group or one object; ``legacy`` checks legacy signatures
    instead, and ``legacy_all`` each grouped object's legacy signature. ``HpcbindError``
    for what cannot be asked (no such group or object, an image with no groups).
    """
    with SifImage.open(image_path) as image:
        tasks = _tasks(image, legacy or legacy_all, legacy_all, group, object_id)
        ungrouped = [d.id for d in image.descriptors
                     if d.group_id == 0 and d.data_type != DataType.SIGNATURE]
        if ungrouped:
            return [VerifyResult("image", None, error=f"non-signature object {ungrouped[0]} not "
                                 "associated with object group")]
        return [result for task in tasks for result in _run(image, task, keyring)]


def verify_as_asked(image_path: PathArg, keyring: Keyring, *, legacy: bool = False,
                    legacy_all: bool = False, group: int | None = None,
                    object_id: int | None = None) -> list[VerifyResult]:
    """``verify`` as the ``verify`` command of SingularityCE asks for it: an image with no
    signature at all is refused as unsigned (not reported group by group), and ``legacy``
    with neither group nor object checks the primary system partition's own signature,
    which is what Singularity <= 3.5 signed (``singularity verify --legacy-insecure``); an
    image whose legacy signature is its group's keeps the group check."""
    with SifImage.open(image_path) as image:
        signatures = image.of_type(DataType.SIGNATURE)
        if not signatures:
            raise HpcbindError(f"{image.path} is not signed (it has no signature object)",
                               f"sign it with 'hpcrun sign --key KEY {image.path}', or use an "
                               "image its author signed")
        if legacy and not legacy_all and group is None and object_id is None:
            primary = image.primary_partition().id
            if any(s.linked_object == primary for s in signatures):
                object_id = primary
    return verify(image_path, keyring, legacy=legacy, legacy_all=legacy_all, group=group,
                  object_id=object_id)


def _no_such(image: SifImage, what: str) -> HpcbindError:
    return HpcbindError(f"{image.path}: {what}",
                        f"run 'hpcrun sif list {image.path}' to see the objects and groups")


def _group_ids(image: SifImage) -> list[int]:
    ids = sorted({d.group_id for d in image.descriptors if d.group_id})
    if not ids:
        raise _no_such(image, "the image has no object groups, so nothing in it is signed")
    return ids


def _group_objects(image: SifImage, group: int) -> tuple[Descriptor, ...]:
    objects = tuple(d for d in image.descriptors if d.group_id == group)
    if not objects:
        raise _no_such(image, f"no object group {group}")
    return objects


def _tasks(image: SifImage, legacy: bool, legacy_all: bool, group: int | None,
           object_id: int | None) -> list[_Task]:
    """``NewVerifier``'s tasks: the chosen groups, then the chosen objects (in "legacy all"
    mode every non-signature object in a group); every group when nothing is chosen."""
    if group is not None and group <= 0:
        raise HpcbindError(f"invalid group ID {group}", "object groups are numbered from 1")
    if object_id is not None and object_id <= 0:
        raise HpcbindError(f"invalid object ID {object_id}", "objects are numbered from 1")
    object_ids = {object_id} if object_id is not None else set()
    if legacy_all:
        object_ids |= {d.id for d in image.descriptors
                       if d.data_type != DataType.SIGNATURE and d.group_id}
    groups = [group] if group is not None else [] if object_ids else _group_ids(image)
    tasks = [_Task(f"object group {g}", g, _group_objects(image, g), legacy=legacy) for g in groups]
    for id in sorted(object_ids):
        d = image.get(id)
        if legacy:
            tasks.append(_Task(f"object {id}", d.group_id, (d,), legacy=True, linked_object=id))
        else:
            tasks.append(_Task(f"object {id}", d.group_id, (d,), subset=True))
    return tasks


def _signatures(image: SifImage, task: _Task) -> list[Descriptor]:
    """getObjectSignatures / getGroupSignatures: a legacy object task takes every signature
    linked to its object; group tasks those linked to the group, of their kind."""
    signatures = image.of_type(DataType.SIGNATURE)
    if task.linked_object is not None:
        return [s for s in signatures if s.linked_object == task.linked_object]
    return [s for s in signatures
            if s.linked_group == task.group and _is_legacy(image.read(s)) == task.legacy]


def _is_legacy(data: bytes) -> bool:
    message = parse_clearsigned(data)
    return message is not None and message.plaintext.startswith(_LEGACY_PREFIX)


def _run(image: SifImage, task: _Task, keyring: Keyring) -> list[VerifyResult]:
    signatures = _signatures(image, task)
    if not signatures:
        kind = "object" if task.linked_object is not None else "object group"
        ident = task.linked_object if task.linked_object is not None else task.group
        return [VerifyResult(task.name, None, error=f"signature not found for {kind} {ident}")]
    return [_check(image, task, signature, keyring) for signature in signatures]


def _check(image: SifImage, task: _Task, signature: Descriptor, keyring: Keyring) -> VerifyResult:
    checked: _Checked | None = None
    verified: list[int] = []
    try:
        data = image.read(signature)
        checked = _decode(signature, data, keyring, task.legacy)
        if task.legacy:
            _check_entity(signature, checked)
            _check_legacy(image, task, signature, checked.payload)
            verified = [d.id for d in task.objects]
        else:
            _check_metadata(image, task, signature, checked, verified)
    except IntegrityError as err:
        signers = checked.signers if checked is not None else ()
        return VerifyResult(task.name, signature.id, tuple(verified), signers, str(err))
    return VerifyResult(task.name, signature.id, tuple(verified), checked.signers)


def _descriptor_hash(signature: Descriptor) -> str:
    try:
        return _DESCRIPTOR_HASHES[signature.signature_hash]
    except KeyError:
        raise IntegrityError(f"hash type {int(signature.signature_hash)} unsupported") from None


def _decode(signature: Descriptor, data: bytes, keyring: Keyring, legacy: bool) -> _Checked:
    """Pick the decoder by the signature's format, as ``Verify`` does, and check it. A DSSE
    signature's hash is the descriptor's; legacy verifiers pass SHA-256 whatever it says."""
    envelope = _envelope(data)
    message = parse_clearsigned(data) if envelope is None else None
    if envelope is not None and not keyring.pem:
        raise IntegrityError("key material not provided for DSSE envelope signature")
    if envelope is None and message is None:
        raise IntegrityError("signature format not recognized")
    if message is not None and not keyring.pgp:
        raise IntegrityError("key material not provided for PGP clear-sign signature")
    try:
        if message is not None:
            key = _verify_clearsigned(message, keyring)
            return _Checked(message.plaintext, (Signer("pgp", str(key.fingerprint), _user_id(key)),))
        hash_name = "sha256" if legacy else _descriptor_hash(signature)
        payload, keys = _verify_dsse(envelope, keyring.pem, hash_name)
    except IntegrityError as err:
        raise IntegrityError(f"signature object {signature.id} not valid: {err}") from None
    return _Checked(payload, tuple(Signer("dsse", dsse_key_id(k), _key_type(k)) for k in keys))


def _check_entity(signature: Descriptor, checked: _Checked) -> None:
    """A PGP signer must be the key the descriptor names (DSSE descriptors name none)."""
    signer = checked.signers[0]
    if signer.kind == "pgp" and bytes.fromhex(signer.id) != signature.signature_fingerprint:
        raise IntegrityError("fingerprint in descriptor does not correspond to signing entity")


def _check_metadata(image: SifImage, task: _Task, signature: Descriptor, checked: _Checked,
                    verified: list[int]) -> None:
    """groupVerifier.verifySignature after the cryptographic check; appends to ``verified``
    each object whose digests match, so a failure still shows how far it got."""
    min_id = min(d.id for d in _group_objects(image, task.group))
    try:
        metadata = parse_metadata(checked.payload, min_id)
    except IntegrityError as err:
        raise IntegrityError(f"signature object {signature.id} not valid: {err}") from None
    _check_entity(signature, checked)
    if not task.subset:
        _check_ids(metadata, task.objects)
    if not _matches(metadata.header, [header_integrity_bytes(image.header)]):
        raise IntegrityError("header integrity compromised")
    for d in task.objects:
        if d.id not in metadata.objects:
            raise IntegrityError(f"object {d.id}: object not signed")
        descriptor_digest, data_digest = metadata.objects[d.id]
        if not _matches(descriptor_digest, [descriptor_integrity_bytes(d, d.id - min_id)]):
            raise IntegrityError(f"data object descriptor integrity compromised: {d.id}")
        if not _matches(data_digest, image.chunks(d)):
            raise IntegrityError(f"data object integrity compromised: {d.id}")
        verified.append(d.id)


def _check_ids(metadata: SignedMetadata, objects: Sequence[Descriptor]) -> None:
    """A whole-group signature must name exactly the group's objects: no more, no fewer."""
    for d in objects:
        if d.id not in metadata.objects:
            raise IntegrityError(f"object {d.id}: object not signed")
    missing = sorted(set(metadata.objects) - {d.id for d in objects})
    if missing:
        raise IntegrityError(f"object {missing[0]}: signed object not found")


def _check_legacy(image: SifImage, task: _Task, signature: Descriptor, plaintext: bytes) -> None:
    """newLegacyDigest, then the digest over the object, or over the group's objects' data
    end to end in table order."""
    algorithm = _descriptor_hash(signature)
    text = plaintext.removeprefix(_LEGACY_PREFIX).removesuffix(b"\n")
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except ValueError as err:
        raise IntegrityError(f"encoding/hex: {err}") from None
    signed = (algorithm, _checked_digest(algorithm, raw))
    if not _matches(signed, (chunk for d in task.objects for chunk in image.chunks(d))):
        what = f": {task.linked_object}" if task.linked_object is not None else ""
        raise IntegrityError(f"data object integrity compromised{what}")


# ---------------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class SigningKey:
    """What ``sign`` signs with: one OpenPGP secret key, or one or more PEM private keys (all
    their signatures go into one DSSE envelope)."""

    pgp: pgpy.PGPKey | None = None
    pem: tuple[PrivateKey, ...] = ()

    @property
    def fingerprint(self) -> bytes:
        """The descriptor's entity: the PGP primary key's fingerprint, none for DSSE."""
        return _fingerprint(self.pgp) if self.pgp is not None else b""

    def describe(self) -> str:
        if self.pgp is not None:
            return f'PGP key {self.pgp.fingerprint} "{_user_id(self.pgp)}"'
        return ", ".join(f"{_key_type(k)} key {dsse_key_id(k.public_key())}" for k in self.pem)


def load_signing_key(paths: Sequence[PathArg]) -> SigningKey:
    """A PGP secret key file (its first key), or PEM private key files (PKCS#8, PKCS#1, SEC1)."""
    if not paths:
        raise HpcbindError("no signing key given",
                           "give --key with a PGP secret key or a PEM private key")
    pem: list[PrivateKey] = []
    pgp: list[pgpy.PGPKey] = []
    for path in paths:
        data = _read_key(path)
        if _is_pem(data):
            pem.append(_pem_private_key(path, data))
        else:
            pgp.append(_pgp_secret_key(path, data))
    if pgp and (pem or len(pgp) > 1):
        raise HpcbindError("more than one signing key given with a PGP key",
                           "sign with one PGP secret key, or with PEM private keys only (DSSE)")
    return SigningKey(pgp[0] if pgp else None, tuple(pem))


def _pem_private_key(path: PathArg, data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise HpcbindError(f"{os.fspath(path)}: the private key is encrypted",
                           "give an unencrypted PEM private key") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise _bad_key(path, f"not a PEM private key ({err})") from None
    _dsse_key(path, key.public_key())
    return key


def _pgp_secret_key(path: PathArg, data: bytes) -> pgpy.PGPKey:
    key = _pgp_keys(path, data)[0]
    if key.is_public:
        raise _bad_key(path, f"PGP key {key.fingerprint} is a public key, which cannot sign")
    if key.is_protected:
        raise HpcbindError(f"{os.fspath(path)}: PGP key {key.fingerprint} is protected by a passphrase",
                           "hpcrun sign cannot unlock it: sign with a key without one, or a PEM key")
    return key


def sign(
    image_path: PathArg,
    key: SigningKey,
    *,
    group: int | None = None,
    deterministic_time: int | None = None,
) -> list[tuple[int, int]]:
    """Sign each object group of the image at ``image_path`` (or only ``group``), in ascending
    order, adding one signature object per group; return (group, signature object ID) pairs.

    ``key`` (``load_signing_key``): a PGP secret key (clear-signed metadata) or PEM private
    keys (one DSSE envelope with a signature by each). ``deterministic_time`` (Unix seconds) is the
    signatures' time, and makes the edit deterministic: the new objects and the header keep
    Go's zero time (sylabs/sif's OptSignWithTime and OptSignDeterministic), so signing the same
    image with the same key gives the same bytes. By default both are the current time.
    """
    if group is not None and group <= 0:
        raise HpcbindError(f"invalid group ID {group}", "object groups are numbered from 1")
    when = datetime.now(timezone.utc).replace(microsecond=0) if deterministic_time is None else \
        datetime.fromtimestamp(deterministic_time, timezone.utc)
    with SifImage.open(image_path) as image:
        groups = [group] if group is not None else _group_ids(image)
        messages = [(g, _sign_group(image, g, key, when)) for g in groups]
    at = GO_ZERO_TIME if deterministic_time is not None else None
    return [
        (g, add_object(image_path, ObjectInput(DataType.SIGNATURE, data=message, group=0, linked_group=g,
                                               signature=(HashType.SHA256, key.fingerprint)), at=at))
        for g, message in messages
    ]


def _sign_group(image: SifImage, group: int, key: SigningKey, when: datetime) -> bytes:
    objects = sorted(_group_objects(image, group), key=lambda d: d.id)
    payload = go_json(image_metadata(image, objects[0].id, objects))
    if key.pgp is not None:
        return _clearsign(payload, key.pgp, when)
    return dsse_envelope(payload, key.pem)


def signature_claims(image_path: PathArg) -> list[str]:
    """Who each signature object *says* signed it, unverified: the descriptor's PGP
    fingerprint, or the keyids in a DSSE envelope. Sorted, without repeats."""
    claims: set[str] = set()
    with SifImage.open(image_path) as image:
        for signature in image.of_type(DataType.SIGNATURE):
            if signature.signature_fingerprint is not None:
                claims.add(signature.signature_fingerprint.hex().upper())
            envelope = _envelope(image.read(signature)) or {}
            claims.update(s["keyid"] for s in envelope.get("signatures") or ()
                          if isinstance(s, dict) and isinstance(s.get("keyid"), str) and s["keyid"])
    return sorted(claims)
