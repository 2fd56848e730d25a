"""``tenseal``: CKKS homomorphic encryption; the server adds ciphertexts it cannot read.

Flower-free core of the backend: parameters (insecure ones refused), context creation,
encrypting a weighted update, summing ciphertexts, decrypting the sum, and the owner's view of
the encrypted global adapter. Key generation and installing are in ``keys.py``; the arrays the
server keeps of the encrypted global in ``global_codec.py``.

What each party holds and sees:

- key holder (one owner, or a key service): creates the CKKS context; its secret part is sealed
  (libsodium sealed box) to every owner's public key and relayed; the server holds only the
  public context.
- owners: encrypt ``[n_k * delta_k..., n_k]`` (the count rides in one extra slot, so the server
  learns not even the counts), decrypt the sum, divide.
- server: ciphertexts and their sum only. It cannot decrypt (no secret key). Owners share the
  secret key, so a server colluding with any one owner sees everything the others sent; their
  DP-SGD (if on) is what still bounds that leak.

TenSEAL accepts tampered ciphertext bytes and ciphertexts of another context without complaint
(seen here: garbage sums). Every payload therefore names the public context's SHA-256, and
carries the SHA-256 of the ciphertext so transport damage is caught before summing; a malicious
sender that recomputes the digest is out of this check's scope (an owner signature is the fix).
CKKS is not IND-CPA-D secure: never show decrypted values to a party without the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fedveil.core.errors import UserError
from fedveil.core.io import FramingError, pack, unpack
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.privacy.secagg.tenseal import global_codec

# Largest total coefficient modulus (bits) for 128-bit classical security, by ring degree N
# (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass
class TensealConfig:
    """CKKS parameters. Defaults: addition only, 128-bit security, ~32 bytes per value."""

    name: str = "tenseal"
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: list[int] = field(default_factory=lambda: [60, 49])
    scale_bits: int = 40
    key_holder: str = ""  # client id of the owner that creates the context ("" = smallest id)

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, list(self.coeff_mod_bit_sizes)
        if n not in MAX_COEFF_BITS_128:
            raise UserError(f"aggregation.poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n}")
        if len(bits) < 2:
            raise UserError("aggregation.coeff_mod_bit_sizes needs at least two primes (data + special); e.g. [60, 49]")
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise UserError(
                f"aggregation.coeff_mod_bit_sizes {bits} total {sum(bits)} bits: over {MAX_COEFF_BITS_128[n]} bits "
                f"is below 128-bit security at N={n}; raise poly_modulus_degree or use fewer bits"
            )
        if not 20 <= self.scale_bits < bits[0]:
            raise UserError(f"aggregation.scale_bits must be >= 20 and below the first prime ({bits[0]} bits), got {self.scale_bits}")


def make_context(cfg: TensealConfig):
    """A fresh secret CKKS context (the key holder's)."""
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=cfg.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** cfg.scale_bits
    return ctx


def public_bytes(ctx) -> bytes:
    """The context without its secret key: all the server ever holds."""
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def secret_bytes(ctx) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def context_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()


def load_context(data: bytes):
    import tenseal as ts

    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise PayloadError(f"CKKS context bytes are unreadable ({exc}); ask the key holder to resend them") from exc


class TensealBackend:
    """Owners: ``protect``/``reveal``/``open_global`` with the secret context. Server:
    ``validate``/``combine`` with the public context only (``secret`` absent)."""

    name = "tenseal"
    server_can_reveal = False
    server_sees_updates = False  # does the coordinator see single updates (and their norms, counts)?

    def __init__(self, cfg: TensealConfig | None, size: int | None = None, *, public: bytes,
                 secret: bytes | None = None) -> None:
        self.cfg, self.size = cfg or TensealConfig(), size
        self.context_id = context_id(public)
        self._public = load_context(public)
        if self._public.is_private():
            raise PayloadError("the context given as public holds a secret key; pass public_bytes(ctx)")
        self._secret = load_context(secret) if secret is not None else None

    def round_config(self) -> dict[str, str]:
        return {}

    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext | None = None) -> Protected:
        import tenseal as ts

        if self._secret is None:
            raise UserError("this party holds no CKKS secret context and cannot encrypt for the federation")
        values = np.concatenate([np.asarray(delta, np.float64) * float(weight), [float(weight)]])
        slots = self.cfg.poly_modulus_degree // 2  # one ciphertext per slot-full: no TenSEAL warnings
        chunks = [ts.ckks_vector(self._secret, values[i : i + slots].tolist()).serialize()
                  for i in range(0, values.size, slots)]
        return Protected(blobs=self._tag(pack(chunks)))

    def payload_of(self, ciphertext: bytes) -> Protected:
        """A payload around ciphertext bytes received from the server (tags recomputed here)."""
        return Protected(blobs=self._tag(ciphertext))

    def open_global(self, arrays: dict[str, np.ndarray], initial: np.ndarray) -> np.ndarray:
        """The global adapter from the server's ciphertexts: ``Dec(base)`` (or the seed-derived
        initial adapter every owner computes itself) plus each pending round's mean delta."""
        base, pending = global_codec.from_arrays(arrays)
        vector = self.reveal(self.payload_of(base)).mean if base is not None else np.asarray(initial, np.float32)
        for blob in pending:
            vector = self.reveal(self.payload_of(blob)).applied_to(vector)
        return vector

    def encrypt_global(self, vector: np.ndarray) -> bytes:
        """Enc(global) for the server to hold between rounds (weight 1: it decrypts to itself)."""
        return self.protect(vector, 1.0).blobs["ciphertext"]

    def _tag(self, blob: bytes) -> dict[str, bytes]:
        return {"ciphertext": blob, "context-id": self.context_id.encode(), "sha256": hashlib.sha256(blob).digest()}

    def _vectors(self, p: Protected, ctx) -> list:
        import tenseal as ts

        try:
            blob, cid, digest = p.blobs["ciphertext"], p.blobs["context-id"], p.blobs["sha256"]
        except KeyError as exc:
            raise PayloadError(f"tenseal payload lacks '{exc.args[0]}'") from exc
        if cid.decode(errors="replace") != self.context_id:
            raise PayloadError("ciphertext was built with another CKKS context (context id differs); "
                               "the owner must use the federation's current context")
        if hashlib.sha256(blob).digest() != digest:
            raise PayloadError("ciphertext bytes do not match their SHA-256: damaged or tampered in transit")
        try:
            vecs = [ts.ckks_vector_from(ctx, c) for c in unpack(blob)]
        except FramingError as exc:
            raise PayloadError(f"ciphertext stream is unreadable: {exc}") from exc
        except Exception as exc:
            raise PayloadError(f"ciphertext is unreadable ({exc}): truncated or not a CKKS vector") from exc
        held = sum(v.size() for v in vecs)
        if self.size is not None and held != self.size + 1:
            raise PayloadError(f"ciphertext holds {held} values, the adapter layout needs {self.size} + 1")
        return vecs

    def validate(self, p: Protected) -> None:
        self._vectors(p, self._public)

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext | None = None) -> Combined:
        if not payloads:
            raise PayloadError("nothing to aggregate: no ciphertext arrived")
        first, *rest = payloads.values()
        total = self._vectors(first, self._public)
        for p in rest:
            for acc, v in zip(total, self._vectors(p, self._public), strict=True):
                acc += v
        return Combined(Protected(blobs=self._tag(pack([v.serialize() for v in total]))))

    def reveal(self, combined: Protected) -> Revealed:
        if self._secret is None:
            raise UserError("this party holds no CKKS secret key and cannot decrypt: only data owners can")
        values = np.concatenate([np.asarray(v.decrypt(), np.float64) for v in self._vectors(combined, self._secret)])
        return Revealed(weighted_sum=values[:-1], total_weight=float(values[-1]))
