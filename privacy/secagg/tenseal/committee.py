"""``tenseal``'s verifier committee: a few owners check a round's updates and sign its sum; the rest check them.

Without it every owner downloads every cohort member's signed update (linear in the cohort). With
it (docs/privacy.md, "tenseal's verifier committee"):

1. with its update, an owner commits to 32 fresh bytes from its CSPRNG (:func:`commit`): the SHA-256
   of that nonce, signed with the update's digest (:func:`contribution_statement`);
2. the coordinator shows every contributor its place in the committed set (:class:`RevealQuery`: a
   Merkle path in each of the set's two trees, over (owner, commitment) and over (owner, update
   digest): ``committed_set.py``); an owner whose own contribution is in both records the set's digest
   for the round, once (a second, other set for the round is refused) and reveals its nonce with its
   signature over that set's digest and the nonce (:func:`reveal`, :func:`sign_reveal`);
3. the committee is the ``c`` contributors ranked first by SHA-256(seed, owner id), the seed being the
   SHA-256 of the set digest and every contributor's revealed nonce (:func:`select`): nobody knows it
   before the last honest nonce is out, and by then the set is fixed;
4. each member gets the full :class:`Certificate` and every other signed update (it has its own), checks
   every contribution against the pinned roster and every update (and, unless the run says owners are
   honest, each against the bounds: ``checks.py``), adds them and signs one :func:`sum_statement` per
   round (run, context, round, roster digest, set digest, the sum's SHA-256, the committee, whether
   updates were range-checked): a second, other statement for the round is refused (:func:`attest`);
5. every other contributor gets the sum and a :class:`LeanCertificate` (names, nonces, the update digests'
   root, the members' signatures) and checks it (:func:`verify`): the set the one it revealed for (so its
   own update is in it), the committee the one derived, and all ``c`` members' signatures on one
   statement naming this sum. It does not check the contributions' signatures: an honest member refuses
   a set with a bad one, so a set with one gets all ``c`` signatures only from an all-colluding
   committee, which could certify any sum anyway;
6. an owner that did not contribute to the round (its own record holds no nonce for it) revealed for no
   set, so it gets the full :class:`Certificate` with every contributor's reveal signature and checks
   all of it: each contribution and each reveal signature (over this set's digest and the nonce) against
   the pinned roster, then the committee and the members' signatures as above. An honest owner signs a
   reveal for one set per round, so a set assembled after the reveals (honest contributions kept, colluders'
   commitments chosen to grind the committee) carries no honest owner's reveal signature: it can only be
   made of colluders, which a coordinator could pick as the cohort anyway (docs/privacy.md).

Everything here is free of Flower and of TenSEAL (the member's decryption and sum are the
backend's, passed in); refusals carry the code ``bad-global`` with ``check=committee-*``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fedveil.core.errors import Refusal
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal.committed_set import (Contribution, RevealQuery, commitment_of,
                                                           contribution_statement, digest_of, leaf,
                                                           reveal_statement, root_from, set_digest, set_id_of,
                                                           update_root)
from fedveil.privacy.secagg.tenseal.committed_set import reveal_queries as reveal_queries  # the coordinator's step
from fedveil.privacy.secagg.tenseal.config import MIN_COMMITTEE_SIZE
from fedveil.privacy.secagg.tenseal.keys import roster_digest

NONCE_BYTES = 32
# An owner's own floor on the committee (the size travels in the run config, which the coordinator writes):
# one member would make grinding m/n per try; fewer contributors than this make the committee all of them
MIN_SIZE = MIN_COMMITTEE_SIZE
RECORD_FILE = "committee.json"  # in the owner's run folder (keys.run_dir): nonces, sets revealed for, sums signed
SEED_TAG = b"fedveil/committee-seed/v1"
RANK_TAG = b"fedveil/committee-rank/v1"
SUM_TAG = b"fedveil/committee-sum/v1"


def _refuse(check: str, line: str) -> Refusal:
    return Refusal("bad-global", line, check=f"committee-{check}")


def select(set_id: bytes, reveals: dict[str, bytes], size: int) -> tuple[str, ...]:
    """The committee: ``min(size, contributors)`` owners ranked first by SHA-256(seed, owner), the seed
    binding the set and every contributor's revealed nonce (sorted: the order is the derivation's)."""
    seed = identity.digest(SEED_TAG, set_id, *(p for o in sorted(reveals) for p in (o.encode(), reveals[o])))
    ranked = sorted(reveals, key=lambda o: identity.digest(RANK_TAG, seed, o.encode()))
    return tuple(sorted(ranked[:max(1, min(size, len(ranked)))]))


def sum_statement(run: str, cid: str, server_round: int, roster_digest: str, set_id: bytes, sum_sha256: bytes,
                  committee: tuple[str, ...], checked: bool) -> bytes:
    """What every committee member signs, once per round."""
    return identity.digest(SUM_TAG, run.encode(), cid.encode(), str(server_round).encode(), roster_digest.encode(),
                           set_id, sum_sha256, ",".join(committee).encode(), b"checked" if checked else b"summed")


@dataclass(frozen=True)
class Certificate:
    """The committed set in full, what a committee member gets (without signatures: the draft, with every
    signed update) and checks against the roster: every contribution, the revealed nonces, the committee
    and its members' signatures over :func:`sum_statement`. On the wire each commitment is left out: it is
    the SHA-256 of the revealed nonce. The certified round keeps each contributor's ``reveal_signatures``
    (what an owner outside the cohort checks) and the update digests' root (``updates_root``: the holder
    derives the :meth:`lean` form other contributors get from it, knowing no run or context)."""

    round: int
    contributions: tuple[Contribution, ...]
    reveals: dict[str, bytes]
    committee: tuple[str, ...]
    signatures: dict[str, bytes]
    checked: bool
    reveal_signatures: dict[str, bytes] = field(default_factory=dict)
    updates_root: bytes = b""

    def set_id(self, run: str, cid: str) -> bytes:
        return set_digest(run, cid, self.round, list(self.contributions))

    @property
    def owners(self) -> tuple[str, ...]:  # the contributors, as LeanCertificate.owners
        return tuple(c.owner for c in self.contributions)

    def lean(self, run: str = "", cid: str = "") -> "LeanCertificate":
        """What a contributor outside the committee needs of it (:class:`LeanCertificate`); the kept
        ``updates_root`` where there is one (a wrong one fails each contributor's own-set check)."""
        ordered = sorted(self.contributions, key=lambda c: c.owner)
        root = self.updates_root or update_root(run, cid, self.round, list(ordered))
        return LeanCertificate(self.round, tuple(c.owner for c in ordered), dict(self.reveals), root, self.committee,
                               dict(self.signatures), self.checked)

    def encode(self) -> bytes:
        owners = [c.owner for c in self.contributions]
        signed = [m for m in self.committee if self.signatures.get(m)]  # none yet in the members' draft
        revealed = bool(self.reveal_signatures)  # the certified round's full form: one more part per contribution
        head = json.dumps({"round": self.round, "owners": owners, "committee": list(self.committee),
                           "signed": signed, "checked": self.checked,
                           **({"revealed": True} if revealed else {}),
                           **({"root": self.updates_root.hex()} if self.updates_root else {})}).encode()
        parts = [p for c in self.contributions for p in (c.update_sha256, c.signature, self.reveals.get(c.owner, b""),
                                                         *([self.reveal_signatures.get(c.owner) or bytes(64)]
                                                           if revealed else []))]  # none: fails as unsigned
        return pack([head, *parts, *(self.signatures[m] for m in signed)])

    @classmethod
    def decode(cls, blob: bytes) -> "Certificate":
        head, parts, owners, committee, signed = _head(blob, "lean", False)
        at, checked, width = int(head["round"]), bool(head["checked"]), 4 if head.get("revealed") else 3
        try:
            root = bytes.fromhex(str(head.get("root", "")))
        except ValueError as exc:
            raise PayloadError(f"a committee certificate's root is unreadable ({exc}): refused") from exc
        if len(parts) != width * len(owners) + len(signed):
            raise PayloadError(f"a committee certificate lists {len(owners)} owner(s) and {len(signed)} signature(s) "
                               f"but holds {len(parts)} parts: malformed; refused")
        # each commitment is the SHA-256 of the revealed nonce: a wrong nonce fails its owner's signature
        contributions = tuple(Contribution(o, parts[width * i], commitment_of(parts[width * i + 2]),
                                           parts[width * i + 1]) for i, o in enumerate(owners))
        reveals = {o: parts[width * i + 2] for i, o in enumerate(owners)}
        reveal_signatures = {o: parts[width * i + 3] for i, o in enumerate(owners)} if width == 4 else {}
        signatures = dict(zip(signed, parts[width * len(owners):], strict=True))
        return cls(at, contributions, reveals, committee, signatures, checked, reveal_signatures, root)


@dataclass(frozen=True)
class LeanCertificate:
    """What an owner outside the committee gets beside a round's sum: the contributors (owner order), their
    revealed nonces (the commitments are their hashes), the root over the update digests, the committee
    and all its members' signatures. Enough to rebuild the set digest it revealed for (its own update is
    under that root: it checked its path before revealing) and to derive the committee itself; it does not
    check the contributions' signatures: an honest member refuses to sign a set with a bad one, and an
    outsider accepts a sum only with every member's signature."""

    round: int
    owners: tuple[str, ...]
    reveals: dict[str, bytes]
    updates_root: bytes
    committee: tuple[str, ...]
    signatures: dict[str, bytes]
    checked: bool

    def set_id(self, run: str, cid: str) -> bytes:
        return set_id_of(run, cid, self.round, list(self.owners),
                         [commitment_of(self.reveals.get(o, b"")) for o in self.owners], self.updates_root)

    def encode(self) -> bytes:
        signed = [m for m in self.committee if self.signatures.get(m)]
        head = json.dumps({"round": self.round, "owners": list(self.owners), "committee": list(self.committee),
                           "signed": signed, "checked": self.checked, "lean": True}).encode()
        nonces = b"".join(self.reveals.get(o, b"\0" * NONCE_BYTES) for o in self.owners)
        return pack([head, self.updates_root, nonces, *(self.signatures[m] for m in signed)])

    @classmethod
    def decode(cls, blob: bytes) -> "LeanCertificate":
        head, parts, owners, committee, signed = _head(blob, "lean", True)
        if len(parts) != 2 + len(signed) or len(parts[0]) != 32 or len(parts[1]) != NONCE_BYTES * len(owners):
            raise PayloadError(f"a committee certificate lists {len(owners)} owner(s) and {len(signed)} signature(s) "
                               f"but holds {len(parts)} parts of other sizes: malformed; refused")
        reveals = {o: parts[1][NONCE_BYTES * i:NONCE_BYTES * (i + 1)] for i, o in enumerate(owners)}
        return cls(int(head["round"]), tuple(owners), reveals, parts[0], committee,
                   dict(zip(signed, parts[2:], strict=True)), bool(head["checked"]))


def _head(blob: bytes, flag: str, want: bool) -> tuple[dict, list[bytes], list[str], tuple[str, ...], list[str]]:
    """A certificate's JSON head and parts, checked for what both forms share."""
    try:
        head, *parts = unpack(blob)
        claim = json.loads(head)
        owners, committee = [str(o) for o in claim["owners"]], tuple(str(m) for m in claim["committee"])
        signed = [str(m) for m in claim["signed"]]
        int(claim["round"]), bool(claim["checked"])
    except (FramingError, ValueError, KeyError, TypeError) as exc:
        raise PayloadError(f"a committee certificate is unreadable ({exc}): refused") from exc
    if bool(claim.get(flag)) != want or len(set(owners)) != len(owners) or not owners or \
            not set(signed) <= set(committee):
        raise PayloadError(f"a committee certificate lists {len(owners)} owner(s) (or one twice) and "
                           f"{len(signed)} signature(s), or is not the form expected: malformed; refused")
    return claim, parts, owners, committee, signed


AnyCertificate = Certificate | LeanCertificate


def certified_round(server_round: int, sum_blob: bytes, cert: AnyCertificate | None) -> bytes:
    """A pending round as the committee (or, form ``sum``, the coordinator alone) leaves it: the sum's
    ciphertext blob and its certificate (none in form ``sum``). A committee member gets it without the sum
    (``sum_blob`` empty): it computed the sum itself (``committee_round.attest_round`` keeps it)."""
    head = json.dumps({"round": server_round, "certified": cert is not None, "lean": isinstance(cert, LeanCertificate),
                       "sum": bool(sum_blob)}).encode()
    return pack([head, *([sum_blob] if sum_blob else []), *([cert.encode()] if cert is not None else [])])


def certified_of(blob: bytes) -> tuple[int, bytes, AnyCertificate | None] | None:
    """(round, sum blob, certificate or None) of a :func:`certified_round`; None for anything else
    (a round of signed updates: ``global_codec.RoundUpdates`` reads it)."""
    try:
        head, *parts = unpack(blob)
        claim = json.loads(head)
    except (FramingError, ValueError):
        return None
    if not isinstance(claim, dict) or "certified" not in claim:
        return None
    try:
        at, certified, lean = int(claim["round"]), bool(claim["certified"]), bool(claim.get("lean"))
        with_sum = bool(claim.get("sum", True))
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"a certified round is unreadable ({exc}): refused") from exc
    if len(parts) != with_sum + certified or not (with_sum or certified):
        raise PayloadError(f"certified round {at} holds {len(parts)} parts: malformed; refused")
    total = parts[0] if with_sum else b""
    if not certified:
        return at, total, None
    return at, total, (LeanCertificate if lean else Certificate).decode(parts[-1])


