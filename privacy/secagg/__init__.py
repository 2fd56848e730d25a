"""Secure-aggregation backends, chosen by ``aggregation.name`` through a closed registry.

Each :class:`BackendSpec` says everything the federation needs to know about its backend: its
config, how the server side and the owner side are built, whether the server holds the global
adapter only as ciphertexts (owners re-encrypt it), whether owners key the federation before
round 1, whether a run can resume, what the simulation must start for it, what it defends
against (:class:`Guarantees`: the one threat table; ``privacy/planner.py`` picks from it and
docs/privacy.md's threat model is checked against it) and its exact bytes per round (``cost``, in
each backend's own package: ``plain.py``, ``tenseal/cost.py``, ``crypten/cost.py``). A run config
names a key of :data:`BACKENDS`; nothing else loads.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Optional

from fedveil.core.errors import UserError
from fedveil.privacy.dp.owner_level_plan import IntegerDomain
from fedveil.privacy.secagg import plain
from fedveil.privacy.secagg.base import Cost
from fedveil.privacy.secagg.crypten import cost as crypten_cost
from fedveil.privacy.secagg.crypten.backend import INTEGERS as CRYPTEN_INTEGERS
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.crypten.launcher import local_parties
from fedveil.privacy.secagg.plain import PlainBackend, PlainConfig
from fedveil.privacy.secagg.tenseal import committee_round
from fedveil.privacy.secagg.tenseal import cost as tenseal_cost
from fedveil.privacy.secagg.tenseal import keys as tenseal_keys
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.config import integer_values as tenseal_integer_values
from fedveil.privacy.secagg.tenseal.config import integers as tenseal_integers
from fedveil.privacy.secagg.tenseal.config import resolve as resolve_tenseal
from fedveil.privacy.secagg.tenseal.global_codec import EncryptedGlobal


@dataclass(frozen=True)
class KeySetup:
    """Owner-side steps of a federation-wide key set-up (the server relays them); ``keys`` is the
    owner's ``identity.OwnerKeys`` (its keys and pinned roster), ``run`` the run being keyed."""

    announce: Callable[[Any], bytes]  # (keys) on every owner: its X25519 public key
    generate: Callable[[Any, Any, str, dict[str, bytes]], Any]  # (cfg, keys, run, listed) on the key holder
    install: Callable[..., None]  # (keys, run, public=, statement=, signature=, sealed=) on every owner
    # (keys, run) on every owner: what it holds for the run ({} if nothing: the run is not keyed yet),
    # so that a restarted coordinator resumes with it instead of re-keying
    rejoin: Callable[[Any, str], dict[str, bytes]]
    # the server's side (``server/key_setup.py``): the run a signed set-up statement names, and
    # (public, statement, signature, key holder's verify key) -> (run, context id) of a held set-up, checked
    run_of: Callable[[bytes], str]
    check_rejoin: Callable[[bytes, bytes, bytes, bytes], tuple[str, str]]


COORDINATOR_THREATS = ("trusted", "curious", "malicious")  # weakest to strongest


@dataclass(frozen=True)
class Guarantees:
    """What a backend, as built, defends each owner's update against, and what it costs.

    ``coordinator``: the coordinator behaviours under which no single update leaks to it
    (confidentiality; integrity caveats are in ``caveats``). ``owner_collusion``: an owner
    colluding with the coordinator still learns no other owner's update. ``why_not`` says, per
    threat not covered (``curious``, ``malicious``, ``owner_collusion``), why. ``parties``:
    independent aggregator parties needed (0: none). ``min_owners``: owners a round needs.
    ``bytes_per_value``: update bytes per adapter value each receiver gets (fp32 = 4), and
    ``receivers`` who gets them (the coordinator, or each of K parties).
    """

    coordinator: tuple[str, ...]
    owner_collusion: bool
    coordinator_sees: str
    why_not: tuple[tuple[str, str], ...] = ()
    caveats: tuple[str, ...] = ()
    parties: int = 0
    min_owners: int = 1
    bytes_per_value: float = 4.0
    receivers: str = "coordinator"

    def survives(self, coordinator: str) -> bool:
        return coordinator in self.coordinator

    def reason(self, threat: str) -> str:
        return dict(self.why_not).get(threat, "")


