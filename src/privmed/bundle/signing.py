"""Ed25519 signatures for bundles.

``metadata.json`` carries the weights' SHA-256, which catches corruption but not tampering: whoever
can edit the weights can edit the checksum beside them. A signature made with a private key kept
off the server closes that gap. ``signature.ed25519`` signs the canonical metadata (sorted keys,
compact) and the SHA-256 of every file that changes predictions (weights, ONNX graph), hashed from
the files themselves. Re-sign after ``update_metadata`` (calibration, audit, OOD refit).
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from privmed.errors import BundleError
from privmed.files import sha256_bytes, sha256_file

SIGNATURE = "signature.ed25519"
SIGNED_FILES = ("weights.safetensors", "model.onnx")  # model.onnx only when present
_DOMAIN = b"privmed-bundle-signature-v1\n"


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError:
        raise BundleError("bundle signing needs the 'cryptography' package: pip install 'privmed[serve]'") from None
    return serialization, ed25519


def load_private_key(path: Path, what: str = "bundle signing key", error: type[Exception] = BundleError):
    """An Ed25519 private key from a PEM file; ``error`` says ``what`` could not be read or is not one."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise error(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise error(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path, what: str = "bundle public key", error: type[Exception] = BundleError):
    """An Ed25519 public key from a PEM file; ``error`` says ``what`` could not be read or is not one."""
    serialization, ed25519 = _crypto()
    try:
        pub = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise error(f"cannot read the {what} {path}: {e}") from None
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise error(f"{path} is not an Ed25519 public key")
    return pub


def message(bundle: Path) -> bytes:
    """The exact bytes that are signed."""
    bundle = Path(bundle)
    try:
        meta = json.loads((bundle / "metadata.json").read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{bundle} has no readable metadata.json ({e})") from None
    canon = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    files = {n: sha256_file(bundle / n)
             for n in SIGNED_FILES if (bundle / n).is_file()}
    if "weights.safetensors" not in files:
        raise BundleError(f"{bundle} has no weights.safetensors")
    return _DOMAIN + sha256_bytes(canon).encode() + b"\n" + json.dumps(files, sort_keys=True).encode()


def keygen(out: Path, name: str = "privmed-bundle") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` into ``out`` (NAME privmed-bundle by default)."""
    serialization, ed25519 = _crypto()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv, pub = out / f"{name}.key", out / f"{name}.pub"
    if priv.exists():
        raise BundleError(f"{priv} exists; refusing to overwrite a signing key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign(bundle: Path, key_path: Path) -> Path:
    key = load_private_key(key_path)
    sig = base64.b64encode(key.sign(message(bundle))) + b"\n"
    (Path(bundle) / SIGNATURE).write_bytes(sig)
    return Path(bundle) / SIGNATURE


def verify(bundle: Path, pubkey_path: Path) -> None:
    """Raise ``BundleError`` naming the reason unless the bundle carries a valid signature."""
    from cryptography.exceptions import InvalidSignature

    bundle = Path(bundle)
    pub = load_public_key(pubkey_path)
    if not (bundle / SIGNATURE).is_file():
        raise BundleError(f"bundle {bundle.name} is not signed (no {SIGNATURE}); sign it with `privmed bundle sign`")
    try:
        pub.verify(base64.b64decode((bundle / SIGNATURE).read_bytes().strip(), validate=True), message(bundle))
    except (InvalidSignature, ValueError):
        raise BundleError(f"bundle {bundle.name} has a bad signature: its metadata or weights changed after "
                          "signing, or it was signed with another key") from None
