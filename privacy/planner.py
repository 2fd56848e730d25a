"""The privacy/performance trade-off as configuration: pick the backend (and DP) from stated threats.

The user states what the federation trusts and can afford (:class:`PrivacyConfig`, the
``privacy.*`` keys); ``aggregation=auto`` asks :func:`choose` for the cheapest backend whose
declared :class:`~fedveil.privacy.secagg.Guarantees` cover the stated threats, and
``privacy.epsilon`` turns on DP-SGD with that target. The cost model (:func:`estimate`) gives the
exact payload bytes fedveil moves per round for each backend (each backend prices its own:
``BackendSpec.cost``), and a rough figure for the seconds each backend adds (``calibration.json``,
written by ``bench_secagg --calibrate``).

Free of Flower, like all of ``privacy/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, make_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from fedveil.core.errors import UserError
from fedveil.privacy.secagg import BACKENDS, COORDINATOR_THREATS, backend_spec
from fedveil.privacy.secagg.base import Cost

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


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
    malicious_owners: bool = True  # may an owner poison (an update beyond the bounds)? tenseal's download form
    aggregator_parties: int = 0  # independent organisations able to run an aggregator party (crypten)
    epsilon: Optional[float] = None  # DP target per owner (sets dp=sample_level); None: keep dp as configured
    delta: Optional[float] = None  # DP delta with privacy.epsilon; None: dp.delta (1e-5)
    max_bytes_per_round: Optional[int] = None  # per owner: update (+ held-out pair, without DP) up + global down
    max_seconds_per_round: Optional[float] = None  # the backend's added seconds per round (rough)

    def __post_init__(self) -> None:
        if not isinstance(self.malicious_owners, bool):
            raise UserError(f"privacy.malicious_owners must be true or false, got {self.malicious_owners!r}")
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

@lru_cache(maxsize=1)
def calibration() -> dict:
    return json.loads(CALIBRATION_FILE.read_text()) if CALIBRATION_FILE.is_file() else {}


def estimate(backend: str, agg: Any, values: int, owners: int, *, dp_on: bool, carried: bool = False) -> Cost:
    """Bytes and rough seconds per round for ``backend`` (config ``agg``) on ``values`` adapter values:
    the backend's own exact bytes (``BackendSpec.cost``; without DP, ``dp_on=False``, they include the
    owners' held-out pairs; ``carried``: ``eval_in_train``, each round's evaluation in the next round's
    train message) and the seconds calibration.json gives."""
    cost = backend_spec(backend).cost(agg, values, owners, calibration(), dp_on=dp_on, carried=carried)
    return replace(cost, seconds=rough_seconds(backend, values, owners))


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


def download_form(privacy: PrivacyConfig) -> tuple[str, bool]:
    """(form, each update range-checked) for the stated threats (``tenseal/cost.py``'s forms): the sum
    alone where neither the coordinator nor any owner is malicious; otherwise the verifier committee,
    which range-checks every update unless ``privacy.malicious_owners=false``."""
    if privacy.coordinator != "malicious" and not privacy.malicious_owners:
        return "sum", False
    return "committee", privacy.malicious_owners


def download_forms(backend: str, agg: Any, values: int, owners: int, *, dp_on: bool,
                   carried: bool = False) -> dict[str, Cost]:
    """Each download form's exact bytes where a backend has several (``BackendSpec.variants``; tenseal),
    else {}: ``Cost.mean_down`` / ``max_down`` say what owners download on average and at most."""
    spec = backend_spec(backend)
    return spec.variants(agg, values, owners, calibration(), dp_on=dp_on, carried=carried) if spec.variants else {}


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
    """The config the planner prices ``backend`` with (``BackendSpec.priced_config``: e.g. crypten's
    K = privacy.aggregator_parties, tenseal's parameters for ``owners`` per round; tenseal's download form
    ``auto``, priced as ``every``: the most, what any round may fall back to; each form: ``download_forms``)."""
    spec = backend_spec(backend)
    return spec.priced_config(owners, privacy.aggregator_parties) if spec.priced_config else spec.config()


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
           allowed: Optional[list[str]] = None, _relaxing: bool = False, *, dp_on: bool,
           carried: bool = False) -> Plan:
    """Each backend against the stated threats, and the cheapest that covers them (bytes per owner
    per steady-state round). Limits on bytes and seconds are checked only where ``values`` is known.
    ``dp_on``: the run trains with DP (then no held-out pair travels; without DP its bytes count);
    ``carried``: ``eval_in_train`` (one global down a round but the last: ``Cost.last_per_owner``)."""
    verdicts, order = [], {}
    for name in BACKENDS:
        cost = estimate(name, candidate_config(name, privacy, owners), values or NOMINAL_VALUES, owners,
                        dp_on=dp_on, carried=carried)
        gaps = _threat_gaps(name, privacy, owners, resume, allowed)
        if values is not None:
            gaps += _cost_gaps(cost, privacy)
        verdicts.append(Verdict(name, not gaps, gaps, cost if values is not None else None))
        order[name] = cost.per_owner
    covering = sorted((v for v in verdicts if v.covered), key=lambda v: order[v.backend])
    if covering:
        pick = covering[0].backend
        others = [v.backend for v in covering[1:]]
        reason = (f"{pick}: the cheapest backend covering {privacy.threats()}"
                  + (f" (also covering, at more bytes: {', '.join(others)})" if others else ""))
        agg_values = {"name": pick, **BACKENDS[pick].picked_values(privacy.aggregator_parties)}
        return Plan(privacy, verdicts, pick, reason, agg_values)
    return Plan(privacy, verdicts, None,
                "" if _relaxing else refusal(privacy, owners, values, resume, allowed, dp_on=dp_on,
                                                 carried=carried))


def refusal(privacy: PrivacyConfig, owners: int, values: Optional[int], resume: bool,
            allowed: Optional[list[str]], *, dp_on: bool, carried: bool = False) -> str:
    """One line: nothing covers the stated threats; which single assumption to relax, and to what."""
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
        plan = choose(relaxed, owners, values, resume, allowed, _relaxing=True, dp_on=dp_on, carried=carried)
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


COST_TABLE_VALUES = 16_384  # the tiny adapter's values (experiments/plan.py adapter_values, model=tiny)
COST_TABLE_OWNERS = 100


def cost_table_markdown(values: int = COST_TABLE_VALUES, owners: int = COST_TABLE_OWNERS) -> str:
    """The cost table as docs/backends.md shows it, generated from the backends' declared costs
    (``BackendSpec.cost`` and ``variants``): bytes up and down per owner per round, under DP, ``owners`` per
    round, each evaluation carried in the next round's train message (``eval_in_train=true``, the default) and
    apart; tenseal by download form (a committee of the config's size: outside it, a member, the mean)."""
    privacy = PrivacyConfig(aggregator_parties=3)  # crypten priced with 3 parties

    def priced(name: str, carried: bool) -> tuple[Cost, dict[str, Cost]]:
        agg = candidate_config(name, privacy, owners)
        return (estimate(name, agg, values, owners, dp_on=True, carried=carried),
                download_forms(name, agg, values, owners, dp_on=True, carried=carried))

    plain = {mode: priced("plain", mode)[0].global_down for mode in (True, False)}
    rows = ["| backend | form | up per owner | down per owner, carried | down per owner, apart | down vs plain, "
            "carried (apart) |", "|---|---|---|---|---|---|"]

    def row(name: str, form: str, up: int, carried: float, apart: float) -> str:
        return (f"| `{name}` | {form} | {up:,} B | {carried:,.0f} B | {apart:,.0f} B | "
                f"x{carried / plain[True]:.2f} (x{apart / plain[False]:.2f}) |")

    for name in BACKENDS:
        (carried, forms), (apart, forms_apart) = priced(name, True), priced(name, False)
        if not forms:
            rows.append(row(name, "—", carried.update_up, carried.global_down, apart.global_down))
            continue
        for form, c in forms.items():
            a, up = forms_apart[form], c.update_up + c.reveal_up
            if not c.committee:
                rows.append(row(name, f"`{form}`", up, c.global_down,
                                a.global_down))
                continue
            label = f"`{form}` of {c.committee}"
            rows.append(row(name, f"{label}, outside it", up, c.global_down, a.global_down))
            rows.append(row(name, f"{label}, a member", up + c.committee_up, c.committee_down, a.committee_down))
            rows.append(row(name, f"{label}, mean over owners", up, c.mean_down, a.mean_down))
    return "\n".join(rows)
