"""``tenseal``'s verifier committee: a few owners check a round's updates and sign its sum; the rest check them.

Without it every owner downloads every cohort member's signed update (linear in the cohort). With
it (docs/privacy.md, "tenseal's verifier committee"):

1. with its update, an owner commits to 32 fresh bytes from its CSPRNG (:func:`commit`): the SHA-256
   of that nonce, signed with the update's digest (:func:`contribution_statement`);
2. the coordinator shows every contributor its place in the committed set (:class:`RevealQuery`: a
   Merkle path, log2(n) hashes); an owner whose own contribution is there records the set's digest
   for the round, once (a second, other set for the round is refused) and reveals its nonce
   (:func:`reveal`);
3. the committee is the ``c`` contributors ranked first by SHA-256(seed, owner id), the seed being the
   SHA-256 of the set digest and every contributor's revealed nonce (:func:`select`): nobody knows it
   before the last honest nonce is out, and by then the set is fixed;
4. each member checks every signed update of the set (and, unless the run says owners are honest, each
   against the bounds: ``checks.py``), adds them and signs one :func:`sum_statement` per round
   (run, context, round, roster digest, set digest, the sum's SHA-256, the committee, whether updates
   were range-checked): a second, other statement for the round is refused (:func:`attest`);
5. every other owner gets the sum and a :class:`Certificate` and checks it (:func:`verify`): the
   contributions signed by pinned owners, its own among them, the set the one it revealed for, each
   nonce under its commitment, the committee the one derived, and all ``c`` members' signatures on
   one statement naming this sum.

Everything here is free of Flower and of TenSEAL (the member's decryption and sum are the
backend's, passed in); refusals carry the code ``bad-global`` with ``check=committee-*``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fedveil.core.errors import Refusal
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity
from fedveil.privacy.secagg.tenseal import checks, global_codec
from fedveil.privacy.secagg.tenseal.config import MIN_COMMITTEE_SIZE
from fedveil.privacy.secagg.tenseal.keys import roster_digest

if TYPE_CHECKING:
    from fedveil.privacy.secagg.tenseal.backend import TensealOwner

NONCE_BYTES = 32
# An owner's own floor on the committee (the size travels in the run config, which the coordinator writes):
# one member would make grinding m/n per try; fewer contributors than this make the committee all of them
MIN_SIZE = MIN_COMMITTEE_SIZE
RECORD_FILE = "committee.json"  # in the owner's run folder (keys.run_dir): nonces, sets revealed for, sums signed
CONTRIBUTION_TAG = b"fedveil/tenseal-contribution/v1"
COMMIT_TAG = b"fedveil/committee-commit/v1"
SEED_TAG = b"fedveil/committee-seed/v1"
RANK_TAG = b"fedveil/committee-rank/v1"
SET_TAG = b"fedveil/committee-set/v1"
SUM_TAG = b"fedveil/committee-sum/v1"


def _refuse(check: str, line: str) -> Refusal:
    return Refusal("bad-global", line, check=f"committee-{check}")


@dataclass(frozen=True)
class Contribution:
    """One owner's place in a round: its update's SHA-256 and nonce commitment, signed together."""

    owner: str
    update_sha256: bytes
    commitment: bytes
    signature: bytes


def contribution_statement(run: str, cid: str, server_round: int, owner: str, update_sha256: bytes,
                           commitment: bytes) -> bytes:
    """What an owner signs beside its update: the update's digest and its nonce commitment for this round."""
    return identity.digest(CONTRIBUTION_TAG, run.encode(), cid.encode(), str(server_round).encode(), owner.encode(),
                           update_sha256, commitment)


def commitment_of(nonce: bytes) -> bytes:
    return identity.digest(COMMIT_TAG, nonce)


def _leaf(run: str, cid: str, server_round: int, c: Contribution) -> bytes:
    return identity.digest(SET_TAG, b"leaf", run.encode(), cid.encode(), str(server_round).encode(), c.owner.encode(),
                           c.update_sha256, c.commitment)