class Record:
    """An owner's committee record for one run (its run folder): the nonce it committed to per round,
    the set it revealed for, the statement it signed as a member. Kept on disk so that a restarted
    owner worker still refuses a second set or a second sum for a round."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / RECORD_FILE
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _set(self, kind: str, server_round: int, value: bytes) -> None:
        self.data.setdefault(kind, {})[str(server_round)] = value.hex()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(self.path, json.dumps(self.data, sort_keys=True).encode(), mode=0o600)

    def get(self, kind: str, server_round: int) -> bytes | None:
        value = self.data.get(kind, {}).get(str(server_round))
        return bytes.fromhex(value) if value is not None else None

    def once(self, kind: str, server_round: int, value: bytes, what: str) -> None:
        """Keep ``value`` for the round, or refuse if another one is kept (``what`` names it)."""
        held = self.get(kind, server_round)
        if held is None:
            self._set(kind, server_round, value)
        elif held != value:
            raise _refuse("equivocation", f"round {server_round}: this owner already {what} another one; a second "
                                          "is refused (the coordinator showed owners different rounds)")


def commit(record: Record, run: str, cid: str, server_round: int, owner: str, update_sha256: bytes,
           sign: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """(commitment, signature over the contribution) for this owner's update; the fresh nonce is kept
    in ``record`` until :func:`reveal` (a re-sent update of the round commits to the same nonce)."""
    nonce = record.get("nonce", server_round)
    if nonce is None:
        nonce = secrets.token_bytes(NONCE_BYTES)  # the owner's CSPRNG: never the run's seed
        record.once("nonce", server_round, nonce, "committed to")
    c = commitment_of(nonce)
    return c, sign(contribution_statement(run, cid, server_round, owner, update_sha256, c))


def check_contributions(roster: identity.Roster, run: str, cid: str, server_round: int,
                        contributions: tuple[Contribution, ...]) -> None:
    """Every contribution signed by the pinned owner it names (an added owner, or a nonce swapped on the
    wire, fails here), each owner once."""
    owners = [c.owner for c in contributions]
    if not owners or len(set(owners)) != len(owners):
        raise PayloadError(f"round {server_round}'s committed set is empty or names an owner twice: refused")
    try:
        for c in contributions:
            member = roster.member(c.owner, f"a contribution of round {server_round} names owner")
            identity.verify(member.verify_key, contribution_statement(run, cid, server_round, c.owner,
                                                                      c.update_sha256, c.commitment),
                            c.signature, f"owner {c.owner}'s contribution to round {server_round} (its update digest "
                                         "and the commitment its revealed nonce opens)")
    except PayloadError as exc:
        raise _refuse("contribution", str(exc)) from exc


def reveal(record: Record, run: str, cid: str, server_round: int, owner: str, own_update_sha256: bytes,
           query: RevealQuery) -> bytes:
    """This owner's nonce, once it has seen its own contribution's place in the committed set; the
    set's digest is recorded, and another set for the round is refused (so no set is chosen after the
    reveals). Contributions' signatures are checked with the certificate (:func:`verify`)."""
    nonce = record.get("nonce", server_round)
    if nonce is None or query.round != server_round or not 0 <= query.index < query.count:
        raise _refuse("own-update", f"round {server_round}: asked to reveal a nonce this owner did not commit to "
                                    "(or for another round): refused")
    try:  # its own (owner, commitment) and (owner, update digest) leaves, each up to its root
        commits = root_from(leaf(run, cid, server_round, b"commit", owner, commitment_of(nonce)), query.index,
                       query.count, list(query.path))
        updates = root_from(leaf(run, cid, server_round, b"update", owner, own_update_sha256), query.index, query.count,
                       list(query.update_path))
    except PayloadError as exc:
        raise _refuse("own-update", f"round {server_round}: {exc}") from exc
    record.once("set", server_round, digest_of(query.count, commits, updates), "revealed for")
    return nonce


