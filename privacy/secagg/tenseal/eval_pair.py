"""``tenseal``'s held-out pair: sealed under the federation's secret context, revealed by one owner as a mean.

Without DP each owner sends its pair ``(loss x tokens, tokens)`` in a libsodium secret box under a
key derived (HKDF) from the shared secret context, which the server does not hold, signed with the
owner's Ed25519 key over (run, context id, round, owner, purpose, SHA-256 of the box)
(:func:`pair_statement`; an update's statement has another tag, so neither passes for the other).
The server checks the signatures against the keys owners announced (its own filter) and keeps the
round's signed pairs (:func:`combine`); it cannot open them. After the evaluate exchange it sends
them to one owner (``wire.QUERY_EVALSUM``), which (:func:`reveal_mean`):

- checks every signature against its pinned roster, for this run, context and round (a pair of
  another round, owner or purpose is refused: code ``bad-update``, the owner named);
- refuses a set that leaves out its own pair, as it sent it (``bad-update``), or holds fewer than
  :data:`MIN_OWNERS` owners (``limit``): a mean of one owner's pair would be that owner's loss;
- answers once per round of a run (``replay``), so the coordinator cannot difference two subsets;
- opens, sums and replies with the token-weighted mean only: a ratio, no count.

Why a box and not a BFV or CKKS ciphertext: owners share the secret key, so the owner that sums
could open every pair either way (as it can decrypt every update); a box is 56 bytes, exact in
float64, and the same for both schemes. What the sum hides is hidden from the coordinator.
Caveat (as for updates): a malicious coordinator chooses which signed pairs (at least
:data:`MIN_OWNERS`, the revealing owner's among them) go into the one mean per round it obtains.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from fedveil.core.errors import Refusal
from fedveil.core.io import atomic_write_bytes
from fedveil.core.payload import Combined, PayloadError, Protected, RoundContext
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal.global_codec import RoundUpdates
from fedveil.privacy.secagg.tenseal.keys import run_dir

PAIR, SIGNATURE, PAIRS = "pair", "signature", "pairs"  # blobs of one owner's pair; the server's combined pairs
MIN_OWNERS = 2  # the revealing owner refuses a mean over fewer owners
PAIR_VALUES = struct.Struct("<dd")  # loss x tokens, tokens
PAIR_BYTES = 24 + 16 + PAIR_VALUES.size + 64  # secret box (nonce, MAC, two float64) + Ed25519 signature
SENT_FILE = "eval-sent.json"  # the run's folder of keys.run_dir: round and SHA-256 of this owner's last pair
REVEALED_FILE = "eval-revealed.json"  # the last round this owner revealed a mean for


def pair_statement(run: str, cid: str, server_round: int, owner: str, box: bytes) -> bytes:
    """What an owner signs with its held-out pair of round ``server_round``."""
    return identity.digest(b"fedveil/tenseal-eval-pair/v1", run.encode(), cid.encode(), str(server_round).encode(),
                           owner.encode(), hashlib.sha256(box).digest())


def pair_key(secret: bytes) -> bytes:
    """The key the pairs are boxed with: HKDF-SHA256 of the shared secret context's bytes (as loaded; another
    label than BFV's weight key)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedveil/tenseal-eval-pair/v1").derive(secret)


def protect(owner, loss: float, tokens: float, ctx: RoundContext) -> Protected:
    """``owner`` (a ``TensealOwner``): its boxed, signed pair for ``ctx``'s round, noted as sent."""
    if owner.keys is None or ctx.owner != owner.keys.owner_id:
        raise Refusal("keys", f"no signing key for owner '{ctx.owner}': its held-out pair cannot be signed")
    box = bytes(SecretBox(owner._pair_key).encrypt(PAIR_VALUES.pack(float(loss) * float(tokens),
                                                                            float(tokens))))
    signature = owner.keys.sign(pair_statement(owner.run, owner.context_id, ctx.round, ctx.owner, box))
    record = {"run": owner.run, "round": ctx.round, "sha256": hashlib.sha256(box).hexdigest()}
    atomic_write_bytes(_folder(owner) / SENT_FILE, json.dumps(record).encode())
    return Protected(blobs={PAIR: box, SIGNATURE: signature})


