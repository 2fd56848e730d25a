"""``tenseal``: homomorphic encryption (BFV by default, or CKKS); the server adds ciphertexts it cannot read.

Flower-free core of the backend: parameters (insecure ones refused), context creation,
encrypting a weighted update, summing ciphertexts, decrypting the sum, and the owner's view of
the encrypted global adapter. Key generation and installing are in ``keys.py``; the arrays the
server keeps of the encrypted global in ``global_codec.py``.

What each party holds and sees:

- key holder (one owner, or a key service): creates the BFV (or CKKS) context; its secret part is sealed
  (libsodium sealed box) to every owner's public key and relayed; the server holds only the
  public context.
- owners: BFV (``bfv.py``): encrypt ``n_k * delta_k`` in fixed point, two values per slot, with
  ``n_k`` sealed beside it; CKKS: encrypt ``[n_k * delta_k..., n_k]`` (the count in one extra
  slot). The server learns not even the counts. Owners decrypt the sum and divide.
- server: ciphertexts and their sum only. It cannot decrypt (no secret key). Owners share the
  secret key, so a server colluding with any one owner sees everything the others sent; their
  DP-SGD (if on) is what still bounds that leak.

TenSEAL accepts tampered ciphertext bytes and ciphertexts of another context without complaint
(seen here: garbage sums). Every payload therefore names the public context's SHA-256, and
carries the SHA-256 of the ciphertext so transport damage is caught before summing, and each
ciphertext's scale, size, ring and level are checked against the parameters (one owner's odd
ciphertext is left out of the sum, never fatal).

The server holds the public context, which encrypts, so nothing an owner decrypts may be the
server's word alone. Each owner signs (Ed25519) its update ciphertext bound to the run, the
context, the round and its owner id (:func:`update_statement`), and the owner asked to re-encrypt
the global signs that ciphertext bound to the run, the context and the round it reaches
(:func:`global_statement`). The server keeps every accepted owner's signed ciphertext of a round
(``global_codec.RoundUpdates``), checks the signatures against the Ed25519 keys owners announced
at key set-up (to exclude a bad one, never to be trusted), and owners check them again against
their pinned roster (``identity.py``) and add the ciphertexts themselves; an owner also refuses a
round that leaves out its own update. Neither scheme is IND-CPA-D secure: never show decrypted
values to a party without the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from fedveil.core.console import progress
from fedveil.core.errors import UserError
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal import bfv, global_codec

# Largest total coefficient modulus (bits) for 128-bit classical security, by ring degree N
# (HomomorphicEncryption.org standard, as enforced by SEAL).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


SCHEMES = ("bfv", "ckks")
DEFAULT_MAX_OWNERS = 50  # TensealConfig built directly (tests, planner); a run resolves it to num_clients


@dataclass
class TensealConfig:
    """Parameters of ``tenseal``. Defaults: BFV (``bfv.py``: two fixed-point digits per slot, ~8 bytes
    per value), addition only, 128-bit security; ``scheme=ckks``: CKKS at ~32 bytes per value.

    BFV only: ``plain_modulus_bits`` (t), ``max_owners`` (most updates ever summed: the roster),
    ``max_weight`` (an owner's weight is clamped to it) and ``value_bound`` (each delta value is
    clamped to +-it); they set the step. ``None``: resolved by the run (``configs/schema.py``):
    num_clients, 1 under DP (else 1024), train.update_clip_norm (else 1.0). CKKS only: ``scale_bits``.
    """

    name: str = "tenseal"
    scheme: str = "bfv"
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: list[int] = field(default_factory=lambda: [60, 49])
    scale_bits: int = 40
    plain_modulus_bits: int = 46
    max_owners: Optional[int] = None
    max_weight: Optional[float] = None
    value_bound: Optional[float] = None
    key_holder: str = ""  # client id of the owner that creates the context ("" = smallest id)

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, list(self.coeff_mod_bit_sizes)
        if self.scheme not in SCHEMES:
            raise UserError(f"aggregation.scheme must be one of {list(SCHEMES)}, got '{self.scheme}'")
        if n not in MAX_COEFF_BITS_128:
            raise UserError(f"aggregation.poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}, got {n}")
        if len(bits) < 2:
            raise UserError("aggregation.coeff_mod_bit_sizes needs at least two primes (data + special); e.g. [60, 49]")
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise UserError(
                f"aggregation.coeff_mod_bit_sizes {bits} total {sum(bits)} bits: over {MAX_COEFF_BITS_128[n]} bits "
                f"is below 128-bit security at N={n}; raise poly_modulus_degree or use fewer bits"
            )
        if self.scheme == "ckks":
            if not 20 <= self.scale_bits < bits[0]:
                raise UserError(f"aggregation.scale_bits must be >= 20 and below the first prime ({bits[0]} bits), "
                                f"got {self.scale_bits}")
            return
        for key in ("max_owners", "max_weight", "value_bound"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise UserError(f"aggregation.{key} must be > 0 (or null: resolved by the run), got {value}")
        bfv.check(n, bits, self.plain_modulus_bits, self.owners)

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


def resolve(agg: dict, owners: int, participants: int, dp_on: bool, update_clip_norm: Optional[float]) -> dict:
    """The run's BFV values for what the config left null: ``max_owners`` = the owners keyed
    (num_clients), ``max_weight`` = 1 under DP (every weight is 1, a public value) else 1024 examples,
    ``value_bound`` = train.update_clip_norm (a coordinate never exceeds the L2 norm) else 1.0. A
    ``max_owners`` below the owners training per round is refused (their sum is what must not overflow)."""
    if agg.get("scheme", "bfv") != "bfv":
        return agg
    agg = dict(agg)
    if agg.get("max_owners") is None:
        agg["max_owners"] = owners
    if agg.get("max_weight") is None:
        agg["max_weight"] = 1.0 if dp_on else 1024.0
    if agg.get("value_bound") is None:
        agg["value_bound"] = float(update_clip_norm) if update_clip_norm is not None else 1.0
    if isinstance(agg["max_owners"], int) and agg["max_owners"] < participants:
        raise UserError(f"aggregation.max_owners={agg['max_owners']} is below the {participants} owners that train per "
                        "round: their BFV sum could overflow; raise aggregation.max_owners (or leave it null)")
    return agg


def make_context(cfg: TensealConfig):
    """A fresh secret context (the key holder's), BFV or CKKS."""
    import tenseal as ts

    if cfg.scheme == "bfv":
        return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=cfg.poly_modulus_degree,
                          plain_modulus=bfv.plain_modulus(cfg.poly_modulus_degree, cfg.plain_modulus_bits),
                          coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes))
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