def sign_reveal(record: Record, run: str, cid: str, server_round: int, owner: str,
                sign: Callable[[bytes], bytes]) -> bytes:
    """This owner's signature over the set it revealed for (:func:`reveal` recorded it: one per round) and its
    nonce, sent beside the nonce: what an owner outside the round's cohort checks (:func:`check_reveals`)."""
    set_id, nonce = record.get("set", server_round), record.get("nonce", server_round)
    if set_id is None or nonce is None:
        raise _refuse("own-update", f"round {server_round}: asked to sign a reveal for no set this owner revealed "
                                    "for: refused")
    return sign(reveal_statement(run, cid, server_round, owner, set_id, nonce))


def check_reveals(roster: identity.Roster, run: str, cid: str, cert: Certificate) -> None:
    """Every contributor's reveal signature, by its pinned key, over this set's digest and its nonce: a set
    the coordinator assembled after the reveals carries no honest owner's (each signs for one set a round)."""
    set_id = cert.set_id(run, cid)
    for c in cert.contributions:
        try:
            identity.verify(roster.member(c.owner, f"a reveal of round {cert.round} names owner").verify_key,
                            reveal_statement(run, cid, cert.round, c.owner, set_id, cert.reveals.get(c.owner, b"")),
                            cert.reveal_signatures.get(c.owner, b""), f"owner {c.owner}'s reveal for this set")
        except PayloadError as exc:
            raise _refuse("reveal", f"round {cert.round}: {exc} (the set is not the one its owners revealed for): "
                                    "refused") from exc


