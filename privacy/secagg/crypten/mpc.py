"""The aggregator parties' computation for the ``crypten`` backend, free of Flower.

Each of K parties holds one additive share of every owner's update (``shares.py``). With
CrypTen's MPC among them, and multiplication triples from a trusted third party (``TTP``
provider: a separate dealer process that never sees a share, unlike CrypTen's default ``TFP``,
which hands party 0 the randomness), they:

1. compute each owner's squared L2 norm on shares and compare it with ``bound**2``: only the
   comparison bit is revealed, so an over-bound update is dropped without being seen;
2. form ``sum_k n_k x_k`` over the accepted owners (``n_k`` are public to the parties);
3. reveal that sum: the only value that leaves the MPC (to the parties and the coordinator).

The party processes and their transport live in ``party.py``; :func:`run_local_parties`
runs the same computation in forked local processes (CrypTen's ``run_multiprocess``) for tests.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from fedveil.privacy.secagg.crypten.compat import import_crypten
from fedveil.privacy.secagg.crypten.shares import PRECISION_BITS


def party_aggregate(local_shares: Sequence[np.ndarray], counts: Sequence[float],
                    bound: Optional[float]) -> tuple[list[bool], np.ndarray | None, float]:
    """Run on every party inside an initialised CrypTen communicator.

    ``local_shares[k]`` is this party's share of owner k's encoded update. Returns the accepted
    flags, the revealed ``sum_k n_k x_k`` over accepted owners (None if none) and ``sum_k n_k``.
    """
    import torch

    crypten = import_crypten()
    from crypten.mpc import MPCTensor

    xs = [MPCTensor.from_shares(torch.from_numpy(np.asarray(s, np.int64)), precision=PRECISION_BITS)
          for s in local_shares]
    if bound is None:
        accepted = [True] * len(xs)
    else:
        accepted = [bool(((x * x).sum() <= float(bound) ** 2).get_plain_text().item()) for x in xs]
    total, weight = None, 0.0
    for x, n, ok in zip(xs, counts, accepted):
        if ok:
            term = x * float(n)
            total = term if total is None else total + term
            weight += float(n)
    revealed = None if total is None else total.get_plain_text().double().numpy()
    del crypten
    return accepted, revealed, weight


def run_local_parties(shares: Sequence[Sequence[np.ndarray]], counts: Sequence[float],
                      bound: Optional[float], parties: int = 3):
    """``shares[k][p]``: party p's share of owner k. Runs K local party processes + a TTP."""
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    import crypten.mpc as mpc

    @mpc.run_multiprocess(world_size=parties)
    def party():
        rank = crypten.comm.get().get_rank()
        return party_aggregate([owner[rank] for owner in shares], counts, bound)

    results = party()
    if not results or any(r is None for r in results):
        raise RuntimeError("an MPC party process failed; see its log above")
    return results