def combine(server, payloads: dict[str, Protected], ctx: RoundContext) -> Combined:
    """The server's side: the round's signed pairs, each checked against the key its owner announced."""
    signed, excluded = {}, {}
    for who, p in payloads.items():
        box, signature = p.blobs.get(PAIR), p.blobs.get(SIGNATURE)
        try:
            if not (isinstance(box, bytes) and len(box) == PAIR_BYTES - 64 and isinstance(signature, bytes)):
                raise PayloadError("a held-out pair is not one signed box")
            if server.signers is not None:
                if who not in server.signers:
                    raise PayloadError(f"'{who}' announced no signing key at key set-up")
                identity.verify(server.signers[who], pair_statement(server.run, server.context_id, ctx.round, who, box),
                                signature, f"the round-{ctx.round} held-out pair of '{who}'")
        except PayloadError as exc:
            excluded[who] = str(exc)
            continue
        signed[who] = (box, signature)
    blobs = {PAIRS: RoundUpdates(ctx.round, signed).encode()} if signed else {}
    return Combined(Protected(blobs=blobs), excluded)


def reveal_mean(owner, combined: Protected, ctx: RoundContext) -> float:
    """``owner`` (a ``TensealOwner``) checks the round's signed pairs and returns their token-weighted
    mean; any check that fails refuses with a code (module docstring)."""
    if owner.roster is None:
        raise Refusal("roster", "no pinned roster: this owner cannot check whose held-out pairs it sums")
    try:
        pairs = RoundUpdates.decode(combined.blobs.get(PAIRS, b""))
    except PayloadError as exc:
        raise Refusal("bad-update", f"the held-out pairs of round {ctx.round} are unreadable: {exc}") from exc
    if pairs.round != ctx.round:
        raise Refusal("replay", f"held-out pairs of round {pairs.round} presented as round {ctx.round}: refused")
    for who, (box, signature) in sorted(pairs.signed.items()):
        try:
            member = owner.roster.member(who, "a held-out pair names owner")
            identity.verify(member.verify_key, pair_statement(owner.run, owner.context_id, ctx.round, who, box),
                            signature, f"owner {who}'s held-out pair of round {ctx.round}")
        except PayloadError as exc:
            raise Refusal("bad-update", f"{exc}", owner=who) from exc
    sent = _read(_folder(owner) / SENT_FILE)
    mine = pairs.signed.get(ctx.owner, (b"", b""))[0]
    if (sent.get("run"), sent.get("round"), sent.get("sha256")) != (owner.run, ctx.round,
                                                                   hashlib.sha256(mine).hexdigest()):
        raise Refusal("bad-update", f"the held-out pairs of round {ctx.round} leave out this owner's own: refused",
                      owner=ctx.owner)
    if len(pairs.signed) < MIN_OWNERS:
        raise Refusal("limit", f"{len(pairs.signed)} held-out pair(s) in round {ctx.round}: a mean of fewer than "
                      f"{MIN_OWNERS} owners is one owner's loss; refused", limit="eval_min_owners")
    revealed = _folder(owner) / REVEALED_FILE
    last = _read(revealed)
    if last.get("run") == owner.run and int(last.get("round", -1)) >= ctx.round:
        raise Refusal("replay", f"this owner already revealed the held-out loss of round {last['round']}: refused")
    atomic_write_bytes(revealed, json.dumps({"run": owner.run, "round": ctx.round}).encode())  # before any is opened
    box_of = SecretBox(owner._pair_key)
    summed, tokens = 0.0, 0.0
    for who, (box, _) in sorted(pairs.signed.items()):
        try:
            lt, t = PAIR_VALUES.unpack(box_of.decrypt(box))
        except (CryptoError, struct.error, ValueError) as exc:
            raise Refusal("bad-update", f"owner {who}'s held-out pair does not open", owner=who) from exc
        if not (math.isfinite(lt) and math.isfinite(t) and t > 0 and lt >= 0):
            raise Refusal("bad-update", f"owner {who}'s held-out pair ({lt:g}, {t:g}) is out of range", owner=who)
        summed, tokens = summed + lt, tokens + t
    return summed / tokens


def _folder(owner):
    folder = run_dir(owner.keys.state_dir, owner.run)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _read(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
