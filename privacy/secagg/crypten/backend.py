"""``crypten``: K non-colluding aggregator parties hold additive shares; only the aggregate is revealed.

What each party holds and sees:

- owners: split ``Δ_k`` (fixed point, Z_2^64) into K shares, seal share p and the count ``n_k``
  to party p's X25519 key and sign the sealed shares and their ``aggregation.min_owners``
  (``ShareBundle``, the owner's Ed25519 identity key); the server relays sealed boxes it cannot
  open. With ``aggregation.shares=seeded`` (the default) K-1 of the shares travel as 32-byte
  ChaCha20 seeds and one party, rotating over owners and rounds, gets the full share
  (``shares.seal_shares``). With ``norm_bound`` set an owner clips its own delta below the bound
  (margin for fixed-point rounding) and its count to ``max_weight``, and a non-finite delta is
  shared as zeros: the parties' verdict on an honest owner never depends on its data.
- parties: one uniformly random share per owner (plus every owner's count). Before anything is
  revealed they (see ``party.py`` and ``mpc.py`` for exactly how):

  * open shares only from owners on the operator-signed roster (``--roster``, under the pinned
    ``--roster-key``) whose signed bundle covers that very share (``not-rostered``, ``unsigned``);
  * refuse a round of a run (``run`` in the request: a fresh id per coordinator start) that is
    not newer than the last one they took up, and refuse to open a sealed share they opened
    before (``replayed``), both remembered in each party's state directory across restarts;
  * agree on the owners whose shares every party opened, with equal counts (else ``malformed``);
  * drop an owner whose count exceeds ``aggregation.max_weight`` (``over-weight``; off by default);
  * with ``aggregation.norm_bound`` B set, check in MPC every coordinate ``|Δ_k,i| <= B`` and then
    ``||Δ_k|| <= B`` (only the yes/no is revealed; a failing update, however large, is dropped
    unseen as ``over-bound``; the coordinate check is what keeps the norm from wrapping the ring);
  * reveal ``Σ n_k Δ_k`` over the accepted owners only if there are at least
    ``aggregation.min_owners`` (default 3, never below 2) of them, and at least the floor every
    summed owner signed (its own ``aggregation.min_owners``: a request cannot lower what owners
    accepted, under ``dp=owner_level`` their t); else nothing is revealed and
    :meth:`CryptenBackend.combine` raises :class:`CohortTooSmall`: that round fails.

  Up to K-1 colluding parties learn nothing about an update. Multiplication triples come from a
  trusted dealer (TTP process) that sees no share.
- server: the revealed aggregate (and which owners were dropped), as with ``plain`` but without
  any single update.

Bytes (exactly: ``cost.py``): an owner uploads one int64 share (8 bytes per value) and K-1 sealed
seeds (about 260 bytes each) with ``shares=seeded``, K int64 shares with ``shares=full``, and its
signed bundle (about 300 bytes + 64 per party), which every party receives.
"""

from __future__ import annotations

import json
import math
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fedveil.core import wire
from fedveil.core.console import progress
from fedveil.core.errors import Refusal, UserError
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.privacy.secagg.base import ServerHoldsGlobal, clear_global
from fedveil.privacy.secagg.crypten import eval_pair
from fedveil.privacy.secagg.identity import PARTY_KEYS_FILE
from fedveil.privacy.dp.owner_level_plan import IntegerDomain
from fedveil.privacy.secagg.crypten.shares import (BUNDLE, LAYOUTS, RING_HEADROOM, SCALE, encode_fixed, norm_check_fits,
                                                   seal_shares, sign_bundle)


@dataclass
class CryptenConfig:
    name: str = "crypten"
    parties: int = 3
    norm_bound: Optional[float] = None  # L2 bound on each owner's delta, checked in MPC (None: no check)
    party_addresses: Optional[list[str]] = None  # HOST:PORT per party; simulation fills these in
    party_timeout_s: float = 300.0
    min_owners: int = 3  # the parties reveal no aggregate of fewer accepted owners (the round fails)
    max_weight: Optional[float] = None  # the parties drop an owner whose example count exceeds this (None: off)
    # the coordinator's TLS files for the parties: DIR/ca.crt, DIR/coordinator.pem, DIR/coordinator.key
    # (simulation fills it in with a throwaway CA); parties accept no other caller
    tls_dir: Optional[str] = None
    insecure: bool = False  # talk to --insecure parties in plaintext (a lab only); never with tls_dir
    # seeded: one full share to a party that rotates over owners and rounds, a sealed 32-byte seed to
    # each other (8 B per value up in all); full: a full share to each party (8 B per value per party)
    shares: str = "seeded"

    def __post_init__(self) -> None:
        if self.shares not in LAYOUTS:
            raise UserError(f"aggregation.shares must be one of {'|'.join(LAYOUTS)}, got {self.shares!r}")
        if self.parties < 2:
            raise UserError(f"aggregation.parties must be >= 2, got {self.parties}")
        if self.norm_bound is not None and not self.norm_bound > 0:
            raise UserError(f"aggregation.norm_bound must be > 0 (or null), got {self.norm_bound}")
        if isinstance(self.min_owners, bool) or not isinstance(self.min_owners, int) or self.min_owners < 2:
            raise UserError(f"aggregation.min_owners must be an integer >= 2 (an aggregate of one owner is "
                            f"that owner's update), got {self.min_owners!r}")
        if self.max_weight is not None and not self.max_weight > 0:
            raise UserError(f"aggregation.max_weight must be > 0 (or null), got {self.max_weight}")
        if self.insecure and self.tls_dir:
            raise UserError("aggregation.insecure=true and aggregation.tls_dir are exclusive: pick one")
        if self.party_addresses is not None and len(self.party_addresses) != self.parties:
            raise UserError(f"aggregation.party_addresses lists {len(self.party_addresses)} parties, "
                            f"aggregation.parties={self.parties}")