@dataclass(frozen=True)
class BackendSpec:
    config: type
    # (cfg, size, public=, run=, signers=: what the key set-up gave the server) -> server side
    server: Callable[..., Any]
    owner: Callable[..., Any]  # (cfg, size, keys: identity.OwnerKeys, per_round, run=run key) -> owner side
    # (cfg, adapter values, owners per round, calibration=calibration.json's dict, *, dp_on=) -> the exact
    # payload bytes of one round (:class:`Cost`; seconds left 0, the planner adds them); without DP (dp_on=False)
    # they include the held-out pairs. A backend may read its own measured sizes from ``calibration`` (tenseal:
    # its ciphertexts'); without it, it measures them
    cost: Callable[..., Cost]
    # (cfg, adapter values, owner id, round, calibration=) -> exact bytes of that owner's protected update in
    # that round (``Protected.nbytes``; crypten's headers name the owner and round); defaults: client_0, round 1
    update_bytes: Callable[[Any, int, str, int, Optional[Mapping[str, Any]]], int]
    # (owners per round, independent aggregator parties stated in privacy.*, 0: none) -> the config the planner
    # prices (tenseal: parameters for the cohort; crypten: K parties); None: the config's defaults
    priced_config: Optional[Callable[[int, int], Any]] = None
    # (aggregator parties stated) -> what aggregation=auto sets, besides the name, where it picks this backend
    # (crypten: its K parties); the run's ``resolve`` fills in the rest
    picked_values: Callable[[int], dict] = lambda parties: {}
    # (server side) -> the server's holder of the global, where it holds it only encrypted (owners
    # re-encrypt it); None: the server holds it in clear (server/global_state.ClearGlobal)
    held_global: Optional[Callable[[Any], Any]] = None
    key_setup: Optional[KeySetup] = None
    can_resume: bool = (
        True  # a restarted coordinator continues from its checkpoint (tenseal: with the keys owners hold)
    )
    # (cfg, output_dir, number of simulated owners) -> what the simulation runs beside the federation
    local_services: Callable[[Any, Path, int], ContextManager] = lambda cfg, out, owners=0: nullcontext()
    guarantees: Optional[Guarantees] = None
    # (aggregation dict, owners per round, dp on, train.update_clip_norm, rounds) -> the aggregation dict
    # with the run's values for what the config left null (tenseal: its bounds and BFV parameters; keyword
    # malicious_owners=privacy.malicious_owners: its download form)
    resolve: Optional[Callable[..., dict]] = None
    # (cfg, adapter values, owners per round, calibration, *, dp_on=) -> the bytes of each way owners may
    # download a round, by name (tenseal: every update, a verifier committee, the sum alone); None: one way
    variants: Optional[Callable[..., dict[str, Cost]]] = None
    # the steps of a round certified by a verifier committee, each side's (tenseal: ``committee_round``; the round
    # loop's exchanges in server/committee_exchange.py, the owner's in client/operations.py); None: none
    committee: Any = None
    # dp=owner_level: the integer domain owners' quantised, noised updates are summed in (its modulus and the
    # per-update bound it can check: ``privacy/dp/owner_level_plan.IntegerDomain``), or (the backend's config,
    # resolved) -> that domain or None where it follows the config (tenseal: BFV's plain modulus is chosen for
    # the cohort); None: the backend sums no integers
    integers: Optional[Any] = None
    # dp=owner_level: a round with fewer than the owners' t contributions reveals nothing (crypten: the parties'
    # floor, aggregation.min_owners; tenseal: each owner counts the signed contributions of a sum before it
    # decrypts it, tenseal/checks.check_contributions)
    enforces_honest_floor: bool = False
    # dp=owner_level: (backend config, per-update check bound, gamma, q, rounds) -> None, setting the backend's
    # bounds for owners' integer updates (tenseal: step 1, its norm check, the global's bound); None: the runner
    # sets ``norm_bound`` alone (crypten)
    integer_values: Optional[Callable[..., None]] = None

    def integer_domain(self, agg: Any) -> Optional[IntegerDomain]:
        """The integer domain ``dp=owner_level`` runs in with the backend config ``agg``; None: it does not run
        here (no integer domain, or nothing enforces the owners' t)."""
        if not self.enforces_honest_floor:
            return None
        return self.integers(agg) if callable(self.integers) else self.integers


def _tenseal_owner(cfg, size, keys, per_round, run=""):
    public, secret = tenseal_keys.held_context(keys, run)  # this run's own context, never another run's
    return TensealOwner(cfg, size, public=public, secret=secret, roster=keys.roster(), keys=keys, run=run)


def _tenseal_key_setup() -> KeySetup:
    k = tenseal_keys
    return KeySetup(announce=k.announce, generate=k.generate, install=k.install, rejoin=k.rejoin, run_of=k.run_of,
                    check_rejoin=k.check_rejoin)


def _tenseal_global(server):
    return EncryptedGlobal(check=server.check_global)


def _crypten_owner(cfg, size, keys, per_round, run=""):
    return CryptenBackend.for_owner(cfg, size, per_round, keys.party_keys_file, owner_keys=keys, run=run)


