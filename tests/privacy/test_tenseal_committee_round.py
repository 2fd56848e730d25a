"""A verifier-committee round of ``tenseal``, played through its steps (``tenseal/committee_round.py``) on the
real backend objects: every owner ends with the global the ``every`` form gives, and the bytes each message
holds are what ``tenseal/cost.py`` prices for the committee form."""

import numpy as np
import pytest

from fedveil.core.errors import Refusal
from fedveil.core.payload import RoundContext
from fedveil.privacy import planner
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.tenseal import committee
from fedveil.privacy.secagg.tenseal import committee_round as step
from fedveil.privacy.secagg.tenseal import cost as tenseal_cost
from fedveil.privacy.secagg.tenseal.backend import TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal

CFG = TensealConfig(max_owners=5, max_weight=2.0, value_bound=6.0, global_bound=10.0, committee_size=2)
SIZE = 40
RUN = "/runs/committee-round#00000001"
OWNERS = tuple(f"client_{i}" for i in range(5))


@pytest.fixture()
def federation(tmp_path, tenseal_keyed):
    keys, made = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    owners = {o: backend_spec("tenseal").owner(CFG, SIZE, keys[o], {}, run=RUN) for o in OWNERS}
    server = TensealServer(CFG, SIZE, public=made.public, run=RUN,
                           signers={o: k.member().verify_key for o, k in keys.items()})
    return owners, server


def test_a_committee_round_gives_every_owner_the_global_and_moves_the_priced_bytes(federation):
    owners, server = federation
    deltas = {o: np.full(SIZE, 0.1 * (i + 1)) for i, o in enumerate(OWNERS)}
    payloads = {o: step.contribute(owners[o], 1, owners[o].protect(deltas[o], 1.0, RoundContext(1, "L", o)))
                for o in OWNERS}
    contributions = step.contributions_of(payloads)
    queries = step.reveal_queries(server, 1, contributions)
    revealed = {o: step.reveal_nonce(owners[o], 1, queries[o]) for o in OWNERS}
    reveals = {o: nonce for o, (nonce, _) in revealed.items()}
    draft = step.draft(server, 1, contributions, reveals, checked=True)
    updates = {m: step.round_updates(payloads, 1, leave_out=m) for m in draft.committee}  # a member has its own
    signatures = {m: step.attest_round(owners[m], updates[m], draft.encode()) for m in draft.committee}
    held = step.certify(server, payloads, draft, signatures, {o: sig for o, (_, sig) in revealed.items()})
    outsider = next(o for o in OWNERS if o not in draft.committee)  # the nonces derive the committee: any 2 of 5
    certified = step.round_for(held, outsider)
    zeros = np.zeros(SIZE, np.float32)
    every = server.combine(payloads, RoundContext(1, "L")).payload.blobs[ROUND_UPDATES]  # the every form's round
    for o in OWNERS:  # a member gets the round without the sum it computed
        mine = step.member_round(certified) if o in draft.committee else certified
        opened = owners[o].open_global(EncryptedGlobal(None, [mine]).arrays(), zeros, 1)
        np.testing.assert_allclose(opened, 0.3, atol=1e-4)
        np.testing.assert_array_equal(opened, owners[o].open_global(EncryptedGlobal(None, [every]).arrays(), zeros,
                                                                    1))
    with pytest.raises(Refusal, match="comes without its sum, and this owner keeps no sum of it"):
        owners[outsider].open_global(EncryptedGlobal(None, [step.member_round(certified)]).arrays(), zeros, 1)
    # the bytes, as tenseal/cost.py prices the committee form (no signed base: the owner keeps the global)
    priced = tenseal_cost.variant(CFG, SIZE, 5, planner.calibration(), dp_on=True, form="committee")
    assert {p.nbytes for p in payloads.values()} == {priced.update_up}
    assert {len(n) + len(sig) for n, sig in revealed.values()} == {priced.reveal_up}
    query = max(len(q) for q in queries.values())
    assert priced.global_down_first == priced.global_down == query + len(certified)
    for m in draft.committee:  # the query, the draft, every other signed update, the signatures (no sum)
        member = query + len(draft.encode()) + len(updates[m]) + len(step.member_round(certified))
        assert priced.committee_down == member
    assert {len(s) for s in signatures.values()} == {priced.committee_up}
    # an outsider's certificate is lean (names, nonces, one root, the members' signatures); a member's round is
    # that certificate alone
    at, total, lean = committee.certified_of(certified)
    assert isinstance(lean, committee.LeanCertificate) and total == server.combine(payloads).payload.blobs["ciphertext"]
    assert committee.certified_of(step.member_round(certified)) == (at, b"", lean)
    assert all(step.round_for(held, m) == step.member_round(held) == step.member_round(certified)
               for m in draft.committee)
    # the holder keeps the full certificate, what an owner outside the round's cohort gets: per contributor its
    # update digest, contribution signature, nonce and reveal signature (docstring of tenseal/cost.py)
    full = committee.certified_of(held)[2]
    assert isinstance(full, committee.Certificate) and step.round_for(held, "client_9") == held
    assert full.lean() == lean and set(full.reveal_signatures) == set(OWNERS)
    assert len(lean.encode()) < len(full.encode()) - 5 * (32 + 64 + 64) + 100
    assert len(held) - len(certified) < 5 * (32 + 64 + 64 + 4 * 2) + 200


