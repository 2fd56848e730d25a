"""The owner's policy: what a data owner agrees to, whatever the coordinator asks.

The coordinator sends an experiment config with every instruction; an owner never takes its
privacy settings from it. It checks each instruction against its own :class:`OwnerPolicy` and
refuses a weaker one with one line naming the rule and the server's value, before any training
and before its epsilon ledger is touched.

Where the policy lives: deployment, a JSON file named in the SuperNode's node config
(``policy='/path/policy.json'``); simulation, ``<state dir>/policy.json``, written by the runner
from the ``owner_policy.*`` overrides before the federation starts (the runner plays every owner).
An owner whose policy file is not named uses the defaults below (no backend or model pin, DP not
required); a policy file that is named but missing or unreadable stops the owner (it fails closed).
Every refusal is a :class:`~fedveil.core.errors.Refusal` naming the policy key only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from fedveil.core.errors import Refusal, UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.privacy.secagg.tenseal.config import MIN_COMMITTEE_SIZE

FILENAME = "policy.json"
BACKEND_NAMES = ("plain", "tenseal", "crypten")


# Larger than any |value| of a LoRA adapter in training (LoRA B starts at 0, A at ~1/sqrt(rank); the
# updates are small steps): a global beyond it is a crafted one. It also keeps a float32 forward
# pass from overflowing on a bounded input unless a crafted global aims at it (DP-SGD zeroes what
# still does).
MAX_GLOBAL_ABS = 100.0
# Evaluate messages per owner and round: the federation sends one (round 0 included), a resumed
# round one more; more are free probes of the owner's data, refused.
MAX_EVALUATES_PER_ROUND = 3
# Held-out examples an owner evaluates under DP, whatever its held-out count (drawn with replacement).
DP_EVAL_EXAMPLES = 32


class PolicyViolation(Refusal):
    """The coordinator asked for something the owner's policy forbids; nothing was trained or spent.
    Its code is ``policy`` and its one public parameter the policy key (``rule``)."""

    def __init__(self, key: str, line: str) -> None:
        super().__init__("policy", line, rule=key)


@dataclass
class OwnerPolicy:
    """One owner's rules. ``None`` means no limit."""

    require_dp: bool = False  # refuse dp=off
    max_epsilon: Optional[float] = None  # the owner's cap: its ledger budget; a larger dp.target_epsilon is refused
    max_delta: Optional[float] = None  # refuse a larger dp.delta (delta < 1/n is always required)
    min_noise_multiplier: Optional[float] = None  # refuse a planned or explicit sigma below this
    max_sample_rate: Optional[float] = None  # refuse a larger dp.sample_rate
    allowed_backends: list[str] = field(default_factory=lambda: list(BACKEND_NAMES))
    model_digest: str = ""  # adapter layout digest the owner accepts ("" = any model)
    max_rounds: Optional[int] = None
    max_local_steps: Optional[int] = None
    max_global_abs: float = MAX_GLOBAL_ABS  # refuse a global with a larger |value| (privacy/inputs.py)
    max_evaluates_per_round: int = MAX_EVALUATES_PER_ROUND
    dp_eval_examples: int = DP_EVAL_EXAMPLES  # under DP: evaluation's fixed, public number of examples
    max_length: Optional[int] = None  # refuse any other data.max_length (its data checks then never vary)
    # tenseal: may other owners poison? true: a round's sum is taken only with a verifier committee's
    # certificate over range-checked updates (or as every signed update, checked here); false: also the
    # coordinator's sum alone (aggregation.download=sum)
    malicious_owners: bool = True
    # tenseal: the fewest committee members this owner accepts (aggregation.committee_size comes from the
    # coordinator's run config): c colluding members certify any sum, so grinding succeeds with ~(m/n)^c
    min_committee_size: int = MIN_COMMITTEE_SIZE
    # dp=owner_level (the unit is the owner's whole dataset; its own budget, in its own ledger): the cap on
    # its epsilon, the least noise multiplier (units of dp.clip_norm), the highest rate q at which it joins a
    # round, the floor on t (a run config may raise dp.min_honest_owners, never lower it; crypten's
    # aggregation.min_owners must reach it), and whether it may claim amplification by its own sampling (q < 1)
    owner_level_max_epsilon: Optional[float] = None
    owner_level_min_noise_multiplier: Optional[float] = None
    owner_level_max_sample_rate: Optional[float] = None
    min_honest_owners: int = 3
    allow_amplification: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allowed_backends) - set(BACKEND_NAMES))
        if unknown:
            raise UserError(f"owner_policy.allowed_backends has unknown {unknown}: choose from {list(BACKEND_NAMES)}")
        for key in ("max_epsilon", "max_delta", "min_noise_multiplier", "max_sample_rate", "owner_level_max_epsilon",
                    "owner_level_min_noise_multiplier", "owner_level_max_sample_rate"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"owner_policy.{key} must be > 0 (or null for no limit), got {value}")
        if not self.max_global_abs > 0:
            raise UserError(f"owner_policy.max_global_abs must be > 0, got {self.max_global_abs}")
        if isinstance(self.min_committee_size, bool) or not isinstance(self.min_committee_size, int) or \
                self.min_committee_size < MIN_COMMITTEE_SIZE:
            raise UserError(f"owner_policy.min_committee_size must be an integer >= {MIN_COMMITTEE_SIZE} (one member "
                            f"alone could certify any sum), got {self.min_committee_size}")
        if isinstance(self.min_honest_owners, bool) or not isinstance(self.min_honest_owners, int) or \
                self.min_honest_owners < 2:
            raise UserError(f"owner_policy.min_honest_owners must be an integer >= 2, got {self.min_honest_owners!r}")
        for key in ("max_rounds", "max_local_steps", "max_evaluates_per_round", "dp_eval_examples", "max_length"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"owner_policy.{key} must be >= 1 (or null), got {value}")

    def check(self, cfg: Any, layout_digest: str) -> None:
        """Refuse (:class:`PolicyViolation`) an experiment config this owner does not accept."""
        dp, agg = cfg.dp, cfg.aggregation
        if self.require_dp and dp.name == "off":
            self.refuse("require_dp", "require_dp=true", "dp=off")
        if agg.name not in self.allowed_backends:
            self.refuse("allowed_backends", f"allowed_backends={self.allowed_backends}", f"aggregation={agg.name}")
        if self.model_digest and layout_digest != self.model_digest:
            self.refuse(
                "model_digest",
                f"model_digest={self.model_digest[:12]}",
                f"a model with adapter layout {layout_digest[:12]}",
            )
        if self.max_rounds is not None and cfg.rounds > self.max_rounds:
            self.refuse("max_rounds", f"max_rounds={self.max_rounds}", f"rounds={cfg.rounds}")
        if self.max_local_steps is not None and cfg.train.local_steps > self.max_local_steps:
            self.refuse(
                "max_local_steps",
                f"max_local_steps={self.max_local_steps}",
                f"train.local_steps={cfg.train.local_steps}",
            )
        if self.max_length is not None and cfg.data.max_length != self.max_length:
            self.refuse("max_length", f"max_length={self.max_length}", f"data.max_length={cfg.data.max_length}")
        self.check_committee(agg)
        if dp.name == "off":
            return
        if dp.name == "owner_level":
            self.check_owner_level(dp, agg)
            return
        if not dp.poisson_sampling:
            self.refuse(
                "poisson_sampling", "Poisson sampling (what the accountant assumes)", "dp.poisson_sampling=false"
            )
        if self.max_epsilon is not None and dp.target_epsilon > self.max_epsilon:
            self.refuse("max_epsilon", f"max_epsilon={self.max_epsilon:g}", f"dp.target_epsilon={dp.target_epsilon:g}")
        self.check_delta(dp)
        if self.max_sample_rate is not None and dp.sample_rate > self.max_sample_rate:
            self.refuse(
                "max_sample_rate", f"max_sample_rate={self.max_sample_rate:g}", f"dp.sample_rate={dp.sample_rate:g}"
            )
        if dp.noise_multiplier is not None:
            self.check_noise(dp.noise_multiplier)

    def check_delta(self, dp: Any) -> None:
        if self.max_delta is not None and dp.delta > self.max_delta:
            self.refuse("max_delta", f"max_delta={self.max_delta:g}", f"dp.delta={dp.delta:g}")

    def check_owner_level(self, dp: Any, agg: Any) -> None:
        """dp=owner_level against this owner's rules for that unit; the resolved noise where the config has it
        (the owner refuses an unresolved one before its data: client/owner_level.py)."""
        if dp.min_honest_owners < self.min_honest_owners:
            self.refuse("min_honest_owners", f"min_honest_owners={self.min_honest_owners}",
                        f"dp.min_honest_owners={dp.min_honest_owners}")
        floor = getattr(agg, "min_owners", None)
        if floor is not None and floor < max(dp.min_honest_owners, self.min_honest_owners):
            self.refuse("min_honest_owners", f"min_honest_owners={max(dp.min_honest_owners, self.min_honest_owners)} "
                        "(the parties' floor must reach it)", f"aggregation.min_owners={floor}")
        self.check_delta(dp)
        cap = self.owner_level_max_epsilon
        if cap is not None and dp.target_epsilon > cap:
            self.refuse("owner_level_max_epsilon", f"owner_level_max_epsilon={cap:g}",
                        f"dp.target_epsilon={dp.target_epsilon:g}")
        top = self.owner_level_max_sample_rate
        if top is not None and dp.sample_rate > top:
            self.refuse("owner_level_max_sample_rate", f"owner_level_max_sample_rate={top:g}",
                        f"dp.sample_rate={dp.sample_rate:g}")
        if dp.sample_rate < 1 and not self.allow_amplification:
            self.refuse("allow_amplification", "allow_amplification=false", f"dp.sample_rate={dp.sample_rate:g} < 1")
        least = self.owner_level_min_noise_multiplier
        for sigma in (dp.noise_multiplier, dp.sigma if dp.gamma and dp.mu else None):
            if least is not None and sigma is not None and sigma < least:
                self.refuse("owner_level_min_noise_multiplier", f"owner_level_min_noise_multiplier={least:g}",
                            f"a noise multiplier of {sigma:.4g}")

    def check_committee(self, agg: Any) -> None:
        """tenseal: the committee's size against this owner's floor (checked whatever the download form: the
        coordinator could send a certified round in any), and the sum alone only if owners are trusted."""
        size = getattr(agg, "committee_size", None)
        if size is not None and size < self.min_committee_size:
            self.refuse("min_committee_size", f"min_committee_size={self.min_committee_size}",
                        f"aggregation.committee_size={size}")
        if getattr(agg, "download", None) == "sum" and self.malicious_owners:
            self.refuse("malicious_owners", "malicious_owners=true (a sum only with a committee's certificate)",
                        "aggregation.download=sum")

    def check_noise(self, sigma: float) -> None:
        if self.min_noise_multiplier is not None and sigma < self.min_noise_multiplier:
            self.refuse(
                "min_noise_multiplier",
                f"min_noise_multiplier={self.min_noise_multiplier:g}",
                f"a noise multiplier of {sigma:.4g}",
            )

    @staticmethod
    def refuse(key: str, rule: str, asked: str) -> None:
        raise PolicyViolation(key, f"owner policy {rule}: the server asked for {asked}; the owner refuses "
                                   "(its epsilon ledger is unchanged)")


def load_policy(path: str | Path | None, named: bool = False) -> OwnerPolicy:
    """The policy in ``path``: the defaults where there is no file and the file was not ``named``
    (simulation's ``<state dir>/policy.json``); a named file that is missing, or any damaged file,
    is a :class:`Refusal` (code ``config``), never ignored."""
    if path is None or (not named and not Path(path).exists()):
        return OwnerPolicy()
    if not Path(path).is_file():
        raise Refusal("config", f"owner policy {path} does not exist; the owner will not run without the policy it "
                      "names: create it or name the right file", key="policy")
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        known = {f.name for f in fields(OwnerPolicy)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise KeyError(f"unknown key {unknown[0]!r}")
        return OwnerPolicy(**raw)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, UserError):
            raise Refusal("config", str(exc), key="policy") from exc
        raise Refusal(
            "config",
            f"owner policy {path} is unreadable ({exc}); fix it (keys: {sorted(f.name for f in fields(OwnerPolicy))})",
            key="policy",
        ) from exc


def write_policy(path: str | Path, policy: OwnerPolicy) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), (json.dumps(asdict(policy), indent=1, sort_keys=True) + "\n").encode())
