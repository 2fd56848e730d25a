"""``plain``: updates travel in clear and the server averages them (trusted server).

What the server sees: each owner's (DP-noised, where DP is on) adapter delta and its example
count; without DP, each owner's held-out pair (loss, tokens) in clear (``eval_pair.py``). Use it
where the coordinator is trusted, or as the reference the secure backends match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.core.disk import owner_id
from fedveil.privacy.secagg.base import Cost, ServerHoldsGlobal, clear_global, clear_global_bytes

EVAL_PAIR_BYTES = 8 + 8  # a held-out pair: [loss] and its token count, float64 each


@dataclass
class PlainConfig:
    name: str = "plain"


def weighted_sum(vectors: list[np.ndarray], weights: list[float]) -> tuple[np.ndarray, float]:
    """``sum_k w_k v_k`` (float64 accumulation) and ``sum_k w_k``."""
    if not vectors:
        raise PayloadError("nothing to aggregate: no owner update arrived")
    acc = np.zeros_like(vectors[0], dtype=np.float64)
    for v, w in zip(vectors, weights, strict=True):
        acc += float(w) * np.asarray(v, dtype=np.float64)
    return acc, float(sum(weights))


class PlainBackend(ServerHoldsGlobal):
    name = "plain"
    server_can_reveal = True
    server_sees_updates = True  # does the coordinator see single updates (and their norms, counts)?
    open_global = staticmethod(clear_global)

    def __init__(self, cfg: PlainConfig | None = None, size: int | None = None) -> None:
        self.size = size

    def round_config(self) -> dict[str, str]:
        return {}

    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext | None = None) -> Protected:
        # a held-out pair keeps float64: the mean is then the same number the owners' floats give
        dtype = np.float64 if ctx is not None and ctx.is_eval_pair else np.float32
        return Protected(arrays={"delta": np.asarray(delta, dtype), "weight": np.array([weight], np.float64)})

    def _unpack(self, p: Protected, size: int | None = None) -> tuple[np.ndarray, float]:
        try:
            delta, weight = p.arrays["delta"], p.arrays["weight"]
        except KeyError as exc:
            raise PayloadError(f"plain payload lacks '{exc.args[0]}'") from exc
        what = "the adapter layout has" if size is None else "a held-out pair has"
        size = size or self.size
        if delta.ndim != 1 or (size is not None and delta.size != size):
            raise PayloadError(f"plain payload has {delta.size} values, {what} {size}")
        if weight.shape != (1,) or not np.isfinite(weight).all() or weight[0] < 0:
            raise PayloadError("plain payload weight must be one finite, non-negative number")
        if not np.isfinite(delta).all():
            raise PayloadError("plain payload holds NaN or infinite values")
        return delta, float(weight[0])

    def validate(self, p: Protected) -> None:
        self._unpack(p)

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext | None = None) -> Combined:
        size = 1 if ctx is not None and ctx.is_eval_pair else None  # a held-out pair: [loss], weight tokens
        unpacked = [self._unpack(p, size) for p in payloads.values()]
        acc, total = weighted_sum([d for d, _ in unpacked], [w for _, w in unpacked])
        return Combined(Protected(arrays={"weighted_sum": acc, "weight": np.array([total], np.float64)}))

    def reveal(self, combined: Protected) -> Revealed:
        return Revealed(combined.arrays["weighted_sum"], float(combined.arrays["weight"][0]))


def update_bytes(cfg: Any, values: int, owner: str = owner_id(0), server_round: int = 1,
                 calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Exact bytes of one owner's update (``PlainBackend.protect``): the fp32 delta and its float64 weight."""
    return 4 * values + 8


def cost(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *,
         dp_on: bool, carried: bool = False) -> Cost:
    """One round's bytes: each owner's update up (and, without DP, its held-out pair), the clear global down
    (``carried``: in the train message alone; the last round's evaluate message besides)."""
    down = clear_global_bytes(values, 1 if carried else 2)
    last = clear_global_bytes(values, 1)  # the evaluate message (carried: the last round's only)
    return Cost("plain", values, owners, update_bytes(cfg, values), down, down,
                eval_up=0 if dp_on else EVAL_PAIR_BYTES, carried=carried, evaluate_down=last, evaluate_down_first=last)
