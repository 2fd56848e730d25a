"""``tenseal``: homomorphic encryption (BFV by default, or CKKS); the server adds ciphertexts it cannot read.

Flower-free core of the backend: context creation, encrypting a weighted update, summing
ciphertexts, decrypting the sum, and the owner's view of the encrypted global adapter. The
parameters (insecure ones refused, BFV's chosen for the cohort) are in ``config.py``; the owners'
check of every update of a round in ``checks.py``; key generation and installing in ``keys.py``;
the arrays the server keeps of the encrypted global in ``global_codec.py``.

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
from pathlib import Path

import numpy as np

from fedveil.core.errors import UserError
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal import bfv, checks, global_codec
from fedveil.privacy.secagg.tenseal.config import (MAX_COEFF_BITS_128, SCHEMES, TensealConfig,  # noqa: F401 (API)
                                                   clamp_notice, resolve)

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
        t = parms.plain_modulus().value() if scheme == "bfv" else 0  # CKKS has none (SEAL throws on asking)
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
        else:  # owners check every update against these bounds (checks.py): clamp to them as BFV does
            clamp_notice(weight, delta, self.cfg)
            weight = min(max(float(weight), 0.0), self.cfg.weight_bound)
            values = weight * np.clip(np.asarray(delta, np.float64), -self.cfg.bound, self.cfg.bound)
            blob = self._encrypt(np.concatenate([values, [weight]]))
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
        else:  # a global: never summed, so the whole digit, at a step of public values only (never max|global|)
            limit, step, values = (r - 1) // 2, cfg.global_step, delta
            if delta.size and float(np.abs(delta).max()) > cfg.global_limit:
                raise UserError(f"the global adapter holds values beyond aggregation.global_bound="
                                f"{cfg.global_limit:g}, the public bound its encoding is made for: raise "
                                "aggregation.global_bound")
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
        for at, payloads in enumerate(rounds, start=reached - len(rounds) + 1):
            checks.check_round(self, payloads, at)  # each update within an owner's bounds, before any is added
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