# dp=owner_level: owners share integers (exact in the fixed-point ring); the parties keep what they compute
# within +-RING_HEADROOM, i.e. integers within +-RING_HEADROOM / SCALE, and check the noised update's norm
INTEGERS = IntegerDomain(modulus=int(2 * RING_HEADROOM / SCALE), checkable=norm_check_fits)

PINNED_PARTY_KEYS = PARTY_KEYS_FILE  # in an owner's state directory: the parties' X25519 keys it trusts


def write_pinned_party_keys(path: str | Path, keys: list[bytes]) -> None:
    """The parties' public keys, in rank order, as an owner pins them: ``{"parties": [hex, ...]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"parties": [k.hex() for k in keys]}, indent=1) + "\n")


def check_pinned_party_keys(keys: list[bytes], pinned_file: str | Path) -> None:
    """Refuse (:class:`UserError`) party keys that differ from the ones pinned in ``pinned_file``."""
    try:
        pinned = [bytes.fromhex(h) for h in json.loads(Path(pinned_file).read_text())["parties"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"pinned party keys {pinned_file} cannot be read ({exc.__class__.__name__}): "
                        f"fix or restore it; this owner sends no shares meanwhile") from exc
    if keys != pinned:
        wrong = [
            p for p in range(max(len(keys), len(pinned))) if p >= len(keys) or p >= len(pinned) or keys[p] != pinned[p]
        ]
        raise UserError(f"the server sent aggregator party keys that differ from this owner's pinned keys "
                        f"({pinned_file}; parties {wrong}): refused, no share sealed (a substituted key would let "
                        f"its holder open this owner's share)")


def coordinator_tls(cfg: "CryptenConfig"):
    """The coordinator's TLS files for calling the parties (None with ``aggregation.insecure``)."""
    # party.py imports the registry (secagg/__init__), which imports this module: party is imported late
    from fedveil.privacy.secagg.crypten.party import TlsFiles  # lazy: import cycle

    if cfg.insecure:
        return None
    if not cfg.tls_dir:
        raise UserError("aggregation.tls_dir is not set: the aggregator parties accept only the coordinator's TLS "
                        "client certificate (DIR/ca.crt, DIR/coordinator.pem, DIR/coordinator.key; "
                        "deploy/make-pki.sh makes them). aggregation.insecure=true talks plaintext (a lab only)")
    return TlsFiles.coordinator(cfg.tls_dir)


def clip_target(bound: float, length: int, parties: int) -> float:
    """The L2 norm an owner clips to so the parties' check of ``bound`` never trips on it.

    The parties check the fixed-point encoding (each value rounded by up to 2^-17, so the norm
    grows by up to sqrt(length) * 2^-17) and square it share by share (CrypTen truncates each of
    the K shares of each square: up to K units of 2^-16 either way, independent per value; 8
    standard deviations of their sum are allowed for)."""
    slack = 2.0**-16 * (1 + 8 * math.sqrt(parties * length))
    target = (math.sqrt(max(bound * bound - slack, 0.0)) - math.sqrt(length) * 2.0**-17) * (1 - 2.0**-20)
    if target <= bound / 2:
        raise Refusal("config", f"aggregation.norm_bound={bound:g} is too small to check over {length} values in "
                      f"the parties' fixed-point ring: raise it", key="aggregation.norm_bound")
    return target


