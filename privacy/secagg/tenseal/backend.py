"""``tenseal``: homomorphic encryption (BFV by default, or CKKS); the server adds ciphertexts it cannot read.

The backend, free of Flower: :class:`TensealServer` (the public context only: checks and sums
ciphertexts) and :class:`TensealOwner` (the secret context: encrypts, decrypts, opens the
encrypted global). The encodings are in ``bfv.py`` and ``ckks.py``; contexts in ``context.py``;
the parameters (insecure ones refused, BFV's chosen for the cohort) in ``config.py``; the owners'
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
from typing import Any, Callable

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import Refusal, UserError
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal import bfv, checks, ckks, committee, eval_pair, global_codec, kept
from fedveil.privacy.secagg.tenseal.config import TensealConfig, clamp
from fedveil.privacy.secagg.tenseal.context import cached_context, check_parameters, context_id
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES
from fedveil.privacy.secagg.tenseal.keys import run_dir

SIGNATURE = "signature"  # blob of a payload: the owner's Ed25519 signature over update_statement
SENT_FILE = "sent.json"  # the run's folder of keys.run_dir: the round and SHA-256 of this owner's last update


def global_statement(run: str, cid: str, after_round: int, blob: bytes) -> bytes:
    """What the re-encrypting owner signs: Enc(global after ``after_round``) of ``run`` under context ``cid``."""
    return identity.digest(b"fedveil/tenseal-global/v2", run.encode(), cid.encode(), str(after_round).encode(), blob)


def update_statement(run: str, cid: str, server_round: int, owner: str, blob: bytes) -> bytes:
    """What an owner signs with its update: ``blob``, its ciphertext of round ``server_round`` of ``run``
    under ``cid``."""
    return identity.digest(b"fedveil/tenseal-update/v1", run.encode(), cid.encode(), str(server_round).encode(),
                           owner.encode(),
                           hashlib.sha256(blob).digest())


def verify_global(verify_key: bytes, run: str, cid: str, base: global_codec.SignedBase) -> None:
    identity.verify(verify_key, global_statement(run, cid, base.round, base.blob), base.signature,
                    f"the encrypted global of round {base.round} (signer {base.signer})")


class _Side:
    """What both sides share: the public context (checked against the config), reading and
    checking payloads, and summing them. ``run`` is the run the context was made for."""

    name = "tenseal"
    server_can_reveal = False
    server_sees_updates = False  # does the coordinator see single updates (and their norms, counts)?

    def __init__(self, cfg: TensealConfig | None, size: int | None, public: bytes, run: str) -> None:
        self.cfg, self.size, self.run = cfg or TensealConfig(), size, run
        self.context_id = context_id(public)
        self._public = cached_context(public)[0]
        if self._public.is_private():
            raise PayloadError("the context given as public holds a secret key; pass public_bytes(ctx)")
        check_parameters(self._public, self.cfg)

    def round_config(self) -> dict[str, str]:
        return {}

    def payload_of(self, ciphertext: bytes) -> Protected:
        """A payload around ciphertext bytes received from the server (tags recomputed here)."""
        return Protected(blobs=self._tag(ciphertext))

    def _tag(self, blob: bytes) -> dict[str, bytes]:
        return {"ciphertext": blob, "context-id": self.context_id.encode(), "sha256": hashlib.sha256(blob).digest()}

    def _vectors(self, p: Protected, ctx) -> tuple[list, bfv.Parts | None]:
        """The payload's ciphertexts, checked; and, BFV, its header and sealed weights."""
        import tenseal as ts  # lazy: the registry imports this module in every run; only tenseal runs load SEAL

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
            parts = bfv.read_parts(chunks, self.size, self.cfg)
            chunks = chunks[1 : 1 + parts.ciphertexts]
        load = ts.bfv_vector_from if self.cfg.scheme == "bfv" else ts.ckks_vector_from
        try:
            vecs = [load(ctx, c) for c in chunks]
        except Exception as exc:
            raise PayloadError(f"ciphertext is unreadable ({exc}): truncated or not a {self.cfg.scheme.upper()} "
                               "vector") from exc
        want = ckks.slots_needed(self.size) if parts is None else bfv.slots_needed(self.size)
        if self.size is not None and sum(v.size() for v in vecs) != want:
            unit, need = ("values", f"{self.size} + 1") if parts is None else ("slots (2 values each)", f"{want}")
            raise PayloadError(
                f"ciphertext holds {sum(v.size() for v in vecs)} {unit}, the adapter layout needs {need}"
            )
        for i, v in enumerate(vecs):
            self._check_shape(v, last=i == len(vecs) - 1)
        return vecs, parts

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
        per_ct = self.cfg.poly_modulus_degree if bfv_scheme else ckks.slots(self.cfg)
        if not last and v.size() != per_ct:
            raise PayloadError(f"ciphertext chunk holds {v.size()} values, not {per_ct}: not built by protect()")

    def validate(self, p: Protected) -> None:
        self._vectors(p, self._public)

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext | None = None) -> Combined:
        """Sum the ciphertexts; a payload that fails to load, verify or add is left out
        (``Combined.excluded``), and BFV sums no more than ``max_owners`` (the bound its step is made
        for). Besides the sum, the payload holds the round's signed updates (``ROUND_UPDATES``):
        what the server keeps, and what owners check and add themselves. Held-out pairs
        (``ctx.is_eval_pair``): the round's signed pairs, for one owner to reveal (``eval_pair.py``)."""
        if ctx is not None and ctx.is_eval_pair:
            return eval_pair.combine(self, payloads, ctx)
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
        """Whether ``who``'s update may be summed (the server checks signers; owners check pending rounds)."""


