"""Ed25519 keys and detached signatures for registry files: a ``.sig`` file holds the base64 of
the 64-byte signature over the exact bytes of the file it sits beside."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.atomic import fsync_dir, write_atomic
from agent.errors import RegistryError, SignatureError

__all__ = ["fsync_dir", "write_atomic"]  # re-exported for the publishing tools

SIGNATURE_SUFFIX = ".sig"


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def generate_key(out: Path) -> tuple[Path, Path]:
    """A new key pair: ``out`` (PKCS8 PEM, mode 0600) and ``out.pub`` (PEM, 0644)."""
    out = Path(out)
    pub = public_key_path(out)
    for existing in (out, pub):
        if existing.exists():
            raise RegistryError(f"{existing}: already exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        write_atomic(out, private_pem, 0o600, overwrite=False)
    except FileExistsError:
        raise RegistryError(f"{out}: already exists; not overwriting a key") from None
    try:
        write_atomic(pub, public_pem, 0o644, overwrite=False)
    except FileExistsError:
        out.unlink()
        raise RegistryError(f"{pub}: already exists; not overwriting a key") from None
    except BaseException:
        # Half a key pair is worse than none: the next keygen would refuse to run.
        out.unlink()
        raise
    return out, pub


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the signing key: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise RegistryError(
            f"{path}: not an unencrypted PEM private key (make one with "
            "`edge-agent registry keygen`)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise RegistryError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_keys(paths: Iterable[Path | str]) -> list[Ed25519PublicKey]:
    keys = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise RegistryError(f"{path}: cannot read the public key: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            hint = " (this is a private key: give its .pub)" if b"PRIVATE KEY" in data else ""
            raise RegistryError(f"{path}: not a PEM public key{hint}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise RegistryError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
        keys.append(key)
    return keys


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint for messages: the first 16 hex digits of sha256(raw public key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of a ``.sig`` file for ``data``."""
    return base64.b64encode(key.sign(data)) + b"\n"


def sign_file(path: Path | str, key: Ed25519PrivateKey) -> Path:
    """Sign the file's current bytes into ``<path>.sig``."""
    path = Path(path)
    sig = path.with_name(path.name + SIGNATURE_SUFFIX)
    write_atomic(sig, sign(path.read_bytes(), key))
    return sig


def verify(data: bytes, signature_file: bytes, keys: Iterable[Ed25519PublicKey]) -> None:
    """Return if one of ``keys`` signed exactly ``data``, else raise SignatureError."""
    try:
        signature = base64.b64decode(signature_file.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("malformed signature: not base64") from exc
    if len(signature) != 64:
        raise SignatureError(f"malformed signature: {len(signature)} bytes, not 64")
    keys = list(keys)
    if not keys:
        raise SignatureError("signature cannot be checked: no trusted key is configured")
    for key in keys:
        try:
            key.verify(signature, data)
            return
        except InvalidSignature:
            continue
    raise SignatureError(
        "signature does not match any trusted key "
        f"({', '.join(key_id(k) for k in keys)}): the file was changed or signed by another key"
    )
