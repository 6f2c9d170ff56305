"""The site's signer policy, enforced before an image is mounted.

``trust.allowed_signers``: when set, an image runs only if it is a SIF whose every object
group carries a signature that verifies with the keys of ``trust.keyrings`` and was made by a
listed signer. ``trust.denied_signers``: an image that any signature object *claims* a listed
signer made does not run, verified or not (a forged claim can only keep an image from
running). Signers are PGP primary-key fingerprints (40 hex digits, spaces and case ignored)
or DSSE key IDs ("SHA256:...", as ``hpcrun verify`` prints them).

With both lists empty nothing here runs and nothing heavy is imported: PGPy and cryptography
load only when a policy is set.
"""

from __future__ import annotations

import os

from hpcbind.errors import HpcbindError
from hpcbind.image.source import SIF_MAGIC

_DSSE_PREFIX = "SHA256:"
_HEX = frozenset("0123456789ABCDEF")
_MAGIC_OFFSET = 32


def check_signers(
    image_path: str, allowed: list[str], denied: list[str], keyring_paths: list[str]
) -> None:
    """Raise ``HpcbindError`` unless the image at ``image_path`` satisfies the policy."""
    if not allowed and not denied:
        return
    allowed_ids = {_signer_id(entry, "trust.allowed_signers") for entry in allowed}
    denied_ids = {_signer_id(entry, "trust.denied_signers") for entry in denied}
    if not _is_sif(image_path):
        if allowed_ids:
            raise HpcbindError(
                f"{image_path} is not a SIF image, and the site runs only images signed by "
                "trust.allowed_signers", "run a signed SIF image (hpcrun build, then hpcrun sign)")
        return
    from hpcbind.image import integrity

    for claim in integrity.signature_claims(image_path):
        if claim in denied_ids:
            raise HpcbindError(f"{image_path} is signed by {claim}, a signer the site denies "
                               "(trust.denied_signers)", "use an image signed by another key")
    if allowed_ids:
        _check_allowed(image_path, allowed_ids, keyring_paths)


def _check_allowed(image_path: str, allowed: set[str], keyring_paths: list[str]) -> None:
    from hpcbind.image import integrity

    results = integrity.verify(image_path, integrity.load_keyring(keyring_paths))
    for result in results:
        if result.signature is None:
            raise HpcbindError(
                f"{image_path} is not signed ({result.error}), and the site runs only images "
                "signed by trust.allowed_signers",
                f"sign it with 'hpcrun sign --key KEY {image_path}' using an allowed key")
        if not result.ok:
            claims = ", ".join(integrity.signature_claims(image_path)) or "no one"
            raise HpcbindError(
                f"{image_path}: signature does not verify: {result.error} (it claims to be by "
                f"{claims})", "if that signer is trusted, add its public key to trust.keyrings; "
                "otherwise fetch or rebuild the image")
    for task in dict.fromkeys(r.task for r in results):
        signers = {s.id for r in results if r.task == task for s in r.signers}
        if not signers & allowed:
            raise HpcbindError(
                f"{image_path}: {task} is signed by {', '.join(sorted(signers))}, which is not "
                "in trust.allowed_signers", "use an image signed by an allowed key")


def _signer_id(entry: str, setting: str) -> str:
    """A fingerprint in the form verification reports it (upper-case hex), or a DSSE key ID."""
    if entry.startswith(_DSSE_PREFIX):
        return entry
    fingerprint = "".join(entry.split()).upper().removeprefix("0X")
    if len(fingerprint) != 40 or not set(fingerprint) <= _HEX:
        raise HpcbindError(f"{setting} entry {entry!r} is neither a PGP fingerprint nor a DSSE "
                           "key ID", "give 40 hex digits, or SHA256:... as 'hpcrun verify' prints it")
    return fingerprint


def _is_sif(path: str) -> bool:
    """Whether ``path`` is a file with SIF's magic; anything else (a sandbox directory, a bare
    squashfs) cannot carry a signature."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(_MAGIC_OFFSET + len(SIF_MAGIC))
    except OSError as err:
        raise HpcbindError(f"cannot read image {path}: {err.strerror}",
                           "check the path and its permissions") from None
    return head[_MAGIC_OFFSET:] == SIF_MAGIC
