"""Secure-aggregation backends, chosen by ``aggregation.name`` through a closed registry.

Each :class:`BackendSpec` says everything the federation needs to know about its backend: its
config, how the server side and the owner side are built, whether the server holds the global
adapter only as ciphertexts (owners re-encrypt it), whether owners key the federation before
round 1, whether a run can resume, and what the simulation must start for it. A run config
names a key of :data:`BACKENDS`; nothing else loads.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

from fedveil.core.errors import UserError
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.plain import PlainBackend, PlainConfig
from fedveil.privacy.secagg.tenseal.ckks import TensealBackend, TensealConfig


@dataclass(frozen=True)
class KeySetup:
    """Owner-side steps of a federation-wide key set-up (the server relays them); ``keys`` is the
    owner's ``identity.OwnerKeys`` (its keys and pinned roster), ``run`` the run being keyed."""

    announce: Callable[[Any], bytes]  # (keys) on every owner: its X25519 public key
    generate: Callable[[Any, Any, str, dict[str, bytes]], Any]  # (cfg, keys, run, listed) on the key holder
    install: Callable[..., None]  # (keys, run, public=, statement=, signature=, sealed=) on every owner


@dataclass(frozen=True)
class BackendSpec:
    config: type
    server: Callable[..., Any]  # (cfg, size, public=<key set-up result>) -> server side
    owner: Callable[..., Any]  # (cfg, size, keys: identity.OwnerKeys, per_round) -> owner side
    encrypted_global: bool = False  # the server never holds the global in clear
    key_setup: Optional[KeySetup] = None
    can_resume: bool = True
    # (cfg, output_dir, number of simulated owners) -> what the simulation runs beside the federation
    local_services: Callable[[Any, Path, int], ContextManager] = lambda cfg, out, owners=0: nullcontext()


def _tenseal_owner(cfg, size, keys, per_round):
    from fedveil.privacy.secagg.tenseal.keys import load_contexts

    public, secret = load_contexts(keys.state_dir)
    return TensealBackend(cfg, size, public=public, secret=secret, roster=keys.roster(), keys=keys)


def _tenseal_key_setup() -> KeySetup:
    from fedveil.privacy.secagg.tenseal import keys

    return KeySetup(announce=keys.announce, generate=keys.generate, install=keys.install)


def _crypten_owner(cfg, size, keys, per_round):
    return CryptenBackend.for_owner(cfg, size, per_round, keys.party_keys_file)


def _crypten_parties(cfg, out: Path, owners: int = 0) -> ContextManager:
    from fedveil.privacy.secagg.crypten.launcher import local_parties

    return local_parties(cfg, out, owners)


BACKENDS: dict[str, BackendSpec] = {
    "plain": BackendSpec(
        PlainConfig,
        server=lambda cfg, size, public=None: PlainBackend(cfg, size),
        owner=lambda cfg, size, keys, per_round: PlainBackend(cfg, size),
    ),
    "tenseal": BackendSpec(
        TensealConfig,
        server=lambda cfg, size, public=None: TensealBackend(cfg, size, public=public),
        owner=_tenseal_owner,
        encrypted_global=True,
        key_setup=_tenseal_key_setup(),
        can_resume=False,  # a restart re-keys, so stored ciphertexts could not be opened
    ),
    "crypten": BackendSpec(
        CryptenConfig,
        server=lambda cfg, size, public=None: CryptenBackend.for_server(cfg, size),
        owner=_crypten_owner,
        local_services=_crypten_parties,
    ),
}


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise UserError(f"aggregation '{name}' is unknown: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
