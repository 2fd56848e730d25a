"""The held-out pair: one definition of the federation's held-out loss, whatever the backend.

The held-out loss of a global adapter is token-weighted over the owners that evaluated it::

    loss = sum_k loss_k * tokens_k / sum_k tokens_k

Without DP each owner ``protect``s its pair as a one-value update, ``delta = [loss_k]`` with
weight ``tokens_k``, under a :class:`~fedveil.core.payload.RoundContext` whose purpose is
``EVAL_PAIR`` (each backend binds that purpose into what it sends, so a pair never passes for an
update nor an update for a pair). The backend sums the pairs as it sums updates and whoever
holds the key reveals ``(sum_k loss_k tokens_k, sum_k tokens_k)``: the coordinator itself for
``plain`` (it sees counts anyway) and ``crypten`` (the parties reveal the sum only); for
``tenseal`` one owner, which replies with the mean only (``tenseal/eval_pair.py``). Under DP no
pair is made or released: the loss stays in the owner's ``evaluations.jsonl``.

In an evaluate reply the pair's arrays and blobs travel under ``wire.EVAL_PAIR_PREFIX`` beside
whatever else the reply carries (tenseal's re-encrypted global): ``core/payload.py``'s
``with_eval_pair``/``eval_pair_of``/``without_eval_pair``, which the owner's release gate uses
without loading any backend. The exact bytes of one pair, per
backend: ``plain.EVAL_PAIR_BYTES``, ``tenseal.eval_pair.PAIR_BYTES``, ``crypten.cost.pair_bytes``.
"""

from __future__ import annotations

import math

import numpy as np

from fedveil.core.payload import PayloadError, Revealed


def as_update(loss: float, tokens: int) -> tuple[np.ndarray, float]:
    """``(delta, weight)`` an owner protects for its held-out pair: ``([loss], tokens)``."""
    return np.array([float(loss)], np.float64), float(tokens)


def mean_of(revealed: Revealed) -> float:
    """The token-weighted held-out loss from the revealed sum of pairs (float64, not ``Revealed.mean``)."""
    total = float(revealed.total_weight)
    summed = float(np.asarray(revealed.weighted_sum, np.float64).reshape(-1)[0])
    if not (math.isfinite(total) and total > 0 and math.isfinite(summed)):
        raise PayloadError(f"the summed held-out pairs hold {total:g} tokens: no mean")
    return summed / total