def _crypten_parties(cfg, out: Path, owners: int = 0) -> ContextManager:
    return local_parties(cfg, out, owners)


BACKENDS: dict[str, BackendSpec] = {
    "plain": BackendSpec(
        PlainConfig,
        server=lambda cfg, size, public=None, **_: PlainBackend(cfg, size),
        owner=lambda cfg, size, keys, per_round, run="": PlainBackend(cfg, size),
        cost=plain.cost,
        update_bytes=plain.update_bytes,
        guarantees=Guarantees(
            coordinator=("trusted",),
            owner_collusion=False,
            coordinator_sees="each owner's update (with DP: the DP-noised update only)",
            why_not=(
                (
                    "curious",
                    "the coordinator sees each owner's update in clear (DP, if on, bounds what it "
                    "reveals about any record)",
                ),
                ("malicious", "the coordinator sees each owner's update in clear"),
                ("owner_collusion", "the coordinator already sees every owner's update"),
            ),
            bytes_per_value=4.0,
        ),
    ),
    "tenseal": BackendSpec(
        TensealConfig,
        server=lambda cfg, size, public=None, run="", signers=None: TensealServer(
            cfg, size, public=public, run=run, signers=signers
        ),
        owner=_tenseal_owner,
        cost=tenseal_cost.priced,
        update_bytes=tenseal_cost.update_bytes,
        priced_config=tenseal_cost.priced_config,
        variants=tenseal_cost.variants,
        committee=committee_round,
        integers=tenseal_integers,
        integer_values=tenseal_integer_values,
        enforces_honest_floor=True,
        held_global=_tenseal_global,
        resolve=resolve_tenseal,
        key_setup=_tenseal_key_setup(),
        guarantees=Guarantees(
            coordinator=("trusted", "curious", "malicious"),
            owner_collusion=False,
            coordinator_sees="BFV (or CKKS) ciphertexts only (no update, count, norm or aggregate)",
            why_not=(
                (
                    "owner_collusion",
                    "owners share the HE secret key: one owner colluding with the coordinator decrypts every update",
                ),
            ),
            caveats=(
                "a malicious coordinator can leave owners' updates out of a round (as dropouts; an owner "
                "refuses a round without its own) and show owners different subsets of one round's signed "
                "updates at its evaluation",
                "with the verifier committee, a round whose cohort the coordinator made of colluders only can be "
                "certified with any sum towards owners outside that cohort (in form every they range-checked each "
                "update themselves); a set with any honest owner's contribution needs that owner's reveal signature",
                "without DP, a malicious coordinator chooses which signed held-out pairs (at least 2, the revealing "
                "owner's among them) go into the one held-out mean per round it obtains",
            ),
            bytes_per_value=8.02,  # BFV: 8192 values per ciphertext of ~65.7 KB at N=4096 (exact: tenseal/cost.py)
        ),
    ),
    "crypten": BackendSpec(
        CryptenConfig,
        server=lambda cfg, size, public=None, **_: CryptenBackend.for_server(cfg, size),
        owner=_crypten_owner,
        cost=crypten_cost.cost,
        update_bytes=crypten_cost.update_bytes,
        priced_config=crypten_cost.priced_config,
        picked_values=crypten_cost.picked_values,
        local_services=_crypten_parties,
        integers=CRYPTEN_INTEGERS,
        enforces_honest_floor=True,
        guarantees=Guarantees(
            coordinator=("trusted", "curious"),
            owner_collusion=True,
            coordinator_sees="the aggregate only (and which owners the parties dropped)",
            why_not=(
                (
                    "malicious",
                    "the parties' public keys reach owners through the coordinator; only owners that "
                    "pin them (party-keys.json) refuse a substitute, and the planner does not assume pins",
                ),
            ),
            caveats=(
                "up to K-1 of K aggregator parties may collude; not all K, nor the TTP dealer with a party",
                "the parties learn the owners' example counts",
                "only owners on the operator-signed roster count towards min_owners; a coordinator controlling "
                "min_owners-1 rostered owners can isolate one owner's update (its DP bounds what that reveals; "
                "under dp=owner_level only its own noise share, 1/t of the noise: the planned owner-level epsilon "
                "assumes t = min_honest_owners honest owners in each round)",
            ),
            parties=2,
            min_owners=3,
            bytes_per_value=8.0,  # one int64 share per value (+ sealing, header); exact: crypten/cost.py
            receivers="one of K aggregator parties, rotating; each other party a sealed 32 B seed",
        ),
    ),
}


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise UserError(f"aggregation '{name}' is unknown: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
