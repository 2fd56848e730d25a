"""CKKS encoding of ``tenseal`` (``aggregation.scheme=ckks``): approximate reals, the weight in one extra slot.

An owner encrypts ``[w * delta..., w]`` (``w`` and ``delta`` clamped as in BFV, ``config.clamp``),
N/2 values per ciphertext (one ciphertext per slot-full, so TenSEAL warns of nothing); the
decrypted sum is ``[sum_k w_k delta_k..., sum_k w_k]``. The re-encrypted global is ``[global...,
1]``. CKKS is approximate (errors near ``2^-scale_bits`` relative) and costs ~32 bytes per value at
N=4096, four times BFV's: BFV is the default.
"""

from __future__ import annotations

import numpy as np

from fedveil.core.errors import UserError
from fedveil.core.io import pack
from fedveil.privacy.secagg.tenseal.config import TensealConfig


def slots(cfg: TensealConfig) -> int:
    """Values per ciphertext: N/2."""
    return cfg.poly_modulus_degree // 2


def with_weight(values: np.ndarray, weight: float) -> np.ndarray:
    """The vector an owner encrypts: the (weighted) values and the weight in one extra slot."""
    return np.concatenate([np.asarray(values, np.float64), [float(weight)]])


def encrypt(secret_ctx, values: np.ndarray, cfg: TensealConfig) -> bytes:
    """The framed ciphertexts of ``values``, ``slots(cfg)`` values each."""
    import tenseal as ts  # lazy: SEAL loads only where tenseal is used; configs import us

    if secret_ctx is None:
        raise UserError("this party holds no CKKS secret context and cannot encrypt for the federation")
    per = slots(cfg)
    return pack([ts.ckks_vector(secret_ctx, values[i : i + per].tolist()).serialize()
                 for i in range(0, values.size, per)])


def decode(vecs: list) -> tuple[np.ndarray, float]:
    """``(weighted sum, total weight)`` of decrypted CKKS vectors (the weight in the last slot)."""
    values = np.concatenate([np.asarray(v.decrypt(), np.float64) for v in vecs])
    return values[:-1], float(values[-1])


def slots_needed(size: int | None) -> int:
    """Values a payload holds for an adapter of ``size`` values: the values and the weight."""
    return (size or 0) + 1