ROUND_UPDATES = "round-updates"  # blob of a combined payload: global_codec.RoundUpdates
SIGNATURE = "signature"  # blob of a payload: the owner's Ed25519 signature over update_statement
SENT_FILE = "sent.json"  # the run's folder of keys.run_dir: the round and SHA-256 of this owner's last update


def global_statement(run: str, cid: str, after_round: int, blob: bytes) -> bytes:
    """What the re-encrypting owner signs: Enc(global after ``after_round``) of ``run`` under context ``cid``."""
    return identity.digest(b"fedveil/tenseal-global/v2", run.encode(), cid.encode(), str(after_round).encode(), blob)


def update_statement(run: str, cid: str, rnd: int, owner: str, blob: bytes) -> bytes:
    """What an owner signs with its update: ``blob`` is its round-``rnd`` ciphertext of ``run`` under ``cid``."""
    return identity.digest(b"fedveil/tenseal-update/v1", run.encode(), cid.encode(), str(rnd).encode(), owner.encode(),
                           hashlib.sha256(blob).digest())


class TensealBackend:
    """Owners: ``protect``/``reveal``/``open_global``/``encrypt_global`` with the secret context,
    the pinned ``roster`` (whose signatures a global must carry) and their own ``keys`` (to sign
    their updates and a global they re-encrypt). Server: ``validate``/``combine``/``check_global``
    with the public context only and ``signers``, the Ed25519 keys owners announced (the server's
    own filter; owners never rely on it). ``run`` is the run the context was made for."""

    name = "tenseal"
    server_can_reveal = False
    server_sees_updates = False  # does the coordinator see single updates (and their norms, counts)?

    def __init__(self, cfg: TensealConfig | None, size: int | None = None, *, public: bytes,
                 secret: bytes | None = None, roster: identity.Roster | None = None,
                 keys: identity.OwnerKeys | None = None, run: str = "",
                 signers: dict[str, bytes] | None = None) -> None:
        self.cfg, self.size, self.run, self.signers = cfg or TensealConfig(), size, run, signers
        self.context_id = context_id(public)
        self._public = load_context(public)
        if self._public.is_private():
            raise PayloadError("the context given as public holds a secret key; pass public_bytes(ctx)")
        self._check_parameters(self._public)
        self._secret = load_context(secret) if secret is not None else None
        self._weight_key = None  # BFV: the key owners seal their weights with, from the (canonical) secret context
        if self._secret is not None and self.cfg.scheme == "bfv":
            self._weight_key = bfv.count_key(secret_bytes(self._secret))
        self.roster, self.keys = roster, keys

    def _check_parameters(self, ctx) -> None:
        """The context must be of the configured scheme, ring and (BFV) plain modulus: the step and
        the digits are decoded with the config's."""
        parms = ctx.seal_context().data.first_context_data().parms()
        scheme = str(parms.scheme()).rsplit(".", 1)[-1].lower()
        t = parms.plain_modulus().value()
        want = bfv.plain_modulus(self.cfg.poly_modulus_degree, self.cfg.plain_modulus_bits) if scheme == "bfv" else 0
        if (scheme, parms.poly_modulus_degree(), t) != (self.cfg.scheme, self.cfg.poly_modulus_degree, want):
            raise UserError(f"the federation's context is {scheme.upper()} at N={parms.poly_modulus_degree()}"
                            f"{f', t={t}' if t else ''}, but aggregation says scheme={self.cfg.scheme}, "
                            f"N={self.cfg.poly_modulus_degree}, plain_modulus_bits={self.cfg.plain_modulus_bits}: "
                            "use the config the federation was keyed with")

    def round_config(self) -> dict[str, str]:
        return {}

    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext | None = None) -> Protected:
        """Enc(n_k delta_k) and n_k (BFV: fixed point, the weight sealed beside it; CKKS: the weight in
        one extra slot); signed by this owner for ``ctx``'s round where it has keys (owners always do).
        BFV: the owner clamps its weight to ``max_weight`` and each value to ``+-value_bound`` first."""
        if self.cfg.scheme == "bfv":
            blob = self._encrypt_bfv(np.asarray(delta, np.float64), weight)
        else:
            blob = self._encrypt(np.concatenate([np.asarray(delta, np.float64) * float(weight), [float(weight)]]))
        tags = self._tag(blob)
        if self.keys is not None and ctx is not None:
            if ctx.owner != self.keys.owner_id:
                raise UserError(f"round context names owner '{ctx.owner}', but these keys are '{self.keys.owner_id}'")
            tags[SIGNATURE] = self.keys.sign(update_statement(self.run, self.context_id, ctx.round, ctx.owner, blob))
            record = {"run": self.run, "round": ctx.round, "sha256": hashlib.sha256(blob).hexdigest()}
            atomic_write_bytes(self._sent_file, json.dumps(record).encode())
        return Protected(blobs=tags)

    def _encrypt(self, values: np.ndarray) -> bytes:
        import tenseal as ts

        if self._secret is None:
            raise UserError("this party holds no CKKS secret context and cannot encrypt for the federation")
        return pack([ts.ckks_vector(self._secret, values[i : i + self.slots].tolist()).serialize()
                     for i in range(0, values.size, self.slots)])

    def _encrypt_bfv(self, delta: np.ndarray, weight: float, kind: bytes = b"u") -> bytes:
        """BFV blob: header (kind, step), the ciphertexts of the packed digits, and (updates) the sealed weight."""
        import tenseal as ts

        if self._secret is None:
            raise UserError("this party holds no BFV secret context and cannot encrypt for the federation")
        cfg, n = self.cfg, self.cfg.poly_modulus_degree
        r = bfv.radix(n, cfg.plain_modulus_bits)
        if kind == b"u":
            clamp_notice(weight, delta, cfg)
            weight = min(max(float(weight), 0.0), cfg.weight_bound)
            step, limit = cfg.step, cfg.levels
            values = weight * np.clip(delta, -cfg.bound, cfg.bound)
        else:  # a global: never summed, so it uses the whole digit at its own step
            limit = (r - 1) // 2
            top = float(np.abs(delta).max()) if delta.size else 0.0
            step = top / limit if top > 0 else 1.0
            values = delta
        slots = bfv.pack_slots(bfv.quantize(values, step, limit), r)
        parts = [bfv.header(kind, step)]
        parts += [ts.bfv_vector(self._secret, slots[i : i + n].tolist()).serialize() for i in range(0, slots.size, n)]
        if kind == b"u":
            parts.append(bfv.seal_weight(self._weight_key, weight))
        return pack(parts)

    @property
    def _sent_file(self) -> Path:
        from fedveil.privacy.secagg.tenseal.keys import run_dir  # (keys.py imports this module)

        folder = run_dir(self.keys.state_dir, self.run)  # per run: another run's update never hides this one's
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / SENT_FILE

    @property
    def slots(self) -> int:
        """CKKS: values per ciphertext (N/2 slots: one ciphertext per slot-full, no TenSEAL warnings)."""
        return self.cfg.poly_modulus_degree // 2

    def payload_of(self, ciphertext: bytes) -> Protected:
        """A payload around ciphertext bytes received from the server (tags recomputed here)."""
        return Protected(blobs=self._tag(ciphertext))

    def open_global(self, arrays: dict[str, np.ndarray], initial: np.ndarray, after_round: int) -> np.ndarray:
        """The global adapter after round ``after_round`` from the server's ciphertexts: ``Dec(base)``
        (or the seed-derived initial adapter every owner computes itself) plus the mean delta of
        each pending round, which this owner adds up itself from the owners' signed updates. Every
        signature is checked against the pinned roster, bound to this run and to the round it
        claims, and the rounds must run on from the base to exactly ``after_round``: a forged,
        altered, stale or replayed global is refused, as is a round that leaves out this owner's
        own update. Everything is checked before anything is decrypted."""
        if self.roster is None:
            raise UserError("no pinned roster: this owner cannot check who encrypted the global adapter")
        base, pending = global_codec.from_arrays(arrays)
        reached = 0
        if base is not None:
            self._check_signed(base)
            reached = base.round
        rounds = []
        for blob in pending:
            updates = global_codec.RoundUpdates.decode(blob)
            if updates.round != reached + 1:
                raise PayloadError(f"the encrypted global's pending round {updates.round} does not follow round "
                                   f"{reached}: stale or replayed; refused")
            rounds.append(self._checked_round(updates))
            reached = updates.round
        if reached != after_round:
            raise PayloadError(f"the encrypted global reaches round {reached} (signed base + {len(pending)} pending "
                               f"rounds), not round {after_round}: stale or replayed; refused")
        vector = self.reveal(self.payload_of(base.blob)).mean if base is not None else np.asarray(initial, np.float32)
        for payloads in rounds:
            total = self.combine(payloads)
            if total.excluded:  # signed, yet odd (a malicious owner's ciphertext an honest server excludes)
                raise PayloadError(f"pending round updates do not add up: {sorted(total.excluded.values())[0]}")
            vector = self.reveal(total.payload).applied_to(vector)
        return vector

    def _checked_round(self, updates: global_codec.RoundUpdates) -> dict[str, Protected]:
        """One pending round's updates, each checked as its owner's for this run and round."""
        for owner, (blob, signature) in updates.signed.items():
            member = self.roster.member(owner, f"an update of pending round {updates.round} names owner")
            identity.verify(member.verify_key, update_statement(self.run, self.context_id, updates.round, owner, blob),
                            signature, f"owner {owner}'s update in pending round {updates.round}")
        if self.keys is not None and self._sent_file.is_file():
            sent = json.loads(self._sent_file.read_text())
            mine = updates.signed.get(self.keys.owner_id, (b"", b""))[0]
            if (sent.get("run"), sent.get("round")) == (self.run, updates.round) and \
                    hashlib.sha256(mine).hexdigest() != sent.get("sha256"):
                raise PayloadError(f"pending round {updates.round} leaves out this owner's own update "
                                   f"(the server dropped it, or it arrived after the round closed): refused")
        return {owner: self.payload_of(blob) for owner, (blob, _) in updates.signed.items()}

    def _check_signed(self, base: global_codec.SignedBase) -> None:
        if not base.signature or not base.signer or base.round < 1:
            raise PayloadError("the encrypted global carries no owner's signature (the server could have encrypted "
                               "it): refused")
        member = self.roster.member(base.signer, "the encrypted global's signer")
        self._verify_global(member.verify_key, base)

    def _verify_global(self, verify_key: bytes, base: global_codec.SignedBase) -> None:
        identity.verify(verify_key, global_statement(self.run, self.context_id, base.round, base.blob), base.signature,
                        f"the encrypted global of round {base.round} (signer {base.signer})")

    def check_global(self, base: global_codec.SignedBase) -> None:
        """Server: refuse a re-encrypted global not signed, for this run and round, by the owner it names."""
        if self.signers is None:
            raise UserError("the server side holds no owner keys from the key set-up: it cannot check a global")
        if base.signer not in self.signers or not base.signature:
            raise PayloadError(f"the re-encrypted global names signer '{base.signer}', who announced no key: refused")
        self._verify_global(self.signers[base.signer], base)

    def encrypt_global(self, vector: np.ndarray, after_round: int) -> tuple[bytes, bytes]:
        """(Enc(global after ``after_round``), this owner's signature over it) for the server to hold
        between rounds (weight 1: it decrypts to itself)."""
        if self.keys is None:
            raise UserError("this owner has no signing key: it cannot re-encrypt the global for the server")
        if self.cfg.scheme == "bfv":
            blob = self._encrypt_bfv(np.asarray(vector, np.float64), 1.0, kind=b"g")
        else:
            blob = self._encrypt(np.concatenate([np.asarray(vector, np.float64), [1.0]]))
        return blob, self.keys.sign(global_statement(self.run, self.context_id, after_round, blob))

    def _tag(self, blob: bytes) -> dict[str, bytes]:
        return {"ciphertext": blob, "context-id": self.context_id.encode(), "sha256": hashlib.sha256(blob).digest()}

    def _vectors(self, p: Protected, ctx) -> tuple[list, bfv.Parts | None]:
        """The payload's ciphertexts, checked; and, BFV, its header and sealed weights."""
        import tenseal as ts

        try:
            blob, cid, digest = p.blobs["ciphertext"], p.blobs["context-id"], p.blobs["sha256"]
        except KeyError as exc:
            raise PayloadError(f"tenseal payload lacks '{exc.args[0]}'") from exc
        if cid.decode(errors="replace") != self.context_id:
            raise PayloadError(f"ciphertext was built with another {self.cfg.scheme.upper()} context (context id "
                               "differs); the owner must use the federation's current context")
        if hashlib.sha256(blob).digest() != digest:
            raise PayloadError("ciphertext bytes do not match their SHA-256: damaged or tampered in transit")
        try:
            chunks = unpack(blob)
        except FramingError as exc:
            raise PayloadError(f"ciphertext stream is unreadable: {exc}") from exc
        parts = None
        if self.cfg.scheme == "bfv":
            parts = self._bfv_parts(chunks)
            chunks = chunks[1 : 1 + parts.ciphertexts]
        load = ts.bfv_vector_from if self.cfg.scheme == "bfv" else ts.ckks_vector_from
        try:
            vecs = [load(ctx, c) for c in chunks]
        except Exception as exc:
            raise PayloadError(f"ciphertext is unreadable ({exc}): truncated or not a {self.cfg.scheme.upper()} "
                               "vector") from exc
        held, want = sum(v.size() for v in vecs), self._slots_needed(parts)
        if self.size is not None and held != want:
            unit = "values" if parts is None else "slots (2 values each)"
            raise PayloadError(f"ciphertext holds {held} {unit}, the adapter layout needs {self._needs_text(parts)}")
        for i, v in enumerate(vecs):
            self._check_shape(v, last=i == len(vecs) - 1)
        return vecs, parts

    def _bfv_parts(self, chunks: list[bytes]) -> bfv.Parts:
        if self.size is None:
            raise UserError("a BFV backend needs the adapter size (the layout) to read ciphertexts")
        if not chunks:
            raise PayloadError("BFV payload is empty: not built by protect()")
        kind, step = bfv.read_header(chunks[0])
        count = len(bfv.ciphertexts(self.size, self.cfg.poly_modulus_degree))
        boxes = chunks[1 + count :]
        if len(chunks) < 1 + count or (kind == b"g") != (not boxes) or (kind == b"u" and len(boxes) != 1) \
                or any(len(b) != bfv.COUNT_BOX for b in boxes):
            raise PayloadError(f"BFV payload holds {len(chunks) - 1} parts, not {count} ciphertexts and its sealed "
                               "weights: not built by protect()")
        if kind != b"g" and step != self.cfg.step:
            raise PayloadError(f"ciphertext encodes at step {step:.6g}, the federation's is {self.cfg.step:.6g} "
                               "(max_weight, value_bound, max_owners or plain modulus differ): refused")
        return bfv.Parts(kind, step, count, boxes)

    def _slots_needed(self, parts) -> int:
        if parts is None:
            return (self.size or 0) + 1
        return -(-(self.size or 0) // 2)

    def _needs_text(self, parts) -> str:
        return f"{self.size} + 1" if parts is None else f"{self._slots_needed(parts)}"

    def _check_shape(self, v, last: bool) -> None:
        """Refuse a ciphertext that would not add to the others: other scale, size, ring or level."""
        bfv_scheme = self.cfg.scheme == "bfv"
        try:
            (c,) = v.ciphertext()
            shape = (c.scale, c.size(), c.poly_modulus_degree(), c.coeff_modulus_size(), c.is_ntt_form())
        except Exception as exc:
            raise PayloadError(f"ciphertext is not a single {self.cfg.scheme.upper()} ciphertext ({exc}); the owner "
                               "must use protect()") from exc
        scale = 1.0 if bfv_scheme else 2.0 ** self.cfg.scale_bits
        want = (scale, 2, self.cfg.poly_modulus_degree, len(self.cfg.coeff_mod_bit_sizes) - 1, not bfv_scheme)
        if shape != want:
            raise PayloadError(f"ciphertext (scale 2^{np.log2(shape[0]):.1f}, size {shape[1]}, N {shape[2]}, "
                               f"{shape[3]} moduli) does not match the context (scale 2^{np.log2(scale):.0f}, size 2, "
                               f"N {want[2]}, {want[3]} moduli): refused")
        per_ct = self.cfg.poly_modulus_degree if bfv_scheme else self.slots
        if not last and v.size() != per_ct:
            raise PayloadError(f"ciphertext chunk holds {v.size()} values, not {per_ct}: not built by protect()")

    def validate(self, p: Protected) -> None:
        self._vectors(p, self._public)

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext | None = None) -> Combined:
        """Sum the ciphertexts; a payload that fails to load, verify or add is left out
        (``Combined.excluded``), and BFV sums no more than ``max_owners`` (the bound its step is made
        for). Besides the sum, the payload holds the round's signed updates (``ROUND_UPDATES``):
        what the server keeps, and what owners check and add themselves."""
        total, excluded, signed, boxes = None, {}, {}, []
        for who, p in payloads.items():
            try:
                vecs, parts = self._vectors(p, self._public)
                if parts is not None and parts.kind != b"u":
                    raise PayloadError("a BFV payload that is not an owner's update cannot be added: refused")
                if parts is not None and len(boxes) >= self.cfg.owners:
                    raise PayloadError(f"over aggregation.max_owners={self.cfg.owners} updates in one sum (the BFV "
                                       "step is made for that many): left out")
                self._check_update(who, p, ctx)
                total = vecs if total is None else [acc + v for acc, v in zip(total, vecs, strict=True)]
            except PayloadError as exc:
                excluded[who] = str(exc)
                continue
            except Exception as exc:  # TenSEAL raises bare ValueError ("scale mismatch") and RuntimeError
                excluded[who] = f"ciphertext does not add to the others: {exc}"
                continue
            if parts is not None:
                boxes += parts.boxes
            if p.blobs.get(SIGNATURE):
                signed[who] = (p.blobs["ciphertext"], p.blobs[SIGNATURE])
        if total is None:
            return Combined(Protected(), excluded)
        head = [bfv.header(b"s", self.cfg.step)] if self.cfg.scheme == "bfv" else []
        blobs = self._tag(pack([*head, *(v.serialize() for v in total), *boxes]))
        if signed and ctx is not None:
            blobs[ROUND_UPDATES] = global_codec.RoundUpdates(ctx.round, signed).encode()
        return Combined(Protected(blobs=blobs), excluded)

    def _check_update(self, who: str, p: Protected, ctx: RoundContext | None) -> None:
        """Server: the update must be signed by ``who`` (as announced at key set-up) for this run and round."""
        if self.signers is None or ctx is None:
            return
        if who not in self.signers:
            raise PayloadError(f"'{who}' announced no signing key at key set-up: its update is refused")
        identity.verify(self.signers[who], update_statement(self.run, self.context_id, ctx.round, who,
                                                            p.blobs["ciphertext"]),
                        p.blobs.get(SIGNATURE, b""), f"the round-{ctx.round} update of '{who}'")

    def reveal(self, combined: Protected) -> Revealed:
        if self._secret is None:
            raise UserError(f"this party holds no {self.cfg.scheme.upper()} secret key and cannot decrypt: only data "
                            "owners can")
        vecs, parts = self._vectors(combined, self._secret)
        if parts is None:
            values = np.concatenate([np.asarray(v.decrypt(), np.float64) for v in vecs])
            return Revealed(weighted_sum=values[:-1], total_weight=float(values[-1]))
        n, bits = self.cfg.poly_modulus_degree, self.cfg.plain_modulus_bits
        slots = np.concatenate([np.asarray(v.decrypt(), np.int64) for v in vecs])
        digits = bfv.unpack_slots(slots, bfv.radix(n, bits), bfv.plain_modulus(n, bits), self.size)
        if parts.kind == b"g":
            return Revealed(weighted_sum=digits * parts.step, total_weight=1.0)
        weights = [bfv.open_weight(self._weight_key, b) for b in parts.boxes]
        limit = len(weights) * self.cfg.levels
        if any(w > self.cfg.weight_bound for w in weights) or (digits.size and int(np.abs(digits).max()) > limit):
            raise PayloadError(f"the decrypted sum of {len(weights)} update(s) is beyond what owners within the bound "
                               f"(value_bound {self.cfg.bound:g}, max_weight {self.cfg.weight_bound:g}) can send: an "
                               "owner encoded out of range; refused")
        return Revealed(weighted_sum=digits * parts.step, total_weight=float(sum(weights)))


def clamp_notice(weight: float, delta: np.ndarray, cfg: TensealConfig) -> Optional[str]:
    """The owner's console line when BFV's bounds change what it sends, or None.

    BFV's fixed point holds weights up to ``max_weight`` and values within ``+-value_bound``; an
    owner clamps beyond them (so the federation's sum cannot overflow), which changes its update: a
    larger count weighs like ``max_weight`` in the mean, a larger value moves like ``value_bound``.
    The line goes to the owner's own console, never to the coordinator.
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
    line = f"tenseal (bfv): {'; '.join(notes)} (raise the bound, or clip with train.update_clip_norm)"
    progress(line)
    return line