class TensealServer(_Side):
    """The server side: ``validate``/``combine``/``check_global`` with the public context only and
    ``signers``, the Ed25519 keys owners announced at key set-up (the server's own filter; owners
    never rely on it). It cannot decrypt."""

    def __init__(self, cfg: TensealConfig | None, size: int | None = None, *, public: bytes, run: str = "",
                 signers: dict[str, bytes] | None = None) -> None:
        super().__init__(cfg, size, public, run)
        self.signers = signers

    def _check_update(self, who: str, p: Protected, ctx: RoundContext | None) -> None:
        """The update must be signed by ``who`` (as announced at key set-up) for this run and round."""
        if self.signers is None or ctx is None:
            return
        if who not in self.signers:
            raise PayloadError(f"'{who}' announced no signing key at key set-up: its update is refused")
        identity.verify(self.signers[who], update_statement(self.run, self.context_id, ctx.round, who,
                                                            p.blobs["ciphertext"]),
                        p.blobs.get(SIGNATURE, b""), f"the round-{ctx.round} update of '{who}'")

    def check_global(self, base: global_codec.SignedBase) -> None:
        """Refuse a re-encrypted global not signed, for this run and round, by the owner it names."""
        if self.signers is None:
            raise UserError("the server side holds no owner keys from the key set-up: it cannot check a global")
        if base.signer not in self.signers or not base.signature:
            raise PayloadError(f"the re-encrypted global names signer '{base.signer}', who announced no key: refused")
        verify_global(self.signers[base.signer], self.run, self.context_id, base)

    def reveal(self, combined: Protected) -> Revealed:
        raise UserError(f"this party holds no {self.cfg.scheme.upper()} secret key and cannot decrypt: only data "
                        "owners can")

    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext | None = None) -> Protected:
        """Refused: the public context could encrypt, but an update the server made up would be its word alone."""
        raise UserError(f"this party holds no {self.cfg.scheme.upper()} secret context and cannot encrypt for the "
                        "federation: only data owners can")


