"""Key set-up of ``tenseal``, owner side: the key holder makes the context, every owner installs it.

1. every owner answers with its X25519 public key (``sealing.keypair``);
2. the key holder (the owner with the smallest id, or ``aggregation.key_holder``) runs
   :func:`generate`: a fresh CKKS context whose secret part is sealed to each owner's key;
3. every owner runs :func:`install` on its sealed box: open, check, store in its state directory
   (``<state_dir>/keys/ckks_secret.ctx`` mode 0600, ``ckks_public.ctx``).

The server relays the three exchanges (``server/key_setup.py``) and ends up with the public
context only. The key holder keeps its own copy only through its own sealed box, like everyone.
"""

from __future__ import annotations

from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.privacy.secagg import sealing
from fedveil.privacy.secagg.tenseal.ckks import TensealConfig, load_context, make_context, public_bytes, secret_bytes


def generate(cfg: TensealConfig, owner_public_keys: dict[str, bytes]) -> tuple[bytes, dict[str, bytes]]:
    """(public context, owner id -> sealed secret context), made by the key holder."""
    ctx = make_context(cfg)
    public, secret = public_bytes(ctx), secret_bytes(ctx)
    return public, {owner: sealing.seal(secret, key) for owner, key in owner_public_keys.items()}


def install(state_dir: str | Path, public: bytes, sealed: bytes) -> None:
    """Open this owner's sealed secret context, refuse bytes that are no CKKS context, store it."""
    private, _ = sealing.keypair(state_dir)
    secret = sealing.unseal(sealed, private, "sealed CKKS secret")
    load_context(secret)
    d = sealing.keys_dir(state_dir)
    sealing.write_private(d / "ckks_secret.ctx", secret)
    atomic_write_bytes(d / "ckks_public.ctx", public)


def load_contexts(state_dir: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) CKKS context bytes; an owner without them cannot take part."""
    d = Path(state_dir) / "keys"
    try:
        return (d / "ckks_public.ctx").read_bytes(), (d / "ckks_secret.ctx").read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"no CKKS context in {d}: this owner missed the key set-up; restart the run to re-key") from exc