def _node(left: bytes, right: bytes) -> bytes:
    return identity.digest(SET_TAG, b"node", left, right)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """The Merkle tree's levels, leaves first; an odd node at the end of a level moves up as it is."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        levels.append([_node(cur[i], cur[i + 1]) if i + 1 < len(cur) else cur[i] for i in range(0, len(cur), 2)])
    return levels


def _top(node: bytes, index: int, count: int, path: list[bytes]) -> bytes:
    """The root reached from ``node`` at ``index`` of ``count`` leaves along ``path`` (its siblings)."""
    rest = list(path)
    while count > 1:
        if index ^ 1 < count:
            if not rest:
                raise PayloadError("a reveal query's inclusion path is too short: malformed; refused")
            sibling = rest.pop(0)
            node = _node(sibling, node) if index & 1 else _node(node, sibling)
        index, count = index // 2, (count + 1) // 2
    if rest:
        raise PayloadError("a reveal query's inclusion path is too long: malformed; refused")
    return node


def _digest_of(count: int, top: bytes) -> bytes:
    return identity.digest(SET_TAG, b"set", str(count).encode(), top)


def set_digest(run: str, cid: str, server_round: int, contributions: list[Contribution]) -> bytes:
    """The committed set: who contributed which update with which commitment, as the root of a Merkle
    tree over the contributions in owner order (so one owner checks its place with log2(n) hashes)."""
    leaves = [_leaf(run, cid, server_round, c) for c in sorted(contributions, key=lambda c: c.owner)]
    return _digest_of(len(leaves), _levels(leaves)[-1][0])


@dataclass(frozen=True)
class RevealQuery:
    """What one contributor is shown before it reveals: its place in the committed set (``index`` of
    ``count``, owner order) and the Merkle siblings up to the root."""

    round: int
    count: int
    index: int
    path: tuple[bytes, ...]

    def encode(self) -> bytes:
        head = json.dumps({"round": self.round, "count": self.count, "index": self.index}).encode()
        return pack([head, *self.path])

    @classmethod
    def decode(cls, blob: bytes) -> "RevealQuery":
        try:
            head, *path = unpack(blob)
            claim = json.loads(head)
            return cls(int(claim["round"]), int(claim["count"]), int(claim["index"]), tuple(path))
        except (FramingError, ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"a reveal query is unreadable ({exc}): refused") from exc


def reveal_queries(run: str, cid: str, server_round: int, contributions: list[Contribution]) -> dict[str, RevealQuery]:
    """The coordinator's side: each contributor's :class:`RevealQuery`."""
    ordered = sorted(contributions, key=lambda c: c.owner)
    levels = _levels([_leaf(run, cid, server_round, c) for c in ordered])
    queries = {}
    for i, c in enumerate(ordered):
        path, index = [], i
        for level in levels[:-1]:
            if index ^ 1 < len(level):
                path.append(level[index ^ 1])
            index //= 2
        queries[c.owner] = RevealQuery(server_round, len(ordered), i, tuple(path))
    return queries


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
    """What an owner outside the committee gets beside a round's sum: the committed set, the revealed
    nonces, the committee and its members' signatures over :func:`sum_statement` (members get it
    without signatures, with every signed update). On the wire each commitment is left out: it is the
    SHA-256 of the revealed nonce."""

    round: int
    contributions: tuple[Contribution, ...]
    reveals: dict[str, bytes]
    committee: tuple[str, ...]
    signatures: dict[str, bytes]
    checked: bool

    def encode(self) -> bytes:
        owners = [c.owner for c in self.contributions]
        signed = [m for m in self.committee if self.signatures.get(m)]  # none yet in the members' draft
        head = json.dumps({"round": self.round, "owners": owners, "committee": list(self.committee),
                           "signed": signed, "checked": self.checked}).encode()
        parts = [p for c in self.contributions for p in (c.update_sha256, c.signature, self.reveals.get(c.owner, b""))]
        return pack([head, *parts, *(self.signatures[m] for m in signed)])

    @classmethod
    def decode(cls, blob: bytes) -> "Certificate":
        try:
            head, *parts = unpack(blob)
            claim = json.loads(head)
            owners, committee = [str(o) for o in claim["owners"]], tuple(str(m) for m in claim["committee"])
            at, checked, signed = int(claim["round"]), bool(claim["checked"]), [str(m) for m in claim["signed"]]
        except (FramingError, ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"a committee certificate is unreadable ({exc}): refused") from exc
        if len(parts) != 3 * len(owners) + len(signed) or len(set(owners)) != len(owners) or not owners or\
                not set(signed) <= set(committee):
            raise PayloadError(f"a committee certificate lists {len(owners)} owner(s) (or one twice) and "
                               f"{len(signed)} signature(s) but holds {len(parts)} parts: malformed; refused")
        # each commitment is the SHA-256 of the revealed nonce: a wrong nonce fails its owner's signature
        contributions = tuple(Contribution(o, parts[3 * i], commitment_of(parts[3 * i + 2]), parts[3 * i + 1])
                              for i, o in enumerate(owners))
        reveals = {o: parts[3 * i + 2] for i, o in enumerate(owners)}
        signatures = dict(zip(signed, parts[3 * len(owners):], strict=True))
        return cls(at, contributions, reveals, committee, signatures, checked)


def certified_round(server_round: int, sum_blob: bytes, cert: Certificate | None) -> bytes:
    """A pending round as the committee (or, form ``sum``, the coordinator alone) leaves it: the sum's
    ciphertext blob and its certificate (none in form ``sum``)."""
    head = json.dumps({"round": server_round, "certified": cert is not None}).encode()
    return pack([head, sum_blob, *([cert.encode()] if cert is not None else [])])


def certified_of(blob: bytes) -> tuple[int, bytes, Certificate | None] | None:
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
        at, certified = int(claim["round"]), bool(claim["certified"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"a certified round is unreadable ({exc}): refused") from exc
    if len(parts) != 1 + certified:
        raise PayloadError(f"certified round {at} holds {len(parts)} parts: malformed; refused")
    return at, parts[0], Certificate.decode(parts[1]) if certified else None


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
    mine = Contribution(owner, own_update_sha256, commitment_of(nonce), b"")
    try:
        top = _top(_leaf(run, cid, server_round, mine), query.index, query.count, list(query.path))
    except PayloadError as exc:
        raise _refuse("own-update", f"round {server_round}: {exc}") from exc
    record.once("set", server_round, _digest_of(query.count, top), "revealed for")
    return nonce


def committee_of(run: str, cid: str, cert: Certificate, size: int) -> tuple[str, ...]:
    """The committee the certificate's set and reveals derive (every nonce under its commitment), of
    ``size`` members; a size below this owner's floor (:data:`MIN_SIZE`) is refused."""
    if size < MIN_SIZE:
        raise _refuse("size", f"round {cert.round}: aggregation.committee_size={size} is below this owner's floor of "
                              f"{MIN_SIZE} (one colluding member could certify any sum): refused")
    for c in cert.contributions:
        if commitment_of(cert.reveals.get(c.owner, b"")) != c.commitment:
            raise _refuse("reveal", f"round {cert.round}: owner {c.owner}'s revealed nonce does not open its "
                                    "commitment (or is missing): no committee can be derived; refused")
    return select(set_digest(run, cid, cert.round, list(cert.contributions)), cert.reveals, size)