class TensealOwner(_Side):
    """An owner: ``protect``/``reveal``/``open_global``/``encrypt_global`` with the secret context,
    the pinned ``roster`` (whose signatures a global must carry) and its own ``keys`` (to sign its
    updates and a global it re-encrypts); its hooks after evaluating a global
    (``after_evaluate``, ``writes_final_adapter``) answer the server's hand-over
    (``global_codec.EncryptedGlobal.handover``)."""

    def __init__(self, cfg: TensealConfig | None, size: int | None = None, *, public: bytes, secret: bytes,
                 roster: identity.Roster | None = None, keys: identity.OwnerKeys | None = None,
                 run: str = "", malicious_owners: bool = True) -> None:
        """``malicious_owners``: this owner's own view (its policy's: client/operations.py sets it) of whether
        owners may poison; True: it takes a round's sum on a committee's word only if every update was
        range-checked; False: also the coordinator's sum alone (form ``sum``)."""
        super().__init__(cfg, size, public, run)
        self.malicious_owners = malicious_owners
        self.min_contributions = 0  # dp=owner_level: the owner's t, a floor on each sum (checks.check_contributions)
        self.decode: Callable[[Revealed], Revealed] = lambda r: r  # dp=owner_level: integers over gamma (decode_sum)
        # keys derived from the secret context as loaded (its serialization changes once it has decrypted)
        self._secret, canonical = cached_context(secret)
        self._weight_key = None  # BFV: the key owners seal their weights with
        if self.cfg.scheme == "bfv":
            self._weight_key = bfv.count_key(canonical)
        self._pair_key = eval_pair.pair_key(canonical)  # the key held-out pairs are boxed with
        self.roster, self.keys = roster, keys

    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext | None = None) -> Protected:
        """Enc(n_k delta_k) and n_k (BFV: fixed point, the weight sealed beside it; CKKS: the weight in
        one extra slot); signed by this owner for ``ctx``'s round where it has keys (owners always do).
        The owner clamps its weight to ``max_weight`` and each value to ``+-value_bound`` first (owners
        check every update against these bounds: ``checks.py``). A held-out pair (``ctx.is_eval_pair``:
        ``delta = [loss]``, weight its tokens) is boxed and signed as ``eval_pair.py`` says."""
        if ctx is not None and ctx.is_eval_pair:
            return eval_pair.protect(self, float(np.asarray(delta).reshape(-1)[0]), weight, ctx)
        if self.cfg.scheme == "bfv":
            blob = self._encrypt_bfv(np.asarray(delta, np.float64), weight)
        else:
            weight, values = clamp(delta, weight, self.cfg)
            blob = self._encrypt(ckks.with_weight(values, weight))
        tags = self._tag(blob)
        if self.keys is not None and ctx is not None:
            if ctx.owner != self.keys.owner_id:
                raise UserError(f"round context names owner '{ctx.owner}', but these keys are '{self.keys.owner_id}'")
            tags[SIGNATURE] = self.keys.sign(update_statement(self.run, self.context_id, ctx.round, ctx.owner, blob))
            record = {"run": self.run, "round": ctx.round, "sha256": hashlib.sha256(blob).hexdigest()}
            atomic_write_bytes(self._sent_file, json.dumps(record).encode())
        return Protected(blobs=tags)

    def _encrypt(self, values: np.ndarray) -> bytes:
        """CKKS ciphertexts of ``values`` (the weight slot included)."""
        return ckks.encrypt(self._secret, values, self.cfg)

    def _encrypt_bfv(self, delta: np.ndarray, weight: float, kind: bytes = b"u") -> bytes:
        """BFV blob of an update (clamped here) or (``kind=b"g"``) of the global."""
        if kind != b"u":
            return bfv.encrypt(self._secret, delta, self.cfg, kind)
        weight, values = clamp(delta, weight, self.cfg)
        return bfv.encrypt(self._secret, values, self.cfg, kind, self._weight_key, weight)

    def last_sent(self) -> tuple[int, bytes] | None:
        """(round, SHA-256 of the ciphertext) of this owner's last update of this run; None: none."""
        if self.keys is None or not self._sent_file.is_file():
            return None
        sent = json.loads(self._sent_file.read_text())
        return (int(sent["round"]), bytes.fromhex(sent["sha256"])) if sent.get("run") == self.run else None

    @property
    def _sent_file(self) -> Path:
        folder = run_dir(self.keys.state_dir, self.run)  # per run: another run's update never hides this one's
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / SENT_FILE

    def open_global(self, arrays: dict[str, np.ndarray], initial: np.ndarray, after_round: int) -> np.ndarray:
        """The global adapter after round ``after_round`` from the server's ciphertexts: ``Dec(base)``
        (without a base: the seed-derived initial adapter every owner computes itself, or the global
        this owner kept when it last opened one, ``kept.py``) plus the mean delta of each pending
        round, which this owner adds up itself from the owners' signed updates. Every signature is
        checked against the pinned roster, bound to this run and to the round it claims, and the
        rounds must run on from the base (or the kept round) to exactly ``after_round``: a forged,
        altered, stale or replayed global is refused, as is a round that leaves out this owner's own
        update. Everything is checked before anything is decrypted; what it opens, it keeps."""
        if self.roster is None:
            raise UserError("no pinned roster: this owner cannot check who encrypted the global adapter")
        base, pending = global_codec.from_arrays(arrays)
        decoded = [_pending_round(blob) for blob in pending]
        start = None
        if base is not None:
            self._check_signed(base)
            reached = base.round
        else:  # round 0 is every owner's own; a later round only as this owner kept it
            reached = decoded[0][0] - 1 if decoded else after_round
            if reached != 0:
                start = kept.start_of(self._kept(), reached, after_round)
        rounds = []
        for at, updates, certified in decoded:
            if at != reached + 1:
                raise PayloadError(f"the encrypted global's pending round {at} does not follow round "
                                   f"{reached}: stale or replayed; refused")
            rounds.append(self._checked_round(updates) if certified is None else self._certified(*certified))
            reached = at
        if reached != after_round:
            raise PayloadError(f"the encrypted global reaches round {reached} (signed base + {len(pending)} pending "
                               f"rounds), not round {after_round}: stale or replayed; refused")
        if base is not None:
            vector = self.reveal(self.payload_of(base.blob)).mean
        else:
            vector = np.asarray(initial if start is None else start, np.float32)
        for at, payloads in enumerate(rounds, start=reached - len(rounds) + 1):
            if isinstance(payloads, Protected):  # a sum the round's verifier committee checked and signed
                vector = self.decode(self.reveal(payloads)).applied_to(vector)
                continue
            # each update within an owner's bounds, then the sum of the plaintexts checked (no Enc(sum) to decrypt)
            vector = self.decode(checks.checked_sum(self, payloads, at)).applied_to(vector)
        if self.keys is not None:
            kept.keep(run_dir(self.keys.state_dir, self.run), self.run, self.context_id, after_round,
                      kept.as_reencrypted(vector, self.cfg))
        return vector

    def _kept(self) -> kept.Kept | None:
        if self.keys is None:
            return None
        return kept.kept(run_dir(self.keys.state_dir, self.run), self.run, self.context_id, self.size)

    def _certified(self, at: int, sum_blob: bytes, cert: committee.Certificate | None) -> Protected:
        """A round's sum on its verifier committee's word, checked (``committee.verify``): updates
        range-checked by the committee, as this owner cannot check them itself."""
        if cert is None and not self.malicious_owners and not self.min_contributions:  # form sum: this owner's
            return self.payload_of(sum_blob)  # policy trusts owners, the coordinator is at most curious; no t to count
        if cert is None or self.keys is None:  # the sum alone: the coordinator's word, and nobody checked updates
            raise Refusal("bad-global", f"pending round {at} is a sum without a committee's certificate: this owner "
                                        "accepts a sum only on a verifier committee's word", check="committee-sum")
        record = committee.Record(run_dir(self.keys.state_dir, self.run))
        sum_blob = sum_blob or committee.kept_sum(record, at)  # a member's round comes without the sum it computed
        committee.verify(record, self.roster, self.run, self.context_id, self.keys.owner_id, cert,
                         self.cfg.committee_size, sum_blob, require_checked=self.malicious_owners)
        checks.check_contributions(cert.owners, self.min_contributions, at)  # the set the members signed
        return self.payload_of(sum_blob)

    def _checked_round(self, updates: global_codec.RoundUpdates) -> dict[str, Protected]:
        """One pending round's updates, each checked as its owner's for this run and round."""
        for owner, (blob, signature) in updates.signed.items():
            member = self.roster.member(owner, f"an update of pending round {updates.round} names owner")
            identity.verify(member.verify_key, update_statement(self.run, self.context_id, updates.round, owner, blob),
                            signature, f"owner {owner}'s update in pending round {updates.round}")
        if self.keys is not None and self._sent_file.is_file():
            sent = json.loads(self._sent_file.read_text())
            mine = updates.signed.get(self.keys.owner_id, (b"", b""))[0]
            if (sent.get("run"), sent.get("round")) == (self.run, updates.round) and\
                    hashlib.sha256(mine).hexdigest() != sent.get("sha256"):
                raise PayloadError(f"pending round {updates.round} leaves out this owner's own update "
                                   f"(the server dropped it, or it arrived after the round closed): refused")
        checks.check_contributions(updates.signed, self.min_contributions, updates.round)  # each signature checked
        return {owner: self.payload_of(blob) for owner, (blob, _) in updates.signed.items()}

    def _check_signed(self, base: global_codec.SignedBase) -> None:
        if not base.signature or not base.signer or base.round < 1:
            raise PayloadError("the encrypted global carries no owner's signature (the server could have encrypted "
                               "it): refused")
        member = self.roster.member(base.signer, "the encrypted global's signer")
        verify_global(member.verify_key, self.run, self.context_id, base)

    def encrypt_global(self, vector: np.ndarray, after_round: int) -> tuple[bytes, bytes]:
        """(Enc(global after ``after_round``), this owner's signature over it) for the server to hold
        between rounds (weight 1: it decrypts to itself)."""
        if self.keys is None:
            raise UserError("this owner has no signing key: it cannot re-encrypt the global for the server")
        if self.cfg.scheme == "bfv":
            blob = self._encrypt_bfv(np.asarray(vector, np.float64), 1.0, kind=b"g")
        else:
            blob = self._encrypt(ckks.with_weight(vector, 1.0))
        return blob, self.keys.sign(global_statement(self.run, self.context_id, after_round, blob))

    def after_evaluate(self, global_vector: np.ndarray, per_round: dict[str, Any], owner_id: str,
                       after_round: int) -> Protected | None:
        """The global after ``after_round`` re-encrypted and signed (:meth:`encrypt_global`) when
        the server asked this owner for it (``wire.REENCRYPT_BY``); None otherwise."""
        if per_round.get(wire.REENCRYPT_BY) != owner_id:
            return None
        blob, signature = self.encrypt_global(global_vector, after_round)
        return Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})

    def writes_final_adapter(self, per_round: dict[str, Any]) -> bool:
        """In the last round (``wire.FINAL_ADAPTER``): the server holds no plaintext global to write."""
        return bool(per_round.get(wire.FINAL_ADAPTER))

    def reveal_eval_mean(self, combined: Protected, ctx: RoundContext) -> float:
        """The token-weighted held-out loss of the round's signed pairs, after every check (``eval_pair.py``)."""
        return eval_pair.reveal_mean(self, combined, ctx)

    def reveal(self, combined: Protected) -> Revealed:
        vecs, parts = self._vectors(combined, self._secret)
        if parts is None:
            values, weight = ckks.decode(vecs)
        else:
            values, weight = bfv.decode(vecs, parts, self.cfg, self.size, self._weight_key)
        return Revealed(weighted_sum=values, total_weight=weight)


def _pending_round(blob: bytes) -> tuple[int, global_codec.RoundUpdates | None, tuple | None]:
    """(round, its signed updates or None, (round, sum blob, certificate) of a certified round or None)."""
    certified = committee.certified_of(blob)  # None: a round of every owner's signed update
    if certified is not None:
        return certified[0], None, certified
    updates = global_codec.RoundUpdates.decode(blob)
    return updates.round, updates, None