def test_an_owner_reveals_only_for_the_round_of_its_last_update(federation):
    owners, server = federation
    payloads = {o: step.contribute(owners[o], 2, owners[o].protect(np.zeros(SIZE), 1.0, RoundContext(2, "L", o)))
                for o in OWNERS}
    queries = step.reveal_queries(server, 2, step.contributions_of(payloads))
    with pytest.raises(Exception, match="for which this owner sent no update"):
        step.reveal_nonce(owners["client_0"], 1, queries["client_0"])
    nonce, signature = step.reveal_nonce(owners["client_0"], 2, queries["client_0"])
    assert (len(nonce), len(signature)) == (32, 64)


def test_the_holder_gives_owners_with_equal_needs_one_global_record(federation):
    # at 1,000 owners the final evaluation sends the global to every owner: one record per distinct need (the
    # round the owner kept, its role in each pending round), not one per owner, and each owner's form as before
    from fedveil.server.global_state import global_per_node

    owners, server = federation
    payloads = {o: step.contribute(owners[o], 1, owners[o].protect(np.full(SIZE, 0.1), 1.0, RoundContext(1, "L", o)))
                for o in OWNERS[:4]}  # client_4 is outside the round's cohort
    contributions = step.contributions_of(payloads)
    queries = step.reveal_queries(server, 1, contributions)
    revealed = {o: step.reveal_nonce(owners[o], 1, queries[o]) for o in payloads}
    draft = step.draft(server, 1, contributions, {o: n for o, (n, _) in revealed.items()}, checked=True)
    signatures = {m: step.attest_round(owners[m], step.round_updates(payloads, 1, leave_out=m), draft.encode())
                  for m in draft.committee}
    held = step.certify(server, payloads, draft, signatures, {o: sig for o, (_, sig) in revealed.items()})
    holder = EncryptedGlobal(None, [held])
    holder.kept = {o: 0 for o in OWNERS}
    node_owner = {100 + i: o for i, o in enumerate(OWNERS)} | {200: "client_4", 201: OWNERS[0]}
    per_node = global_per_node(holder, node_owner, sorted(node_owner))
    contributors = [o for o in payloads if o not in draft.committee]
    kinds = {id(r) for r in per_node.values()}
    assert len(kinds) == 2  # the members, the other contributors: one record each, whatever the count
    assert 200 not in per_node and 104 not in per_node  # the outsider needs all of it: the round's one global record
    for n, o in node_owner.items():
        mine = holder.arrays_for(o)
        assert mine is holder.arrays_for(o) and (o == "client_4") == (mine is None)
        if mine is not None:
            assert per_node[n] is per_node[100 + OWNERS.index(o)]
            want = EncryptedGlobal(None, [step.round_for(held, o)]).arrays()
            assert {k: a.tobytes() for k, a in mine.items()} == {k: a.tobytes() for k, a in want.items()}
    assert len({id(per_node[100 + OWNERS.index(o)]) for o in contributors}) == 1
    # a change to the pending rounds (settle replaces the last in place) is served anew, never a stale form
    holder.pending[-1] = step.sum_round(server, payloads, 1)
    assert holder.arrays_for(contributors[0]) is None  # form sum: the round as it is, for everyone
