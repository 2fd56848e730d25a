"""The owner's policy: what a data owner agrees to, whatever the coordinator asks.

The coordinator sends an experiment config with every instruction; an owner never takes its
privacy settings from it. It checks each instruction against its own :class:`OwnerPolicy` and
refuses a weaker one with one line naming the rule and the server's value, before any training
and before its epsilon ledger is touched.

Where the policy lives: deployment, a JSON file named in the SuperNode's node config
(``policy='/path/policy.json'``); simulation, ``<state dir>/policy.json``, written by the runner
from the ``owner_policy.*`` overrides before the federation starts (the runner plays every owner).
An owner without a policy file uses the defaults below (no backend or model pin, DP not required).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes

FILENAME = "policy.json"
BACKEND_NAMES = ("plain", "tenseal", "crypten")


class PolicyViolation(UserError):
    """The coordinator asked for something the owner's policy forbids; nothing was trained or spent."""


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

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allowed_backends) - set(BACKEND_NAMES))
        if unknown:
            raise UserError(f"owner_policy.allowed_backends has unknown {unknown}: choose from {list(BACKEND_NAMES)}")
        for key in ("max_epsilon", "max_delta", "min_noise_multiplier", "max_sample_rate"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise UserError(f"owner_policy.{key} must be > 0 (or null for no limit), got {value}")
        for key in ("max_rounds", "max_local_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"owner_policy.{key} must be >= 1 (or null), got {value}")

    def check(self, cfg: Any, layout_digest: str) -> None:
        """Refuse (:class:`PolicyViolation`) an experiment config this owner does not accept."""
        dp, agg = cfg.dp, cfg.aggregation
        if self.require_dp and dp.name == "off":
            self.refuse("require_dp=true", "dp=off")
        if agg.name not in self.allowed_backends:
            self.refuse(f"allowed_backends={self.allowed_backends}", f"aggregation={agg.name}")
        if self.model_digest and layout_digest != self.model_digest:
            self.refuse(f"model_digest={self.model_digest[:12]}", f"a model with adapter layout {layout_digest[:12]}")
        if self.max_rounds is not None and cfg.rounds > self.max_rounds:
            self.refuse(f"max_rounds={self.max_rounds}", f"rounds={cfg.rounds}")
        if self.max_local_steps is not None and cfg.train.local_steps > self.max_local_steps:
            self.refuse(f"max_local_steps={self.max_local_steps}", f"train.local_steps={cfg.train.local_steps}")
        if dp.name == "off":
            return
        if not dp.poisson_sampling:
            self.refuse("Poisson sampling (what the accountant assumes)", "dp.poisson_sampling=false")
        if self.max_epsilon is not None and dp.target_epsilon > self.max_epsilon:
            self.refuse(f"max_epsilon={self.max_epsilon:g}", f"dp.target_epsilon={dp.target_epsilon:g}")
        if self.max_delta is not None and dp.delta > self.max_delta:
            self.refuse(f"max_delta={self.max_delta:g}", f"dp.delta={dp.delta:g}")
        if self.max_sample_rate is not None and dp.sample_rate > self.max_sample_rate:
            self.refuse(f"max_sample_rate={self.max_sample_rate:g}", f"dp.sample_rate={dp.sample_rate:g}")
        if dp.noise_multiplier is not None:
            self.check_noise(dp.noise_multiplier)

    def check_noise(self, sigma: float) -> None:
        if self.min_noise_multiplier is not None and sigma < self.min_noise_multiplier:
            self.refuse(f"min_noise_multiplier={self.min_noise_multiplier:g}", f"a noise multiplier of {sigma:.4g}")

    @staticmethod
    def refuse(rule: str, asked: str) -> None:
        raise PolicyViolation(f"owner policy {rule}: the server asked for {asked}; the owner refuses "
                              "(its epsilon ledger is unchanged)")


def load_policy(path: str | Path | None) -> OwnerPolicy:
    """The policy in ``path`` (defaults where there is no file); a damaged file is an error, never ignored."""
    if path is None or not Path(path).exists():
        return OwnerPolicy()
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
            raise
        raise UserError(f"owner policy {path} is unreadable ({exc}); fix it (keys: {sorted(f.name for f in fields(OwnerPolicy))})") from exc


def write_policy(path: str | Path, policy: OwnerPolicy) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), (json.dumps(asdict(policy), indent=1, sort_keys=True) + "\n").encode())