def _statement(run: str, cid: str, roster: identity.Roster, cert: Certificate, sum_sha256: bytes) -> bytes:
    return sum_statement(run, cid, cert.round, roster_digest(roster), set_digest(run, cid, cert.round,
                                                                                  list(cert.contributions)),
                         sum_sha256, cert.committee, cert.checked)


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


def verify(record: Record, roster: identity.Roster, run: str, cid: str, owner: str, cert: Certificate, size: int,
           sum_blob: bytes, *, require_checked: bool) -> None:
    """Accept a round's sum on the committee's word, or refuse: the set the one this owner revealed
    for (its own update in it), the committee the one derived, every member's signature on one
    statement naming this sum, and the updates range-checked where this owner requires it."""
    check_contributions(roster, run, cid, cert.round, cert.contributions)
    _own_set(record, run, cid, cert)
    if require_checked and not cert.checked:
        raise _refuse("unchecked", f"round {cert.round}'s sum was signed without range-checking each update, and "
                                   "this owner's policy says owners may be malicious: refused")
    if committee_of(run, cid, cert, size) != cert.committee:
        raise _refuse("choice", f"round {cert.round}: committee {list(cert.committee)} is not the one the revealed "
                                "nonces derive (the coordinator chose it): refused")
    statement = _statement(run, cid, roster, cert, hashlib.sha256(sum_blob).digest())
    for member in cert.committee:
        try:
            identity.verify(roster.member(member, "a committee member").verify_key, statement,
                            cert.signatures.get(member, b""), f"committee member {member}'s statement")
        except PayloadError as exc:
            raise _refuse("sum", f"round {cert.round}: committee member {member} did not sign this sum ({exc}): "
                                 "forged or equivocated; refused") from exc


def member_sum(backend: "TensealOwner", updates: global_codec.RoundUpdates, checked: bool) -> bytes:
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


def _own_set(record: Record, run: str, cid: str, cert: Certificate) -> None:
    held = record.get("set", cert.round)
    if held is None or held != set_digest(run, cid, cert.round, list(cert.contributions)):
        raise _refuse("own-update", f"round {cert.round}'s certificate is for another set than the one this owner "
                                    "revealed its nonce for (or it revealed for none): refused")
