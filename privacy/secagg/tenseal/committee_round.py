"""One round of ``tenseal``'s verifier committee, step by step, on the backend objects (free of Flower).

The protocol and the checks are in ``committee.py``; this module is what the round loop
(``server/committee_exchange.py``) and the owner's operations (``client/operations.py``) call, in order
(docs/privacy.md, "tenseal's verifier committee"):

1. owner, with its update: :func:`contribute` (the commitment and the signed contribution beside it);
2. coordinator: :func:`reveal_queries` (each contributor's place in the committed set);
3. owner: :func:`reveal_nonce` (the nonce and its signature over the set it revealed for);
4. coordinator: :func:`draft` (the set, the nonces, the committee), sent with every other signed update
   (:func:`round_updates` with ``leave_out``: the member has its own) to the members only;
5. member: :func:`attest_round` (its signature; it keeps the sum it computed);
6. coordinator: :func:`certify` (the sum in owner order and the full certificate with every reveal signature:
   the pending round owners open with ``TensealOwner.open_global``), kept in the holder by :func:`settle`;
   each owner is sent :func:`round_for` it: an owner outside the round's cohort all of it, another
   contributor the sum and the lean certificate, a member the lean certificate alone (:func:`member_round`:
   it adds the sum from its own copy).

Form ``sum``: the coordinator keeps :func:`sum_round` alone, with no exchange.
"""

from __future__ import annotations

import hashlib

from fedveil.core.io import atomic_write_bytes, pack, unpack
from fedveil.core.payload import PayloadError, Protected
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal import checks, committee, global_codec
from fedveil.privacy.secagg.tenseal.backend import SIGNATURE, TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.keys import run_dir

COMMITMENT = "commitment"  # blobs beside an owner's update: its nonce commitment,
CONTRIBUTION_SIGNATURE = "contribution-signature"  # and its signature over committee.contribution_statement
OWN_UPDATE_FILE = "committee-own-update.bin"  # the run folder: this owner's last signed update (round, blob, sig)


def _record(owner: TensealOwner) -> committee.Record:
    return committee.Record(run_dir(owner.keys.state_dir, owner.run))


def contribute(owner: TensealOwner, server_round: int, update: Protected) -> Protected:
    """``update`` (this owner's signed update of ``server_round``) with its commitment and signed contribution."""
    sha = hashlib.sha256(update.blobs["ciphertext"]).digest()
    commitment, signature = committee.commit(_record(owner), owner.run, owner.context_id, server_round,
                                             owner.keys.owner_id, sha, owner.keys.sign)
    # kept so that, on the committee, it need not download its own update back
    atomic_write_bytes(_own_file(owner), pack([str(server_round).encode(), update.blobs["ciphertext"],
                                               update.blobs[SIGNATURE]]), mode=0o600)
    return Protected(blobs={**update.blobs, COMMITMENT: commitment, CONTRIBUTION_SIGNATURE: signature})


def _own_file(owner: TensealOwner):
    return run_dir(owner.keys.state_dir, owner.run) / OWN_UPDATE_FILE


def _with_own(owner: TensealOwner, updates: global_codec.RoundUpdates) -> global_codec.RoundUpdates:
    """``updates`` with this owner's own signed update of the round added from its copy where the
    coordinator left it out (a wrong copy fails the committed set's digest in ``committee.attest``)."""
    me = owner.keys.owner_id
    path = _own_file(owner)
    if me in updates.signed or not path.is_file():
        return updates
    at, blob, signature = unpack(path.read_bytes())
    if int(at) != updates.round:
        return updates
    return global_codec.RoundUpdates(updates.round, {**updates.signed, me: (blob, signature)})


def contributions_of(payloads: dict[str, Protected]) -> tuple[committee.Contribution, ...]:
    """The coordinator's committed set: each accepted payload's contribution, in owner order."""
    return tuple(committee.Contribution(o, hashlib.sha256(p.blobs["ciphertext"]).digest(), p.blobs[COMMITMENT],
                                        p.blobs[CONTRIBUTION_SIGNATURE]) for o, p in sorted(payloads.items()))


def reveal_queries(server: TensealServer, server_round: int,
                   contributions: tuple[committee.Contribution, ...]) -> dict[str, bytes]:
    return {o: q.encode() for o, q in committee.reveal_queries(server.run, server.context_id, server_round,
                                                               list(contributions)).items()}


