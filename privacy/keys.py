"""An owner's key material in its state directory: an X25519 key pair and the CKKS context.

``<state_dir>/keys/owner_x25519.key`` (created on first use, mode 0600) receives the sealed CKKS
secret; ``<state_dir>/keys/ckks_secret.ctx`` and ``ckks_public.ctx`` hold the federation's
context once installed. Nothing here is ever sent to the server except public keys, the public
context and sealed boxes.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedveil.core.atomic import atomic_write_bytes
from fedveil.core.errors import UserError


def keys_dir(state_dir: str | Path) -> Path:
    d = Path(state_dir) / "keys"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)


def owner_keypair(state_dir: str | Path) -> tuple[bytes, bytes]:
    """(private, public) X25519 key of this owner, created once and kept."""
    from nacl.public import PrivateKey

    path = keys_dir(state_dir) / "owner_x25519.key"
    if not path.exists():
        write_private(path, bytes(PrivateKey.generate()))
    raw = path.read_bytes()
    if len(raw) != 32:
        raise UserError(f"{path} is not a 32-byte X25519 key; restore it or delete it to make a new one (and re-key)")
    key = PrivateKey(raw)
    return bytes(key), bytes(key.public_key)


def install_context(state_dir: str | Path, public: bytes, secret: bytes) -> None:
    d = keys_dir(state_dir)
    write_private(d / "ckks_secret.ctx", secret)
    atomic_write_bytes(d / "ckks_public.ctx", public)


def load_contexts(state_dir: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) CKKS context bytes; an owner without them cannot take part."""
    d = Path(state_dir) / "keys"
    try:
        return (d / "ckks_public.ctx").read_bytes(), (d / "ckks_secret.ctx").read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"no CKKS context in {d}: this owner missed the key set-up; restart the run to re-key") from exc
