"""Secure-aggregation backends, chosen by ``aggregation.name`` through a closed registry."""

from __future__ import annotations

from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.privacy.secagg.crypten_backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.plain import PlainBackend, PlainConfig
from fedveil.privacy.secagg.tenseal_ckks import TensealBackend, TensealConfig

# name -> (config dataclass, backend class). A run config names a key here; nothing else loads.
BACKENDS = {
    "plain": (PlainConfig, PlainBackend),
    "tenseal": (TensealConfig, TensealBackend),
    "crypten": (CryptenConfig, CryptenBackend),
}


def backend_entry(name: str):
    if name not in BACKENDS:
        raise UserError(f"aggregation '{name}' is unknown: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def server_backend(cfg, size: int, public: bytes | None = None):
    """The server's side: ``plain`` in clear; ``tenseal`` with the public context only."""
    if cfg.name == "tenseal":
        return TensealBackend(cfg, size, public=public)
    return backend_entry(cfg.name)[1](cfg, size=size)


def owner_backend(cfg, size: int, state_dir: str | Path, round_info: dict | None = None):
    """An owner's side; ``tenseal`` reads the installed context from the owner's state dir;
    ``crypten`` takes the parties' public keys and the round from ``round_info``."""
    if cfg.name == "crypten":
        info = dict(round_info or {})
        keys = [bytes.fromhex(h) for h in str(info.pop("party-keys", "")).split(",") if h]
        return CryptenBackend(cfg, size, party_keys=keys, round_info=info)
    if cfg.name == "tenseal":
        from fedveil.privacy.keys import load_contexts

        public, secret = load_contexts(state_dir)
        return TensealBackend(cfg, size, public=public, secret=secret)
    return backend_entry(cfg.name)[1](cfg, size=size)
