"""Sealed boxes: the one way key material and shares travel through the coordinator.

"Seal" in fedveil means a libsodium sealed box (X25519 + XSalsa20-Poly1305, PyNaCl): only the
holder of the recipient's private key opens it; the relay (the server) cannot. Each owner and
each aggregator party keeps one X25519 key pair in its state directory,
``<state_dir>/keys/owner_x25519.key`` (created on first use, mode 0600).
"""

from __future__ import annotations

from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.core.payload import PayloadError


def keys_dir(state_dir: str | Path) -> Path:
    d = Path(state_dir) / "keys"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a file that is mode 0600 from its creation (never readable by others)."""
    atomic_write_bytes(path, data, mode=0o600)


def keypair(state_dir: str | Path) -> tuple[bytes, bytes]:
    """(private, public) X25519 key of this owner or party, created once and kept."""
    path = keys_dir(state_dir) / "owner_x25519.key"
    if not path.exists():
        write_private(path, bytes(PrivateKey.generate()))
    raw = path.read_bytes()
    if len(raw) != 32:
        raise UserError(f"{path} is not a 32-byte X25519 key; restore it or delete it to make a new one (and re-key)")
    key = PrivateKey(raw)
    return bytes(key), bytes(key.public_key)


def seal(data: bytes, recipient_public_key: bytes) -> bytes:
    """A sealed box of ``data`` that only ``recipient_public_key``'s holder opens."""
    return SealedBox(PublicKey(recipient_public_key)).encrypt(data)


def unseal(sealed: bytes, private_key: bytes, what: str, whose: str = "this owner's") -> bytes:
    """Open a sealed box; :class:`PayloadError` naming ``what`` if it was not sealed to ``whose`` key."""
    try:
        return SealedBox(PrivateKey(private_key)).decrypt(sealed)
    except CryptoError as exc:
        raise PayloadError(f"{what} does not open with {whose} key: it was sealed to someone else, or damaged") from exc
