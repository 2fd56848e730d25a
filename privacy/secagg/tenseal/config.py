"""``tenseal``'s parameters: the config, its 128-bit checks, and what a run resolves for what it left null.

BFV's parameters are chosen for the cohort unless the user sets them: ``max_owners`` (the most
updates summed in a round: ``clients_per_round``, else ``num_clients``) picks the cheapest 128-bit
ring and the largest plain modulus that sums that many updates exactly (``bfv.choose``). The
owners' bounds (``max_weight``, ``value_bound``, ``norm_bound``, ``global_bound``) are public
values of the run config: owners clamp to them before encrypting and check every update of a
round against them before adding it (``checks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fedveil.core.console import progress
from fedveil.core.errors import UserError
from fedveil.privacy.dp.owner_level_plan import IntegerDomain
from fedveil.privacy.secagg.tenseal import bfv

# Largest total coefficient modulus (bits) for 128-bit classical security, by ring degree N
# (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

SCHEMES = ("bfv", "ckks")
DEFAULT_MAX_OWNERS = 50  # TensealConfig built directly (tests, planner); a run resolves it to the cohort
CKKS_RING = (4096, [60, 49])  # CKKS's ring and moduli where the config leaves them null
# The global starts within 1 (LoRA: kaiming-uniform A, bound 1/sqrt(fan_in); B zero), and each round's mean
# delta moves a value by at most value_bound (owners clamp to it): its public bound after `rounds` rounds.
GLOBAL_START = 1.0
DIRECT_ROUNDS = 100  # a TensealConfig built directly (tests) bounds the global for this many rounds


# The verifier committee's default size: 2 keeps the mean download near 4x plain's (each member downloads
# the whole round); 3 costs ~5x at a cohort of 100 (docs/privacy.md, "tenseal's verifier committee")
COMMITTEE_SIZE = 2
MIN_COMMITTEE_SIZE = 2  # one member alone could certify any sum; owners refuse fewer (tenseal/committee.py)
# How owners download a round (tenseal/committee.py; priced by tenseal/cost.py:variant): every signed update,
# a verifier committee's certified sum, or the coordinator's sum alone; auto: committee where
# privacy.malicious_owners=true, else sum (:func:`resolve`)
DOWNLOADS = ("every", "committee", "sum")


@dataclass
class TensealConfig:
    """Parameters of ``tenseal``. Defaults: BFV (``bfv.py``: two fixed-point digits per slot, ~8 bytes
    per value), addition only, 128-bit security; ``scheme=ckks``: CKKS at ~32 bytes per value.

    ``None``: chosen or resolved. ``poly_modulus_degree``, ``coeff_mod_bit_sizes`` and (BFV)
    ``plain_modulus_bits``: the cheapest 128-bit set that sums ``max_owners`` updates exactly (CKKS:
    N=4096, [60, 49]). The run (:func:`resolve`) sets ``max_owners`` to the cohort, ``max_weight`` to 1
    under DP (else 1024), ``value_bound`` and ``norm_bound`` to train.update_clip_norm (else 1.0 and no
    norm check) and ``global_bound`` to ``1 + rounds * value_bound``. CKKS only: ``scale_bits``.
    """

    name: str = "tenseal"
    scheme: str = "bfv"
    poly_modulus_degree: Optional[int] = None
    coeff_mod_bit_sizes: Optional[list[int]] = None
    scale_bits: int = 40
    plain_modulus_bits: Optional[int] = None
    max_owners: Optional[int] = None
    max_weight: Optional[float] = None
    value_bound: Optional[float] = None
    norm_bound: Optional[float] = None
    global_bound: Optional[float] = None
    key_holder: str = ""  # owner id (client_K) that creates the tenseal context ("" = smallest)
    # owners that check every update and sign the sum (tenseal/committee.py; form committee)
    committee_size: int = COMMITTEE_SIZE
    download: str = "auto"  # every | committee | sum | auto (resolved by the run: see DOWNLOADS)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UserError(f"aggregation.scheme must be one of {list(SCHEMES)}, got '{self.scheme}'")
        if self.download not in (*DOWNLOADS, "auto"):
            raise UserError(f"aggregation.download must be one of {[*DOWNLOADS, 'auto']}, got '{self.download}'")
        size = self.committee_size
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_COMMITTEE_SIZE:
            raise UserError(f"aggregation.committee_size must be an integer >= {MIN_COMMITTEE_SIZE} (owners on the "
                            f"verifier committee; owners refuse fewer), got {size}")
        for key in ("max_owners", "max_weight", "value_bound", "norm_bound", "global_bound"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise UserError(f"aggregation.{key} must be > 0 (or null: resolved by the run), got {value}")
        self._check_ring(self.poly_modulus_degree, self.coeff_mod_bit_sizes)
        if self.scheme == "bfv" and self.plain_modulus_bits is None:
            self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.plain_modulus_bits = bfv.choose(
                self.owners, self.poly_modulus_degree, self.coeff_mod_bit_sizes)
        self.poly_modulus_degree = self.poly_modulus_degree or CKKS_RING[0]
        self.coeff_mod_bit_sizes = list(self.coeff_mod_bit_sizes or CKKS_RING[1])
        self._check_ring(self.poly_modulus_degree, self.coeff_mod_bit_sizes)
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if self.scheme == "ckks":
            if not 20 <= self.scale_bits < bits[0]:
                raise UserError(f"aggregation.scale_bits must be >= 20 and below the first prime ({bits[0]} bits), "
                                f"got {self.scale_bits}")
            return
        bfv.check(n, bits, self.plain_modulus_bits, self.owners)

    @staticmethod
    def _check_ring(n: Optional[int], bits: Optional[list[int]]) -> None:
        if n is not None and n not in MAX_COEFF_BITS_128:
            raise UserError(f"aggregation.poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n}")
        if bits is None:
            return
        if len(bits) < 2:
            raise UserError("aggregation.coeff_mod_bit_sizes needs at least two primes (data + special); e.g. [60, 49]")
        top = MAX_COEFF_BITS_128[n or CKKS_RING[0]]
        if n is not None and sum(bits) > top:
            raise UserError(f"aggregation.coeff_mod_bit_sizes {list(bits)} total {sum(bits)} bits: over {top} bits is "
                            f"below 128-bit security at N={n}; raise aggregation.poly_modulus_degree or use fewer bits")

    @property
    def owners(self) -> int:
        return int(self.max_owners or DEFAULT_MAX_OWNERS)

    @property
    def weight_bound(self) -> float:
        return float(self.max_weight or 1.0)

    @property
    def bound(self) -> float:
        return float(self.value_bound or 1.0)

    @property
    def levels(self) -> int:
        """BFV: the largest ``|q|`` one owner sends (``bfv.per_owner_levels``)."""
        return bfv.per_owner_levels(self.poly_modulus_degree, self.plain_modulus_bits, self.owners)

    @property
    def step(self) -> float:
        """BFV: the quantization step of a weighted update value (``w * delta`` is sent as multiples of it)."""
        return self.weight_bound * self.bound / self.levels

    @property
    def global_limit(self) -> float:
        """The public bound on a global value: what the BFV global's step is made for."""
        return float(self.global_bound or GLOBAL_START + DIRECT_ROUNDS * self.bound)

    @property
    def global_step(self) -> float:
        """BFV: the step of the re-encrypted global, from public values only (never from the global itself)."""
        return self.global_limit / ((bfv.radix(self.poly_modulus_degree, self.plain_modulus_bits) - 1) // 2)


def resolve(agg: dict, participants: int, dp_on: bool, update_clip_norm: Optional[float], rounds: int,
            malicious_owners: bool = True) -> dict:
    """The run's values for what the config left null (and ``download=auto``: ``committee`` where
    ``malicious_owners``, the run's ``privacy.malicious_owners``, else ``sum``): ``max_owners`` = the
    cohort (the owners that train per round: what one sum holds), ``max_weight`` = 1 under DP (every
    weight is 1, a public value) else 1024 examples, ``value_bound`` = train.update_clip_norm (a
    coordinate never exceeds the L2 norm) else 1.0, ``norm_bound`` = train.update_clip_norm,
    ``global_bound`` = ``1 + rounds * value_bound``. A ``max_owners`` below the cohort is refused (their
    sum is what must not overflow)."""
    agg = dict(agg)
    if agg.get("download", "auto") == "auto":  # what owners are told in the run config, never "auto"
        agg["download"] = "committee" if malicious_owners else "sum"
    if agg.get("max_owners") is None:
        agg["max_owners"] = participants
    if agg.get("max_weight") is None:
        agg["max_weight"] = 1.0 if dp_on else 1024.0
    if agg.get("value_bound") is None:
        agg["value_bound"] = float(update_clip_norm) if update_clip_norm is not None else 1.0
    if agg.get("norm_bound") is None and update_clip_norm is not None:
        agg["norm_bound"] = float(update_clip_norm)
    if agg.get("global_bound") is None and isinstance(agg["value_bound"], (int, float)):
        agg["global_bound"] = GLOBAL_START + rounds * float(agg["value_bound"])
    if isinstance(agg["max_owners"], int) and agg["max_owners"] < participants:
        raise UserError(f"aggregation.max_owners={agg['max_owners']} is below the {participants} owners that train per "
                        "round: their sum could overflow; raise aggregation.max_owners (or set it to null)")
    return agg


def integers(cfg: TensealConfig) -> Optional[IntegerDomain]:
    """``dp=owner_level``'s integer domain under BFV (None under CKKS, which sums approximately).

    An owner's noised integer update is BFV's update at step 1 (``max_weight`` 1, ``value_bound`` =
    ``levels``: ``bfv.py``), one signed digit per value: digits sum exactly while every digit of the
    sum stays within ``(-R/2, R/2)``, ``R = isqrt(t)`` the radix of BFV's plain modulus ``t`` (a slot
    holds two digits, so one value gets about half of ``t``'s bits: 23 of 46). That is the modulus the
    wrap bound takes. A per-update bound (integer units, L2) is checkable where it is within the
    ``levels`` one owner may send per digit (``checks.py`` refuses a larger digit, and the sum of
    ``max_owners`` such digits cannot leave the range): each value is within the L2 norm, so an
    honest noised update within the bound is never clamped, and the owners' norm check takes the
    bound itself (``norm_bound``, at step 1)."""
    if cfg.scheme != "bfv":
        return None
    levels = cfg.levels
    return IntegerDomain(modulus=bfv.radix(cfg.poly_modulus_degree, cfg.plain_modulus_bits),
                         checkable=lambda bound, dim: bound <= levels)


def integer_values(cfg: TensealConfig, bound: float, gamma: float, sample_rate: float, rounds: int) -> None:
    """Set what ``dp=owner_level`` needs of ``cfg`` (the runner, once; owners check it: ``client/owner_level.py``):
    integers at step 1 (``max_weight`` 1, ``value_bound`` = ``levels``), the owners' norm check at ``bound``
    (integer units), and the global's public bound for means of noised integer sums: each owner's digits are
    within ``levels`` (checked), so a round's mean, the sum over ``gamma`` and ``q`` times the owners summed,
    moves a value by at most ``levels / (gamma q)``."""
    cfg.max_weight, cfg.value_bound, cfg.norm_bound = 1.0, float(cfg.levels), float(bound)
    cfg.global_bound = GLOBAL_START + rounds * cfg.levels / (gamma * sample_rate)


def clamp_notice(weight: float, delta: np.ndarray, cfg: TensealConfig) -> Optional[str]:
    """The owner's console line when tenseal's bounds change what it sends, or None.

    Owners clamp weights to ``max_weight`` and values to ``+-value_bound`` (BFV's fixed point holds no
    more, and every owner checks every update against them), which changes an update: a larger count
    weighs like ``max_weight`` in the mean, a larger value moves like ``value_bound``. The line goes
    to the owner's own console, never to the coordinator.
    """
    notes = []
    if float(weight) > cfg.weight_bound:
        notes.append(f"its weight {float(weight):g} counts as aggregation.max_weight={cfg.weight_bound:g}")
    over = int(np.count_nonzero(np.abs(delta) > cfg.bound))
    if over:
        notes.append(f"{over:,} of {delta.size:,} update values beyond aggregation.value_bound={cfg.bound:g} "
                     "are clamped to it")
    if not notes:
        return None
    line = f"tenseal ({cfg.scheme}): {'; '.join(notes)} (raise the bound, or clip with train.update_clip_norm)"
    progress(line)
    return line


def clamp(delta: np.ndarray, weight: float, cfg: TensealConfig) -> tuple[float, np.ndarray]:
    """``(w, w * delta)`` with ``w`` clamped to ``[0, max_weight]`` and ``delta`` to ``+-value_bound``
    (the owner's console told, :func:`clamp_notice`): what an owner encrypts, in either scheme."""
    delta = np.asarray(delta, np.float64)
    clamp_notice(weight, delta, cfg)
    weight = min(max(float(weight), 0.0), cfg.weight_bound)
    return weight, weight * np.clip(delta, -cfg.bound, cfg.bound)