def within_bound(delta: np.ndarray, bound: float | None, parties: int) -> np.ndarray:
    """``delta`` as this owner shares it: zeros if any value is not finite (NaN would otherwise
    decide the parties' verdict); with a ``bound``, scaled down to :func:`clip_target`."""
    delta = np.asarray(delta, np.float64)
    if not np.isfinite(delta).all():
        return np.zeros_like(delta)
    if bound is None:
        return delta
    target = clip_target(float(bound), delta.size, parties)
    scale = float(np.max(np.abs(delta), initial=0.0))  # the norm of a huge finite delta overflows: scale first
    if scale == 0.0:
        return delta
    norm = scale * float(np.linalg.norm(delta / scale))
    return delta if norm <= target else delta * (target / norm)


class PartyFailure(UserError):
    """A party did not answer in time, failed or refused; the round cannot be aggregated."""


class RoundRefused(PartyFailure):
    """The parties refused the request (a round they already took up, a bound they cannot check)."""


class CohortTooSmall(PartyFailure):
    """Fewer than ``aggregation.min_owners`` owners passed the parties' checks: nothing was revealed."""


class CryptenBackend(ServerHoldsGlobal):
    """Owners: ``protect`` (shares sealed to the parties). Server: ``validate``, ``combine`` (ask
    the parties), ``reveal`` (the aggregate the parties revealed)."""

    name = "crypten"
    server_can_reveal = True  # the coordinator receives the aggregate, never a single update
    server_sees_updates = False  # does the coordinator see single updates (and their norms, counts)?
    open_global = staticmethod(clear_global)

    def __init__(self, cfg: CryptenConfig | None, size: int | None = None, *,
                 party_keys: list[bytes] | None = None, run: str = "", keys=None) -> None:
        self.cfg, self.size = cfg or CryptenConfig(), size
        self.party_keys = party_keys or []
        # server: the parties remember the last round per run (a round is taken up once); owner: the
        # run its bundles are signed for
        self.run = run
        self.keys = keys  # owner: its identity.OwnerKeys, which sign its share bundles

    @classmethod
    def for_server(cls, cfg: CryptenConfig, size: int) -> "CryptenBackend":
        """The coordinator's side: it fetches the parties' public keys to hand to owners each round."""
        from fedveil.privacy.secagg.crypten.party import call  # lazy: import cycle

        addresses = cfg.party_addresses or []
        if len(addresses) != cfg.parties:
            raise UserError("aggregation.party_addresses must list every aggregator party (HOST:PORT each)")
        tls = coordinator_tls(cfg)
        keys = [call(a, "PublicKey", b"", timeout=30, tls=tls) for a in addresses]
        progress(f"crypten: {len(keys)} aggregator parties reachable; owners seal one share to each")
        # a fresh run id per coordinator start: the parties take each round of a run up once, and a
        # new run (or a resumed one) in the same place starts its own count
        return cls(cfg, size, party_keys=keys, run=secrets.token_hex(8))

    @classmethod
    def for_owner(cls, cfg: CryptenConfig, size: int, per_round: dict,
                  pinned_file: str | Path | None = None, owner_keys=None, run: str = "") -> "CryptenBackend":
        """The owner's side. With ``pinned_file`` (the owner's ``party-keys.json``), keys from the
        server that differ from the pinned ones are refused before anything is sealed;
        ``owner_keys`` (``identity.OwnerKeys``) sign its share bundles for ``run``."""
        keys = [bytes.fromhex(h) for h in str(per_round.get(wire.PARTY_KEYS, "")).split(",") if h]
        if pinned_file is not None and keys:
            check_pinned_party_keys(keys, pinned_file)
        return cls(cfg, size, party_keys=keys, run=run, keys=owner_keys)

    def round_config(self) -> dict[str, str]:
        """What owners need each round: the parties' public keys."""
        return {wire.PARTY_KEYS: ",".join(k.hex() for k in self.party_keys)}

    # --- owner side -------------------------------------------------------------------------
    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext) -> Protected:
        if len(self.party_keys) != self.cfg.parties:
            raise Refusal("keys", "this owner has no public keys for the aggregator parties; the server must send them")
        if self.keys is None:
            raise Refusal("keys", "this owner has no identity key to sign its shares with (identity.OwnerKeys)")
        if ctx.is_eval_pair:  # delta = [loss], weight its tokens: shared as a pair of count 1 (eval_pair.py)
            return eval_pair.protect(self, float(np.asarray(delta).reshape(-1)[0]), weight, ctx)
        delta = within_bound(delta, self.cfg.norm_bound, self.cfg.parties)
        if self.cfg.max_weight is not None:
            weight = min(float(weight), float(self.cfg.max_weight))
        sealed = seal_shares(encode_fixed(delta), ctx.owner, ctx.round, ctx.layout_digest, self.run, self.party_keys,
                             weight, self.cfg.shares)
        blobs = {f"share.{p}": blob for p, blob in enumerate(sealed)}
        # the floor the owner accepted (under dp=owner_level at least its t): the parties never reveal a sum of fewer
        blobs[BUNDLE] = sign_bundle([blobs[f"share.{p}"] for p in range(self.cfg.parties)], self.run, ctx.round,
                                    ctx.layout_digest, ctx.owner, self.keys.sign, min_owners=self.cfg.min_owners)
        return Protected(blobs=blobs)

    # --- server side ------------------------------------------------------------------------
    def validate(self, p: Protected) -> None:
        for party in range(self.cfg.parties):
            if not isinstance(p.blobs.get(f"share.{party}"), bytes):
                raise PayloadError(f"crypten payload lacks the share for party {party}")
        longest = max(len(p.blobs[f"share.{party}"]) for party in range(self.cfg.parties))
        if self.size is not None and longest < 8 * self.size:  # seeds are short; one share at least is full
            raise PayloadError(f"no share is long enough for {self.size} values ({longest} bytes at most)")
        if not isinstance(p.blobs.get(BUNDLE), bytes):
            raise PayloadError("crypten payload lacks the owner's signed share bundle")

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext) -> Combined:
        """Ask every party to aggregate; owners the parties dropped come back in ``excluded``.

        Raises :class:`PartyFailure` if a party fails or the parties disagree,
        :class:`RoundRefused` if they refuse the round (already taken up for this run: a replay),
        and :class:`CohortTooSmall` if fewer than ``aggregation.min_owners`` owners pass their
        checks: then nothing was revealed and the coordinator's round fails (by design: the
        alternative is revealing the update of one or two owners). Held-out pairs
        (``ctx.is_eval_pair``): the parties reveal their sum the same way (``eval_pair.py``).
        """
        owners = list(payloads)
        if ctx.is_eval_pair:
            return eval_pair.as_pair_sum(self._aggregate(eval_pair.request_meta(self, owners, ctx), payloads, ctx))
        meta = {"round": ctx.round, "clients": owners, "layout_digest": ctx.layout_digest, "length": self.size,
                "bound": self.cfg.norm_bound, "run": self.run, "min_owners": self.cfg.min_owners,
                "max_weight": self.cfg.max_weight}
        return self._aggregate(meta, payloads, ctx)

    def _aggregate(self, meta: dict, payloads: dict[str, Protected], ctx: RoundContext) -> Combined:
        from fedveil.privacy.secagg.crypten.party import call, decode_response, encode_request  # lazy: import cycle

        if not self.cfg.party_addresses:
            raise UserError("aggregation.party_addresses is not set: start the parties (fedveil-party) and list them")
        owners = meta["clients"]
        tls = coordinator_tls(self.cfg)

        def ask(party: int):
            request = encode_request(meta, [payloads[o].blobs[f"share.{party}"] for o in owners],
                                     [payloads[o].blobs[BUNDLE] for o in owners])
            try:
                return decode_response(
                    call(self.cfg.party_addresses[party], "Aggregate", request, self.cfg.party_timeout_s, tls=tls)
                )
            except Exception as exc:  # grpc.RpcError and friends: report them all below
                return exc

        with ThreadPoolExecutor(max_workers=self.cfg.parties) as pool:
            answers = list(pool.map(ask, range(self.cfg.parties)))
        failed = [f"party {i} at {self.cfg.party_addresses[i]} ({a.__class__.__name__})"
                  for i, a in enumerate(answers) if isinstance(a, Exception)]
        if failed:
            raise PartyFailure(f"aggregator {', '.join(failed)} failed or did not answer within "
                               f"{self.cfg.party_timeout_s:g} s; check that every party process is running")
        metas = [m for m, _ in answers]
        if any(m != metas[0] for m in metas) or any(not np.array_equal(answers[0][1], a[1]) for a in answers[1:]):
            raise PartyFailure("aggregator parties disagree on the revealed aggregate; refusing the round")
        verdict = metas[0]
        if verdict.get("refused"):
            raise RoundRefused(f"aggregator parties refused round {ctx.round}: {verdict['refused']}")
        excluded = {o: f"dropped by the aggregator parties: {status}"
                    for o, status in zip(owners, verdict["status"]) if status != "ok"}
        if verdict.get("below_min_owners"):
            dropped = {o: why for o, why in excluded.items() if not why.endswith(": unchecked")}
            raise CohortTooSmall(
                f"cohort below aggregation.min_owners={verdict['min_owners']}: {len(owners) - len(dropped)} of "
                f"{len(owners)} owners remained after the aggregator parties' checks "
                f"({'; '.join(f'{o}: {why}' for o, why in dropped.items()) or 'none dropped'}); "
                f"nothing was revealed and round {ctx.round} fails")
        payload = Protected(
            arrays={"weighted_sum": answers[0][1], "weight": np.array([metas[0]["weight"]], np.float64)}
        )
        return Combined(payload, excluded)

    def reveal(self, combined: Protected) -> Revealed:
        return Revealed(combined.arrays["weighted_sum"], float(combined.arrays["weight"][0]))
