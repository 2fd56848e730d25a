"""Candidate BFV parameters for tenseal (issue 14), measured with the installed TenSEAL against today's CKKS.

    .venv/bin/python -m fedveil.experiments.bench_bfv_params [--owners 50] [--values 262144]

For each candidate (ring degree N, coefficient moduli, plain modulus t, values packed per slot) it
prints, in one invocation: serialized bytes per adapter value (min-max over a few ciphertexts:
SEAL's zstd makes sizes data dependent below 60-bit primes), whether the sum of ``--owners``
ciphertexts at the largest per-owner value the packing allows decrypts exactly, and seconds to
encrypt and to decrypt ``--values`` values. Packing ``k`` values per slot: each slot holds
``sum_j v_j M^j`` (signed digits, ``M = 2^floor(log2(t)/k)``), decoded by centred lifts; exact as
long as every digit's sum over owners stays below ``M/2`` in magnitude, which the per-owner bound
``(M/2 - 1) // owners`` guarantees. Security: the total coefficient modulus stays within the
128-bit bound of ``config.MAX_COEFF_BITS_128`` (the same table SEAL enforces).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tenseal as ts
from fedveil.privacy.secagg.tenseal.backend import TensealOwner
from fedveil.privacy.secagg.tenseal.config import MAX_COEFF_BITS_128, TensealConfig
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes
from sympy import isprime

# (N, coefficient moduli bits, plain modulus bits, values per slot)
CANDIDATES = [
    (4096, [60, 49], 20, 1),  # issue 14's quick check: CKKS's parameter set, one value per slot
    (4096, [32, 32], 20, 1),
    (4096, [36, 36], 24, 1),
    (4096, [40, 40], 28, 1),
    (4096, [60, 49], 46, 2),  # CKKS's parameter set, two 23-bit digits per slot
    (4096, [60, 49], 48, 3),
]


def batching_prime(bits: int, n: int) -> int:
    """The largest prime below 2^bits that is 1 mod 2N (what BFV batching needs)."""

    m = 2 * n
    p = ((1 << bits) - 1) // m * m + 1
    while not isprime(p):
        p -= m
    return p


def pack(q: np.ndarray, k: int, radix: int, t: int) -> list[int]:
    digits = q.reshape(-1, k)
    return [int(x) % t for x in sum(digits[:, j].astype(object) * radix**j for j in range(k))]


def unpack(slots: list[int], k: int, radix: int, t: int) -> np.ndarray:
    out = []
    for s in slots:
        s = s - t if s > t // 2 else s
        for _ in range(k):
            d = (s + radix // 2) % radix - radix // 2
            out.append(d)
            s = (s - d) // radix
    return np.asarray(out, np.int64)


def bench_bfv(n: int, coeffs: list[int], t_bits: int, k: int, owners: int, values: int) -> str:

    t = batching_prime(t_bits, n)
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=n, plain_modulus=t, coeff_mod_bit_sizes=coeffs)
    radix = 1 << (t.bit_length() - 1) // k
    bound = (radix // 2 - 1) // owners  # per owner, per value: the sum of all owners cannot overflow a digit
    rng = np.random.default_rng(0)
    per_ct = n * k
    qs = [rng.integers(-bound, bound + 1, per_ct) for _ in range(owners)]
    for q in qs:
        q[:16] = bound  # every owner at the largest value in some slots
    cts = [ts.bfv_vector(ctx, pack(q, k, radix, t)) for q in qs]
    sizes = [len(c.serialize()) for c in cts[:5]]
    total = cts[0]
    for c in cts[1:]:
        total = total + c
    exact = np.array_equal(unpack(total.decrypt(), k, radix, t), np.sum(qs, axis=0))
    start = time.perf_counter()
    chunks = [ts.bfv_vector(ctx, pack(qs[0], k, radix, t)) for _ in range(-(-values // per_ct))]
    enc = time.perf_counter() - start
    start = time.perf_counter()
    for c in chunks:
        unpack(c.decrypt(), k, radix, t)
    dec = time.perf_counter() - start
    return (f"BFV  N={n} q={coeffs} ({sum(coeffs)}/{MAX_COEFF_BITS_128[n]} bits) t=2^{t.bit_length()} k={k}: "
            f"{min(sizes) / per_ct:.2f}-{max(sizes) / per_ct:.2f} B/value, {bound:,} levels per owner (+-), "
            f"{owners}-owner sum exact={exact}, encrypt {enc:.2f} s, decrypt {dec:.2f} s per {values:,} values")


def bench_ckks(values: int) -> str:

    ctx = make_context(TensealConfig())
    backend = TensealOwner(TensealConfig(), values, public=public_bytes(ctx), secret=secret_bytes(ctx))
    delta = np.random.default_rng(0).normal(0, 1e-2, values)
    start = time.perf_counter()
    payload = backend.protect(delta, 1.0)
    enc = time.perf_counter() - start
    start = time.perf_counter()
    backend.reveal(payload)
    dec = time.perf_counter() - start
    return (f"CKKS N=4096 q=[60, 49] (today's backend): {payload.nbytes / values:.2f} B/value, "
            f"encrypt {enc:.2f} s, decrypt {dec:.2f} s per {values:,} values")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--values", type=int, default=262_144)
    args = parser.parse_args()
    print(bench_ckks(args.values), flush=True)
    for n, coeffs, t_bits, k in CANDIDATES:
        print(bench_bfv(n, coeffs, t_bits, k, args.owners, args.values), flush=True)


if __name__ == "__main__":
    main()