def reveal_nonce(owner: TensealOwner, server_round: int, query: bytes) -> tuple[bytes, bytes]:
    """This owner's nonce for ``server_round``, once the query places its own last update in the set, and its
    signature over that set and the nonce (``committee.sign_reveal``)."""
    sent = owner.last_sent()
    if sent is None or sent[0] != server_round:
        raise PayloadError(f"asked to reveal for round {server_round}, for which this owner sent no update: refused")
    nonce = committee.reveal(_record(owner), owner.run, owner.context_id, server_round, owner.keys.owner_id,
                             sent[1], committee.RevealQuery.decode(query))
    return nonce, committee.sign_reveal(_record(owner), owner.run, owner.context_id, server_round,
                                        owner.keys.owner_id, owner.keys.sign)


def draft(server: TensealServer, server_round: int, contributions: tuple[committee.Contribution, ...],
          reveals: dict[str, bytes], checked: bool) -> committee.Certificate:
    """The certificate before its signatures: the set, every nonce, the committee they derive. A nonce
    that does not open its commitment is refused here too (the round has no committee)."""
    cert = committee.Certificate(server_round, contributions, reveals, (), {}, checked)
    members = committee.committee_of(server.run, server.context_id, cert, server.cfg.committee_size)
    return committee.Certificate(server_round, contributions, reveals, members, {}, checked)


def attest_round(owner: TensealOwner, updates: bytes, cert: bytes) -> bytes:
    """A member's signature over the round's sum, after every check (``committee.attest``)."""
    round_updates, certificate = global_codec.RoundUpdates.decode(updates), committee.Certificate.decode(cert)
    if round_updates.round != certificate.round:
        raise PayloadError(f"the committee query mixes round {round_updates.round}'s updates with round "
                           f"{certificate.round}'s set: refused")
    round_updates = _with_own(owner, round_updates)

    def total(checked: bool) -> bytes:
        blob = member_sum(owner, round_updates, checked)
        committee.keep_sum(_record(owner), certificate.round, blob)  # it opens the round from it (member_round)
        return blob

    _, signature = committee.attest(
        _record(owner), owner.roster, owner.run, owner.context_id, owner.keys.owner_id, certificate,
        owner.cfg.committee_size, {o: blob for o, (blob, _) in round_updates.signed.items()}, total, owner.keys.sign)
    return signature


def certify(server: TensealServer, payloads: dict[str, Protected], cert: committee.Certificate,
            signatures: dict[str, bytes], reveal_signatures: dict[str, bytes]) -> bytes:
    """The pending round owners open: the sum of ``payloads`` in owner order (byte for byte the members') and
    the full certificate with every member's signature and every contributor's reveal signature (owners check
    them against their pinned roster; the coordinator holds no roster, only the keys owners announced: a reveal
    signature that fails under those leaves the round uncertified rather than refused by owners outside it)."""
    total = server.combine(dict(sorted(payloads.items())))
    if total.excluded or sorted(payloads) != [c.owner for c in cert.contributions]:
        raise PayloadError("the committed set's updates do not add up to one sum: no certified round")
    missing = sorted(m for m in cert.committee if not signatures.get(m))
    if missing:
        raise PayloadError(f"committee member(s) {missing} did not sign round {cert.round}'s sum: no certified round")
    signed = committee.Certificate(cert.round, cert.contributions, cert.reveals, cert.committee,
                                   {m: signatures[m] for m in cert.committee}, cert.checked,
                                   {c.owner: reveal_signatures.get(c.owner, b"") for c in cert.contributions},
                                   committee.update_root(server.run, server.context_id, cert.round,
                                                         list(cert.contributions)))
    if server.signers is not None:
        set_id = signed.set_id(server.run, server.context_id)
        for c in cert.contributions:
            identity.verify(server.signers.get(c.owner, b""), committee.reveal_statement(
                server.run, server.context_id, cert.round, c.owner, set_id, cert.reveals[c.owner]),
                signed.reveal_signatures[c.owner], f"owner {c.owner}'s reveal signature (no certified round)")
    return committee.certified_round(cert.round, total.payload.blobs["ciphertext"], signed)


