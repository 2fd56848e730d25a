"""The privacy/performance trade-off as configuration: pick the backend (and DP) from stated threats.

The user states what the federation trusts and can afford (:class:`PrivacyConfig`, the
``privacy.*`` keys); ``aggregation=auto`` asks :func:`choose` for the cheapest backend whose
declared :class:`~fedveil.privacy.secagg.Guarantees` cover the stated threats, and
``privacy.epsilon`` turns on DP-SGD with that target. The cost model (:func:`estimate`) gives the
exact payload bytes fedveil moves per round for each backend (the layouts of ``plain.py``,
``tenseal/ckks.py`` + ``tenseal/bfv.py`` and ``crypten/shares.py``), and a rough figure for the seconds each backend
adds (``calibration.json``, written by ``bench_secagg --calibrate``).

Free of Flower, like all of ``privacy/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from fedveil.core.disk import owner_id
from fedveil.core.errors import UserError
from fedveil.privacy.secagg import BACKENDS, COORDINATOR_THREATS

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
SEAL_OVERHEAD = 48  # libsodium sealed box: 32-byte ephemeral key + 16-byte MAC
SIGNATURE_BYTES = 64  # Ed25519
TENSEAL_TAGS = 64 + 32 + SIGNATURE_BYTES  # context id (hex SHA-256) + the ciphertext's SHA-256 + the owner's signature
FRAME = 4  # core.io.pack: a 4-byte length before each part


class Refusal(UserError):
    """No backend covers the stated threats (one line naming the assumption to relax)."""


def _auto_fields() -> list[tuple[str, Any, Any]]:
    names = {f.name for spec in BACKENDS.values() for f in fields(spec.config)} - {"name"}
    return [("name", str, field(default="auto"))] + [(n, Any, field(default=None)) for n in sorted(names)]


# ``aggregation=auto``: the planner picks the backend from ``privacy.*``. It holds every backend's keys, unset, so
# that the picked backend's can be typed (configs/schema.py refuses the keys the pick does not have).
AutoConfig = make_dataclass("AutoConfig", _auto_fields())


@dataclass
class PrivacyConfig:
    """What the federation trusts and can afford (read by ``aggregation=auto`` and ``fedveil plan``)."""

    coordinator: str = "curious"  # trusted | curious | malicious; curious: privacy on by default
    owner_collusion: bool = False  # may an owner collude with the coordinator?
    aggregator_parties: int = 0  # independent organisations able to run an aggregator party (crypten)
    epsilon: Optional[float] = None  # DP target per owner (sets dp=sample_level); None: keep dp as configured
    delta: Optional[float] = None  # DP delta with privacy.epsilon; None: dp.delta (1e-5)
    max_bytes_per_round: Optional[int] = None  # per owner, update up + global down
    max_seconds_per_round: Optional[float] = None  # the backend's added seconds per round (rough)

    def __post_init__(self) -> None:
        if self.coordinator not in COORDINATOR_THREATS:
            raise UserError(f"privacy.coordinator must be one of {list(COORDINATOR_THREATS)}, got '{self.coordinator}'")
        if isinstance(self.aggregator_parties, bool) or self.aggregator_parties < 0 or self.aggregator_parties == 1:
            raise UserError(f"privacy.aggregator_parties must be 0 (none) or >= 2 independent parties, "
                            f"got {self.aggregator_parties}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise UserError(f"privacy.epsilon must be > 0 (or null for no DP target), got {self.epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise UserError(f"privacy.delta must be in (0, 1) (or null for dp.delta), got {self.delta}")
        if self.delta is not None and self.epsilon is None:
            raise UserError("privacy.delta is set without privacy.epsilon: set privacy.epsilon too (or unset delta)")
        for key in ("max_bytes_per_round", "max_seconds_per_round"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"privacy.{key} must be > 0 (or null for no limit), got {value}")

    def threats(self) -> str:
        return (f"coordinator={self.coordinator}, owner_collusion={str(self.owner_collusion).lower()}, "
                f"aggregator_parties={self.aggregator_parties}")


# --- cost model ----------------------------------------------------------------------------------

def _varint_len(value: int) -> int:
    return max(1, math.ceil(value.bit_length() / 7))


@lru_cache(maxsize=None)
def tenseal_ciphertext_fixed(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...], scale_bits: int,
                             scheme: str = "ckks", plain_modulus_bits: int = 46) -> int:
    """Serialized bytes of one TenSEAL vector less the varint of its value count (calibrated or measured).

    At the default parameters this is the raw polynomials (2 x N x one 8-byte prime) plus 138 (CKKS)
    or 129 (BFV) bytes of SEAL/TenSEAL headers, whatever the values; with smaller primes SEAL's zstd
    compression makes it smaller and slightly data dependent, so other parameters are measured once
    with TenSEAL.
    """
    key = (f"{poly_modulus_degree}/{list(coeff_mod_bit_sizes)}/{scale_bits}" if scheme == "ckks"
           else f"bfv/{poly_modulus_degree}/{list(coeff_mod_bit_sizes)}/{plain_modulus_bits}")
    known = calibration().get("tenseal_ciphertext_fixed_bytes", {})
    if key in known:
        return int(known[key])
    import numpy as np
    import tenseal as ts

    rng = np.random.default_rng(0)
    if scheme == "bfv":
        from fedveil.privacy.secagg.tenseal.bfv import plain_modulus

        t = plain_modulus(poly_modulus_degree, plain_modulus_bits)
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=poly_modulus_degree, plain_modulus=t,
                         coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
        slots = poly_modulus_degree
        sizes = [len(ts.bfv_vector(ctx, rng.integers(-(t // 2), t // 2, slots).tolist()).serialize()) for _ in range(3)]
        return max(sizes) - _varint_len(slots)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** scale_bits
    slots = poly_modulus_degree // 2
    sizes = [len(ts.ckks_vector(ctx, (rng.standard_normal(slots) * 1e-2).tolist()).serialize()) for _ in range(3)]
    return max(sizes) - _varint_len(slots)


def tenseal_blob_bytes(agg: Any, values: int, kind: str = "update") -> int:
    """Exact bytes of a tenseal ciphertext blob (``core.io.pack`` framed) of ``values`` adapter values:
    an owner's ``update``, or a ``global`` it re-encrypts (BFV: header, ciphertexts, and for an
    update its sealed weight; CKKS: the ciphertexts, the weight in one extra slot)."""
    scheme = getattr(agg, "scheme", "ckks")
    fixed = tenseal_ciphertext_fixed(agg.poly_modulus_degree, tuple(agg.coeff_mod_bit_sizes), agg.scale_bits,
                                     scheme, getattr(agg, "plain_modulus_bits", 46))
    if scheme == "bfv":
        from fedveil.privacy.secagg.tenseal import bfv

        chunks = bfv.ciphertexts(values, agg.poly_modulus_degree)
        extra = FRAME + bfv.HEADER.size + (FRAME + bfv.COUNT_BOX if kind == "update" else 0)
        return extra + sum(FRAME + fixed + _varint_len(c) for c in chunks)
    slots = agg.poly_modulus_degree // 2
    total = values + 1  # the weight rides in one extra slot (1 for a global)
    return sum(FRAME + fixed + _varint_len(min(slots, total - i)) for i in range(0, total, slots))


@lru_cache(maxsize=1)
def calibration() -> dict:
    return json.loads(CALIBRATION_FILE.read_text()) if CALIBRATION_FILE.is_file() else {}


def crypten_header_bytes(values: int, party: int, round_: int = 1, owner: str = "client_0") -> int:
    """Length of the JSON header a crypten share is bound to (``shares.ShareHeader``)."""
    from fedveil.privacy.secagg.crypten.shares import ShareHeader

    return len(ShareHeader(round_, owner, party, "0" * 64, values).encode())


@dataclass
class Cost:
    """Bytes per round (exact payloads) and the backend's added seconds per round (rough).

    ``update_up``: what one owner uploads for its update (the backend's ``protect`` payload).
    ``global_down``: what one owner downloads of the global adapter per round (train + evaluate
    messages), in steady state; ``global_down_first``: in round 1 (tenseal: the evaluate message
    carries every accepted owner's signed update of the round, so it grows with the owners).
    ``reencrypt_up``: tenseal, what the one owner asked each round uploads besides (Enc(global) and
    its signature). ``party_in`` /
    ``party_out``: crypten, per party per round (every owner's share in, the float64 aggregate out;
    the parties' own MPC traffic is not counted). Flower's config and metric records add a few KB
    per message to all of these; they are not counted.
    """

    backend: str
    values: int
    owners: int
    update_up: int
    global_down: int
    global_down_first: int
    reencrypt_up: int = 0
    party_in: int = 0
    party_out: int = 0
    parties: int = 0
    seconds: float = 0.0  # rough: protect + aggregate + reveal, from calibration.json; training excluded

    @property
    def per_owner(self) -> int:
        """Update up + global down for one owner in a steady-state round (what the byte limit checks)."""
        return self.update_up + self.global_down

    @property
    def per_round(self) -> int:
        """All of a steady-state round: every owner's update and global, the re-encryption, the parties'."""
        return self.owners * self.per_owner + self.reencrypt_up + self.parties * (self.party_in + self.party_out)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_owner": self.per_owner, "per_round": self.per_round}


def update_bytes(backend: str, agg: Any, values: int, owner: str = "client_0", round_: int = 1) -> int:
    """Exact bytes of one owner's protected update (``Protected.nbytes`` of ``protect``)."""
    if backend == "plain":
        return 4 * values + 8  # fp32 delta + float64 weight
    if backend == "tenseal":
        return tenseal_blob_bytes(agg, values) + TENSEAL_TAGS
    if backend == "crypten":
        return (sum(crypten_share_bytes(values, p, round_, owner) for p in range(agg.parties))
                + crypten_bundle_bytes(agg.parties, round_, owner))
    raise UserError(f"aggregation '{backend}' is unknown: choose one of {sorted(BACKENDS)}")


def crypten_share_bytes(values: int, party: int, round_: int = 1, owner: str = "client_0") -> int:
    """One sealed share: sealed box of (4-byte header length, header, float64 count, int64 shares)."""
    return SEAL_OVERHEAD + 4 + crypten_header_bytes(values, party, round_, owner) + 8 + 8 * values


def crypten_bundle_bytes(parties: int, round_: int = 1, owner: str = "client_0", run: str = "") -> int:
    """The owner's signed bundle over its sealed shares (``shares.ShareBundle``: SHA-256 per party, Ed25519)."""
    from fedveil.privacy.secagg.crypten.shares import ShareBundle

    return len(ShareBundle(run, round_, "0" * 64, owner, (bytes(32),) * parties, bytes(64)).encode())


def estimate(backend: str, agg: Any, values: int, owners: int) -> Cost:
    """Bytes and rough seconds per round for ``backend`` (config ``agg``) on ``values`` adapter values."""
    up = update_bytes(backend, agg, values)
    seconds = rough_seconds(backend, values, owners)
    if backend == "tenseal":
        ct = up - TENSEAL_TAGS  # an owner's update blob (framed ciphertexts)
        glob = tenseal_blob_bytes(agg, values, "global")  # Enc(global), as an owner re-encrypts it
        signed = glob + SIGNATURE_BYTES + len(json.dumps({"round": 1, "signer": "client_0"}))  # + signature + claim
        ids = sorted(owner_id(i) for i in range(owners))  # the simulation's owner ids
        head = len(json.dumps({"round": 1, "owners": ids}))
        updates = FRAME + head + owners * (2 * FRAME + ct + SIGNATURE_BYTES)  # global_codec.RoundUpdates
        # round r >= 2: train sends the signed base (r-1); evaluate sends base + round r's signed updates;
        # round 1: train sends nothing (owners derive the initial adapter), evaluate round 1's updates
        return Cost(backend, values, owners, up, global_down=2 * signed + updates, global_down_first=updates,
                    reencrypt_up=glob + SIGNATURE_BYTES, seconds=seconds)
    down = 2 * 4 * values  # the fp32 global in the train and the evaluate message
    if backend == "crypten":
        parties = agg.parties
        share = up // parties
        return Cost(backend, values, owners, up, down, down, party_in=owners * share, party_out=8 * values,
                    parties=parties, seconds=seconds)
    return Cost(backend, values, owners, up, down, down, seconds=seconds)


def rough_seconds(backend: str, values: int, owners: int) -> float:
    """Seconds a backend adds to a round (protect + aggregate + reveal), from calibration.json's
    per-value rates; ROUGH (one machine, one model size), and training time is not included."""
    return sum(rough_phase_seconds(backend, values, owners).values())


def rough_phase_seconds(backend: str, values: int, owners: int) -> dict[str, float]:
    """:func:`rough_seconds` by phase, as metrics.jsonl names them (``protect``, ``aggregate``, ``reveal``):
    ``fixed + per_value * values`` from calibration.json (``aggregate`` per owner, times ``owners``)."""
    cal = calibration()
    rates = cal.get("seconds_per_value", {}).get(backend, {})
    fixed = cal.get("fixed_seconds", {}).get(backend, {})

    def phase(name: str) -> float:
        return fixed.get(name, 0.0) + values * rates.get(name, 0.0)

    return {"protect": phase("protect"), "aggregate": owners * phase("aggregate_per_owner"),
            "reveal": phase("reveal")}


def fit_phase_seconds(points: list[tuple[int, int, dict[str, float]]]) -> tuple[dict, dict]:
    """Fit calibration.json's ``fixed_seconds`` and ``seconds_per_value`` for one backend from
    ``(values, owners, measured seconds per phase)`` at two or more model sizes: least squares of
    ``fixed + per_value * values`` per phase (``aggregate`` per owner), both kept >= 0."""
    import numpy as np

    if len({v for v, _, _ in points}) < 2:
        raise ValueError("calibration needs runs at two or more adapter sizes")
    fixed, per_value = {}, {}
    for name, key in (("protect", "protect"), ("aggregate_per_owner", "aggregate"), ("reveal", "reveal")):
        x = np.array([float(v) for v, _, _ in points])
        y = np.array([m[key] / (o if key == "aggregate" else 1) for _, o, m in points])
        slope, intercept = np.polyfit(x, y, 1)
        slope = max(float(slope), 0.0)
        intercept = max(float(np.mean(y - slope * x)), 0.0)
        fixed[name], per_value[name] = float(f"{intercept:.3g}"), float(f"{slope:.3g}")
    return fixed, per_value


# --- the pick ------------------------------------------------------------------------------------

@dataclass
class Verdict:
    backend: str
    covered: bool
    why_not: list[str] = field(default_factory=list)
    cost: Optional[Cost] = None


@dataclass
class Plan:
    privacy: PrivacyConfig
    verdicts: list[Verdict]
    pick: Optional[str]
    reason: str  # why the pick, or the refusal line
    agg_values: dict[str, Any] = field(default_factory=dict)  # the resolved aggregation config

    def refuse(self) -> None:
        if self.pick is None:
            raise Refusal(self.reason)


def candidate_config(backend: str, privacy: PrivacyConfig, owners: int = 1) -> Any:
    """The config the planner would run ``backend`` with (crypten: K = privacy.aggregator_parties;
    tenseal: parameters for ``owners`` per round)."""
    cls = BACKENDS[backend].config
    if backend == "crypten":
        return cls(parties=max(2, privacy.aggregator_parties or 3))
    if backend == "tenseal":  # BFV's parameters are chosen for the cohort, as the run's are
        try:
            return cls(max_owners=owners)
        except UserError:  # no BFV set holds the cohort: priced as CKKS (the run's refusal names the limit)
            return cls(scheme="ckks", max_owners=owners)
    return cls()


def _threat_gaps(backend: str, privacy: PrivacyConfig, owners: int, resume: bool,
                 allowed: Optional[list[str]]) -> list[str]:
    spec = BACKENDS[backend]
    g = spec.guarantees
    gaps = []
    if not g.survives(privacy.coordinator):
        gaps.append(f"not against a {privacy.coordinator} coordinator: {g.reason(privacy.coordinator)}")
    if privacy.owner_collusion and not g.owner_collusion:
        gaps.append(f"not against owner collusion: {g.reason('owner_collusion')}")
    if g.parties and privacy.aggregator_parties < g.parties:
        gaps.append(f"needs >= {g.parties} independent aggregator parties (privacy.aggregator_parties="
                    f"{privacy.aggregator_parties})")
    if owners < g.min_owners:
        gaps.append(f"needs >= {g.min_owners} owners per round ({owners} train per round: num_clients, "
                    "or clients_per_round)")
    if resume and not spec.can_resume:
        gaps.append("cannot resume (a restart cannot reopen what its checkpoints hold)")
    if allowed is not None and backend not in allowed:
        gaps.append(f"not in the owners' policy allowed_backends={allowed}")
    return gaps


def _cost_gaps(cost: Cost, privacy: PrivacyConfig) -> list[str]:
    gaps = []
    if privacy.max_bytes_per_round is not None and cost.per_owner > privacy.max_bytes_per_round:
        gaps.append(f"moves {cost.per_owner:,} bytes per owner per round, over privacy.max_bytes_per_round="
                    f"{privacy.max_bytes_per_round:,}")
    if privacy.max_seconds_per_round is not None and cost.seconds > privacy.max_seconds_per_round:
        gaps.append(f"adds ~{cost.seconds:.2f} s per round, over privacy.max_seconds_per_round="
                    f"{privacy.max_seconds_per_round:g}")
    return gaps


NOMINAL_VALUES = 1 << 20  # orders the backends by cost when the adapter size is not known yet


def choose(privacy: PrivacyConfig, owners: int, values: Optional[int] = None, resume: bool = False,
           allowed: Optional[list[str]] = None, _relaxing: bool = False) -> Plan:
    """Each backend against the stated threats, and the cheapest that covers them (bytes per owner
    per round). Limits on bytes and seconds are checked only where ``values`` is known."""
    verdicts = []
    for name in BACKENDS:
        agg = candidate_config(name, privacy, owners)
        cost = estimate(name, agg, values or NOMINAL_VALUES, owners)
        gaps = _threat_gaps(name, privacy, owners, resume, allowed)
        if values is not None:
            gaps += _cost_gaps(cost, privacy)
        verdicts.append(Verdict(name, not gaps, gaps, cost if values is not None else None))
    order = {v.backend: estimate(v.backend, candidate_config(v.backend, privacy, owners), values or NOMINAL_VALUES,
                                 owners).per_owner for v in verdicts}
    covering = sorted((v for v in verdicts if v.covered), key=lambda v: order[v.backend])
    if covering:
        pick = covering[0].backend
        others = [v.backend for v in covering[1:]]
        reason = (f"{pick}: the cheapest backend covering {privacy.threats()}"
                  + (f" (also covering, at more bytes: {', '.join(others)})" if others else ""))
        agg_values = {"name": pick, **({"parties": privacy.aggregator_parties} if pick == "crypten" else {})}
        return Plan(privacy, verdicts, pick, reason, agg_values)
    return Plan(privacy, verdicts, None, "" if _relaxing else refusal(privacy, owners, values, resume, allowed))


def refusal(privacy: PrivacyConfig, owners: int, values: Optional[int], resume: bool,
            allowed: Optional[list[str]]) -> str:
    """One line: nothing covers the stated threats; which single assumption to relax, and to what."""
    from dataclasses import replace

    relaxations = []
    if privacy.owner_collusion:
        relaxations.append(("privacy.owner_collusion=false", replace(privacy, owner_collusion=False)))
    if privacy.aggregator_parties < 2:
        relaxations.append(("privacy.aggregator_parties=3",
                            replace(privacy, aggregator_parties=3)))
    weaker = COORDINATOR_THREATS[:COORDINATOR_THREATS.index(privacy.coordinator)]
    for c in reversed(weaker):
        relaxations.append((f"privacy.coordinator={c}", replace(privacy, coordinator=c)))
    for key in ("max_bytes_per_round", "max_seconds_per_round"):
        if getattr(privacy, key) is not None:
            relaxations.append((f"privacy.{key}=null", replace(privacy, **{key: None})))
    options = []
    for text, relaxed in relaxations:
        plan = choose(relaxed, owners, values, resume, allowed, _relaxing=True)
        if plan.pick:
            options.append(f"{text} (-> {plan.pick})")
    fix = f"relax {' or '.join(options)}" if options else "no single relaxation helps; see `fedveil plan`"
    return f"no aggregation backend covers {privacy.threats()}: {fix}"


def threat_table_markdown() -> str:
    """The threat table as docs/privacy.md shows it, generated from the declared guarantees."""
    mark = lambda ok: "yes" if ok else "no"  # noqa: E731
    rows = ["| backend | trusted coordinator | curious coordinator | malicious coordinator | owner colludes with "
            "coordinator | aggregator parties needed | update bytes per value, per receiver | caveats |",
            "|---|---|---|---|---|---|---|---|"]
    for name, spec in BACKENDS.items():
        g = spec.guarantees
        parties = f">= {g.parties} (K)" if g.parties else "none"
        rows.append(f"| `{name}` | {mark(g.survives('trusted'))} | {mark(g.survives('curious'))} | "
                    f"{mark(g.survives('malicious'))} | {mark(g.owner_collusion)} | {parties} | "
                    f"{g.bytes_per_value:g} B ({g.receivers}) | {'; '.join(g.caveats) or '—'} |")
    return "\n".join(rows)
