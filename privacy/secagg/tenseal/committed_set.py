"""The committed set of a ``tenseal`` committee round (``committee.py``): each contributor's signed place,
and the set's digest as two Merkle trees over the contributions in owner order, one over (owner, nonce
commitment), one over (owner, update digest). A contributor checks its place in both (2 log2(n) hashes,
:class:`RevealQuery`) before it reveals its nonce; an owner outside the committee rebuilds the first tree
from the revealed nonces and takes the second as its root (``committee.LeanCertificate``). Free of Flower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fedveil.core.io import FramingError, pack, unpack
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity

CONTRIBUTION_TAG = b"fedveil/tenseal-contribution/v1"
COMMIT_TAG = b"fedveil/committee-commit/v1"
SET_TAG = b"fedveil/committee-set/v1"
REVEAL_TAG = b"fedveil/committee-reveal/v1"


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


def reveal_statement(run: str, cid: str, server_round: int, owner: str, set_id: bytes, nonce: bytes) -> bytes:
    """What a contributor signs beside the nonce it reveals: the one set of the round it revealed for. An owner
    outside the round's cohort has no set of its own to compare with, so it takes these signatures instead: a set
    the coordinator assembled after the reveals carries none of an honest owner (``committee.check_reveals``)."""
    return identity.digest(REVEAL_TAG, run.encode(), cid.encode(), str(server_round).encode(), owner.encode(), set_id,
                           nonce)


def commitment_of(nonce: bytes) -> bytes:
    return identity.digest(COMMIT_TAG, nonce)


def leaf(run: str, cid: str, server_round: int, kind: bytes, owner: str, value: bytes) -> bytes:
    """A leaf of one of the set's two trees: ``kind`` b"commit" (owner, nonce commitment) or b"update"
    (owner, update digest)."""
    return identity.digest(SET_TAG, kind, run.encode(), cid.encode(), str(server_round).encode(), owner.encode(),
                           value)


def _node(left: bytes, right: bytes) -> bytes:
    return identity.digest(SET_TAG, b"node", left, right)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """The Merkle tree's levels, leaves first; an odd node at the end of a level moves up as it is."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        levels.append([_node(cur[i], cur[i + 1]) if i + 1 < len(cur) else cur[i] for i in range(0, len(cur), 2)])
    return levels


def root_from(node: bytes, index: int, count: int, path: list[bytes]) -> bytes:
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


def digest_of(count: int, commitment_top: bytes, update_top: bytes) -> bytes:
    return identity.digest(SET_TAG, b"set", str(count).encode(), commitment_top, update_top)


def _roots(run: str, cid: str, server_round: int, owners: list[str], commitments: list[bytes],
           updates: list[bytes]) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """The levels of the set's two trees over ``owners`` (in owner order): commitments, update digests."""
    return (_levels([leaf(run, cid, server_round, b"commit", o, c) for o, c in zip(owners, commitments, strict=True)]),
            _levels([leaf(run, cid, server_round, b"update", o, u) for o, u in zip(owners, updates, strict=True)]))


def update_root(run: str, cid: str, server_round: int, contributions: list[Contribution]) -> bytes:
    """The root of the tree over (owner, update digest), owner order: what an outsider's certificate carries."""
    ordered = sorted(contributions, key=lambda c: c.owner)
    return _levels([leaf(run, cid, server_round, b"update", c.owner, c.update_sha256) for c in ordered])[-1][0]


def set_id_of(run: str, cid: str, server_round: int, owners: list[str], commitments: list[bytes],
              updates_top: bytes) -> bytes:
    """The set digest from the owners (owner order), their commitments and the update digests' root."""
    top = _levels([leaf(run, cid, server_round, b"commit", o, c) for o, c in zip(owners, commitments, strict=True)])
    return digest_of(len(owners), top[-1][0], updates_top)


def set_digest(run: str, cid: str, server_round: int, contributions: list[Contribution]) -> bytes:
    """The committed set: who contributed which update with which commitment, as the digest of two Merkle
    roots over the contributions in owner order, one over (owner, commitment), one over (owner, update
    digest): an owner checks its place in both with 2 log2(n) hashes, and one outside the committee
    rebuilds the first from the revealed nonces and takes the second as one hash (:class:`LeanCertificate`)."""
    ordered = sorted(contributions, key=lambda c: c.owner)
    return set_id_of(run, cid, server_round, [c.owner for c in ordered], [c.commitment for c in ordered],
                     update_root(run, cid, server_round, ordered))


@dataclass(frozen=True)
class RevealQuery:
    """What one contributor is shown before it reveals: its place in the committed set (``index`` of
    ``count``, owner order) and the Merkle siblings up to each root (commitments' ``path``, update
    digests' ``update_path``)."""

    round: int
    count: int
    index: int
    path: tuple[bytes, ...]
    update_path: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        head = json.dumps({"round": self.round, "count": self.count, "index": self.index}).encode()
        paths = [b"".join(self.path), b"".join(self.update_path)]
        return pack([head, *(paths if any(paths) else [])])  # a set of one: no siblings (framing has no empty part)

    @classmethod
    def decode(cls, blob: bytes) -> "RevealQuery":
        try:
            head, *paths = unpack(blob)
            path, update_path = paths or (b"", b"")
            claim = json.loads(head)
            split = [[p[i:i + 32] for i in range(0, len(p), 32)] for p in (path, update_path)]
            if any(len(p) % 32 for p in (path, update_path)):
                raise ValueError("a path is not whole hashes")
            return cls(int(claim["round"]), int(claim["count"]), int(claim["index"]), tuple(split[0]),
                       tuple(split[1]))
        except (FramingError, ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"a reveal query is unreadable ({exc}): refused") from exc


def _path(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    path = []
    for level in levels[:-1]:
        if index ^ 1 < len(level):
            path.append(level[index ^ 1])
        index //= 2
    return tuple(path)


def reveal_queries(run: str, cid: str, server_round: int, contributions: list[Contribution]) -> dict[str, RevealQuery]:
    """The coordinator's side: each contributor's :class:`RevealQuery`."""
    ordered = sorted(contributions, key=lambda c: c.owner)
    commits, updates = _roots(run, cid, server_round, [c.owner for c in ordered], [c.commitment for c in ordered],
                              [c.update_sha256 for c in ordered])
    return {c.owner: RevealQuery(server_round, len(ordered), i, _path(commits, i), _path(updates, i))
            for i, c in enumerate(ordered)}