def member_round(certified: bytes) -> bytes:
    """What a committee member downloads of :func:`certify`'s round: the lean certificate (every member's
    signature) without the sum, which it computed and keeps (``TensealOwner.open_global`` adds it back)."""
    at, _, cert = committee.certified_of(certified)
    return committee.certified_round(at, b"", cert.lean() if isinstance(cert, committee.Certificate) else cert)


def round_updates(payloads: dict[str, Protected], server_round: int, leave_out: str | None = None) -> bytes:
    """What a member downloads besides the draft: every signed update of the set (``leave_out``: but its own)."""
    return global_codec.RoundUpdates(server_round, {o: (p.blobs["ciphertext"], p.blobs[SIGNATURE])
                                                    for o, p in payloads.items() if o != leave_out}).encode()


def uncommitted(payloads: dict[str, Protected]) -> list[str]:
    """The owners whose payload carries no commitment (so the round has no committed set)."""
    return sorted(o for o, p in payloads.items()
                  if not (p.blobs.get(COMMITMENT) and p.blobs.get(CONTRIBUTION_SIGNATURE)))


def sum_round(server: TensealServer, payloads: dict[str, Protected], server_round: int) -> bytes:
    """Form ``sum``: the pending round as the sum of ``payloads`` in owner order alone, with no certificate
    (owners whose policy says other owners do not poison open it)."""
    total = server.combine(dict(sorted(payloads.items())))
    if total.excluded:
        raise PayloadError(f"round {server_round}'s updates do not add up: {sorted(total.excluded.values())[0]}")
    return committee.certified_round(server_round, total.payload.blobs["ciphertext"], None)


def settle(holder: global_codec.EncryptedGlobal, server_round: int, blob: bytes) -> None:
    """Keep ``blob`` (:func:`certify` or :func:`sum_round`) as round ``server_round``'s pending entry in place
    of its signed updates (``global_codec.RoundUpdates``), which must be the holder's last."""
    last = holder.pending[-1] if holder.pending else b""
    if committee.certified_of(last) is not None or global_codec.RoundUpdates.decode(last).round != server_round:
        raise PayloadError(f"the holder's last pending round is not round {server_round}'s signed updates: kept as is")
    holder.pending[-1] = blob


def round_for(blob: bytes, owner: str) -> bytes:
    """A certified round (:func:`certify`, its full certificate) as ``owner`` needs it: a member of its
    committee the lean certificate without the sum (it computed the sum and keeps it); another contributor the
    sum and the lean certificate; an owner outside the round's cohort all of it. Anything else as it is."""
    return RoundForms(blob).for_owner(owner)


class RoundForms:
    """One pending round as each role needs it (:func:`round_for`), the blob parsed once and each form built
    once: the holder serves a round to up to every owner of the federation."""

    def __init__(self, blob: bytes) -> None:
        self.blob, self.forms = blob, {}
        certified = committee.certified_of(blob)
        full = certified is not None and isinstance(certified[2], committee.Certificate) and certified[2].updates_root
        self.certified = certified if full else None
        self.contributors = frozenset(c.owner for c in certified[2].contributions) if full else frozenset()
        self.committee = frozenset(certified[2].committee) if full else frozenset()

    def role(self, owner: str) -> str:
        """``member``, ``contributor`` or ``outside`` (every other owner, and anything not a certified round)."""
        return "member" if owner in self.committee else "contributor" if owner in self.contributors else "outside"

    def for_owner(self, owner: str) -> bytes:
        role = self.role(owner)
        if role == "outside":
            return self.blob
        if role not in self.forms:
            at, total, cert = self.certified
            self.forms[role] = committee.certified_round(at, b"" if role == "member" else total, cert.lean())
        return self.forms[role]


def member_sum(backend: TensealOwner, updates: global_codec.RoundUpdates, checked: bool) -> bytes:
    """A member's sum of a round's signed updates (each signature checked against the pinned roster,
    each update within the bounds first where ``checked``): the ciphertext blob the server's sum must equal
    (the same updates, added in owner order, serialize to the same bytes)."""
    payloads = backend._checked_round(updates)
    if checked:
        checks.check_round(backend, payloads, updates.round)
    total = backend.combine(dict(sorted(payloads.items())))
    if total.excluded:
        raise PayloadError(f"round {updates.round}'s updates do not add up: {sorted(total.excluded.values())[0]}")
    return total.payload.blobs["ciphertext"]