def committee_of(run: str, cid: str, cert: AnyCertificate, size: int) -> tuple[str, ...]:
    """The committee the certificate's set and reveals derive (every nonce under its commitment: in the
    lean form each commitment is its nonce's hash), of ``size`` members; a size below this owner's floor
    (:data:`MIN_SIZE`) is refused."""
    if size < MIN_SIZE:
        raise _refuse("size", f"round {cert.round}: aggregation.committee_size={size} is below this owner's floor of "
                              f"{MIN_SIZE} (one colluding member could certify any sum): refused")
    for c in getattr(cert, "contributions", ()):
        if commitment_of(cert.reveals.get(c.owner, b"")) != c.commitment:
            raise _refuse("reveal", f"round {cert.round}: owner {c.owner}'s revealed nonce does not open its "
                                    "commitment (or is missing): no committee can be derived; refused")
    return select(cert.set_id(run, cid), cert.reveals, size)


def _statement(run: str, cid: str, roster: identity.Roster, cert: AnyCertificate, sum_sha256: bytes) -> bytes:
    return sum_statement(run, cid, cert.round, roster_digest(roster), cert.set_id(run, cid), sum_sha256,
                         cert.committee, cert.checked)


def attest(record: Record, roster: identity.Roster, run: str, cid: str, owner: str, cert: Certificate, size: int,
           updates: dict[str, bytes], total: Callable[[bool], bytes],
           sign: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """A member's (sum SHA-256, signature): ``updates`` (owner -> signed update ciphertext, each
    signature already checked against the pinned roster by the caller) must be exactly the committed
    set's; ``total(checked)`` range-checks them (if ``checked``) and returns their sum's blob. The
    member signs one statement per round."""
    check_contributions(roster, run, cid, cert.round, cert.contributions)
    _own_set(record, run, cid, cert)
    if committee_of(run, cid, cert, size) != cert.committee or owner not in cert.committee:
        raise _refuse("choice", f"round {cert.round}: this owner is asked to attest as a member of committee "
                                f"{list(cert.committee)}, which is not the one the revealed nonces derive: refused")
    want = {c.owner: c.update_sha256 for c in cert.contributions}
    got = {o: hashlib.sha256(b).digest() for o, b in updates.items()}
    if got != want:
        raise _refuse("sum", f"round {cert.round}: the updates given to the committee are not the committed set's "
                             "(an update missing, added or replaced): refused")
    sum_sha256 = hashlib.sha256(total(cert.checked)).digest()
    statement = _statement(run, cid, roster, cert, sum_sha256)
    record.once("signed", cert.round, statement, "signed a committee statement for the round,")
    return sum_sha256, sign(statement)


def verify(record: Record, roster: identity.Roster, run: str, cid: str, owner: str, cert: AnyCertificate, size: int,
           sum_blob: bytes, *, require_checked: bool) -> None:
    """Accept a round's sum on the committee's word, or refuse: the set the one this owner revealed
    for (its own update in it), the committee the one derived, every member's signature on one
    statement naming this sum (``sum_blob``: given, or the one it kept as a member; empty: refused),
    and the updates range-checked where this owner requires it. A full
    :class:`Certificate`'s contributions are checked against the roster too; a :class:`LeanCertificate`
    carries none (the members checked them: docs/privacy.md, "tenseal's verifier committee").

    An owner whose own record holds no nonce for the round (it did not contribute: never what the
    coordinator says) has no set of its own: it takes only the full certificate, every contribution and
    every reveal signature checked (:func:`check_reveals`). An owner that contributed always checks its set."""
    if isinstance(cert, Certificate):
        check_contributions(roster, run, cid, cert.round, cert.contributions)
    if record.get("nonce", cert.round) is not None:
        _own_set(record, run, cid, cert)
    elif isinstance(cert, Certificate):
        check_reveals(roster, run, cid, cert)
    else:
        raise _refuse("outsider", f"round {cert.round}: this owner did not contribute to it, so it needs every "
                                  "contributor's signed reveal (the full certificate), not the lean form: refused")
    if require_checked and not cert.checked:
        raise _refuse("unchecked", f"round {cert.round}'s sum was signed without range-checking each update, and "
                                   "this owner's policy says owners may be malicious: refused")
    if committee_of(run, cid, cert, size) != cert.committee:
        raise _refuse("choice", f"round {cert.round}: committee {list(cert.committee)} is not the one the revealed "
                                "nonces derive (the coordinator chose it): refused")
    if not sum_blob:  # the lean form meant for a member, sent to an owner outside (or one that lost its kept sum)
        raise _refuse("sum", f"round {cert.round} comes without its sum, and this owner keeps no sum of it (the "
                             "form for a member of its committee, which this owner was not): refused")
    statement = _statement(run, cid, roster, cert, hashlib.sha256(sum_blob).digest())
    for member in cert.committee:
        try:
            identity.verify(roster.member(member, "a committee member").verify_key, statement,
                            cert.signatures.get(member, b""), f"committee member {member}'s statement")
        except PayloadError as exc:
            raise _refuse("sum", f"round {cert.round}: committee member {member} did not sign this sum ({exc}): "
                                 "forged or equivocated; refused") from exc


def keep_sum(record: Record, server_round: int, sum_blob: bytes) -> None:
    """A member's sum of the round, kept beside its record: the coordinator sends it the round without it."""
    atomic_write_bytes(record.path.with_name(f"committee-sum-{server_round}.bin"), sum_blob, mode=0o600)


def kept_sum(record: Record, server_round: int) -> bytes:
    """The sum this owner computed as a member of ``server_round``'s committee (b"": none)."""
    path = record.path.with_name(f"committee-sum-{server_round}.bin")
    return path.read_bytes() if path.is_file() else b""


def _own_set(record: Record, run: str, cid: str, cert: AnyCertificate) -> None:
    held = record.get("set", cert.round)
    if held is None or held != cert.set_id(run, cid):
        raise _refuse("own-update", f"round {cert.round}'s certificate is for another set than the one this owner "
                                    "revealed its nonce for (or it revealed for none): refused")
