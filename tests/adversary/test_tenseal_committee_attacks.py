"""Attacks by a malicious coordinator on ``tenseal``'s verifier committee (``tenseal/committee.py``) that must fail.

Owners outside the committee download a round's sum and the committee's certificate instead of
every owner's signed update. The coordinator relays everything, so it may forge the sum, choose
(grind) the committee, swap the committed set after the nonces are out, or show two owners two
sums. Each test plays one attack on the Flower-free owner helpers and checks the refusal's code
(``bad-global``, ``check=committee-*``): what the owner may tell the coordinator.
"""

import hashlib

import numpy as np
import pytest

from fedveil.core.errors import Refusal
from fedveil.core.payload import PayloadError, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster
from fedveil.core.io import pack
from fedveil.privacy.secagg.tenseal import bfv, committee, committee_round
from fedveil.privacy.secagg.tenseal import keys as setup
from fedveil.privacy.secagg.tenseal.backend import SIGNATURE, TensealServer, update_statement
from fedveil.privacy.secagg.tenseal.committee import Certificate, LeanCertificate, Record
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import EncryptedGlobal, RoundUpdates

pytestmark = pytest.mark.adversary
CFG = TensealConfig(max_owners=5, max_weight=2.0, value_bound=6.0, global_bound=10.0)
SIZE = 24
RUN = "/runs/committee#00000001"
OWNERS = tuple(f"client_{i}" for i in range(5))
C = 2  # committee size


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """Five keyed owners and the server side, shared: each test plays its own round number."""
    return _keyed(tmp_path_factory.mktemp("committee"))


@pytest.fixture()
def fresh(tmp_path):
    """As ``fed``, for a test that needs round 1 of its own."""
    return _keyed(tmp_path)


def _keyed(tmp):
    keys = {o: OwnerKeys(o, str(tmp / o)) for o in OWNERS}
    pin_roster({o: tmp / o for o in OWNERS}, "client_0")
    made = setup.generate(CFG, keys["client_0"], RUN, {o: setup.announce(k) for o, k in keys.items()})
    for o, k in keys.items():
        setup.install(k, RUN, public=made.public, statement=made.statement, signature=made.signature,
                      sealed=made.sealed[o])
    owners = {o: backend_spec("tenseal").owner(CFG, SIZE, k, {}, run=RUN) for o, k in keys.items()}
    server = TensealServer(CFG, SIZE, public=made.public, run=RUN,
                           signers={o: k.member().verify_key for o, k in keys.items()})
    return keys, owners, server


class Round:
    """One round played honestly up to the committee's signatures: updates with commitments, the set
    shown to every owner, the nonces revealed, the committee derived, the server's sum."""

    def __init__(self, fed, server_round, deltas, checked=True, reveal=True):
        self.keys, self.owners, self.server = fed
        self.round, self.cid = server_round, self.server.context_id
        self.roster = self.keys["client_0"].roster()
        self.payloads = {o: self.owners[o].protect(np.full(SIZE, d, np.float64), 1.0,
                                                   RoundContext(server_round, "L", o)) for o, d in deltas.items()}
        self.contributions = tuple(self.contribution(o) for o in sorted(self.payloads))
        self.queries = committee.reveal_queries(RUN, self.cid, server_round, list(self.contributions))
        self.sum_blob = self.server.combine(dict(sorted(self.payloads.items())),
                                            RoundContext(server_round, "L")).payload.blobs["ciphertext"]
        if not reveal:
            return
        self.reveals = {o: self.reveal(o, self.queries[o]) for o in sorted(self.payloads)}
        cert = Certificate(server_round, self.contributions, self.reveals, (), {}, checked)
        self.committee = committee.committee_of(RUN, self.cid, cert, C)
        self.cert = Certificate(server_round, self.contributions, self.reveals, self.committee, {}, checked)

    def record(self, o):
        return Record(setup.run_dir(self.keys[o].state_dir, RUN))

    def blob(self, o):
        return self.payloads[o].blobs["ciphertext"]

    def contribution(self, o):
        sha = hashlib.sha256(self.blob(o)).digest()
        c, sig = committee.commit(self.record(o), RUN, self.cid, self.round, o, sha, self.keys[o].sign)
        return committee.Contribution(o, sha, c, sig)

    def reveal(self, o, query):
        return committee.reveal(self.record(o), RUN, self.cid, self.round, o, hashlib.sha256(self.blob(o)).digest(),
                                query)

    def updates(self):
        return RoundUpdates(self.round, {o: (self.blob(o), p.blobs[SIGNATURE]) for o, p in self.payloads.items()})

    def attest(self, member, cert=None, updates=None):
        cert = cert or self.cert
        updates = updates or self.updates()
        return committee.attest(self.record(member), self.roster, RUN, self.cid, member, cert, C,
                                {o: b for o, (b, _) in updates.signed.items()},
                                lambda checked: committee_round.member_sum(self.owners[member], updates, checked),
                                self.keys[member].sign)

    def signed(self):
        """The certificate with every member's signature (each member attests once)."""
        sigs = {m: self.attest(m)[1] for m in self.committee}
        return Certificate(self.round, self.contributions, self.reveals, self.committee, sigs, self.cert.checked)

    def verify(self, o, cert, sum_blob=None, require_checked=True, lean=True):
        """``o`` checks ``cert`` as it travels to an owner outside the committee (``lean``: its lean form), or
        in full (``lean=False``: every contribution checked against the roster too)."""
        if lean and isinstance(cert, Certificate):
            cert = LeanCertificate.decode(cert.lean(RUN, self.cid).encode())
        committee.verify(self.record(o), self.roster, RUN, self.cid, o, cert, C,
                         self.sum_blob if sum_blob is None else sum_blob, require_checked=require_checked)

    def outsiders(self):
        return [o for o in OWNERS if o not in self.committee]


class refused:  # noqa: N801 -- used as pytest.raises is
    """``pytest.raises(Refusal)`` that also checks the code the owner may release."""

    def __init__(self, check):
        self.check, self.ctx = check, pytest.raises(Refusal)

    def __enter__(self):
        self.info = self.ctx.__enter__()
        return self.info

    def __exit__(self, *exc):
        swallowed = self.ctx.__exit__(*exc)
        assert (self.info.value.code, self.info.value.public) == ("bad-global", {"check": f"committee-{self.check}"})
        return swallowed


def test_the_honest_committee_certifies_the_sum_every_other_owner_opens(fed):
    r = Round(fed, 9, {o: i + 1.0 for i, o in enumerate(OWNERS)})
    cert = Certificate.decode(r.signed().encode())  # as it travels
    member = r.committee[0]
    assert hashlib.sha256(committee_round.member_sum(r.owners[member], r.updates(), True)).digest() == \
        hashlib.sha256(r.sum_blob).digest()  # the server's sum, in owner order, is byte for byte the member's
    for o in r.outsiders():
        r.verify(o, cert)
        revealed = r.owners[o].reveal(r.owners[o].payload_of(r.sum_blob))
        assert revealed.total_weight == 5.0
        np.testing.assert_allclose(revealed.mean, 3.0, atol=1e-4)


def test_a_sum_the_coordinator_forged_is_refused(fed):
    # The server holds the public context, which encrypts: it could send Enc(anything) as the sum,
    # or the sum of the updates less one owner's, or of one of them twice.
    r = Round(fed, 2, {o: 0.5 for o in OWNERS})
    cert = r.signed()
    forged_sums = {
        "its own ciphertext": r.owners["client_0"].protect(np.full(SIZE, 5.0), 1.0).blobs["ciphertext"],
        "one owner left out": r.server.combine({o: r.payloads[o] for o in OWNERS[:-1]}).payload.blobs["ciphertext"],
        "one owner twice": r.server.combine({**{o: r.payloads[o] for o in OWNERS[:-1]}, "x": r.payloads["client_1"]}
                                            ).payload.blobs["ciphertext"],
        "none (the form for a member, which keeps the sum it computed)": b"",
    }
    outsider = r.outsiders()[0]
    for forged in forged_sums.values():
        with refused("sum"):
            r.verify(outsider, cert, forged)
    unsigned = Certificate(2, cert.contributions, cert.reveals, cert.committee,
                           {r.committee[0]: cert.signatures[r.committee[0]]}, True)  # one member short
    with refused("sum"):
        r.verify(outsider, unsigned)
    outsider_sig = r.keys[outsider].sign(b"x")  # a signature by someone, not the member named
    with refused("sum"):
        r.verify(outsider, Certificate(2, cert.contributions, cert.reveals, cert.committee,
                                       {**cert.signatures, r.committee[1]: outsider_sig}, True))
    r.verify(outsider, cert)  # the honest one still opens


def test_the_coordinator_cannot_choose_the_committee(fed):
    # Grinding: the committee is derived from every contributor's nonce, committed before any is
    # revealed. The coordinator may name the committee it likes, replace a nonce, or, once the
    # nonces are out, drop an owner from the set to draw another committee.
    r = Round(fed, 3, {o: 0.25 for o in OWNERS})
    cert = r.signed()
    outsider = r.outsiders()[0]
    chosen = tuple(sorted(r.outsiders()[:C]))  # owners the coordinator prefers (say, colluders)
    with refused("choice"):
        r.verify(outsider, Certificate(3, cert.contributions, cert.reveals, chosen, {}, True))
    with refused("choice"):  # a chosen member refuses to attest for a committee it is not derived into
        r.attest(chosen[0], Certificate(3, cert.contributions, cert.reveals, chosen, {}, True))
    # a nonce of the coordinator's choosing does not open the commitment (in full: the check says so); in the lean
    # form an outsider gets, each commitment is its nonce's hash, so the set is not the one it revealed for
    for who in (r.committee[0], outsider):
        chosen_nonce = Certificate(3, cert.contributions, {**cert.reveals, who: b"\x00" * 32}, cert.committee, {},
                                   True)
        with refused("reveal"):
            r.verify(outsider, chosen_nonce, lean=False)
        with refused("own-update"):
            r.verify(outsider, chosen_nonce)
    wire = Certificate.decode(Certificate(3, cert.contributions, {**cert.reveals, outsider: b"\x01" * 32},
                                          cert.committee, cert.signatures, True).encode())
    with refused("contribution"):  # on the wire the commitment is the nonce's hash: a swapped nonce fails its signature
        r.verify(outsider, wire, lean=False)
    with refused("own-update"):  # and in the lean form the set it rebuilds is another
        r.verify(outsider, wire)
    stranger = committee.Contribution("client_9", bytes(32), bytes(32), bytes(64))  # a contribution no one signed
    added = Certificate(3, (*cert.contributions, stranger), {**cert.reveals, "client_9": bytes(32)}, cert.committee,
                        cert.signatures, True)
    with refused("contribution") as exc:  # a member checks every contribution against the roster
        r.verify(outsider, added, lean=False)
    assert "not in the pinned roster" in str(exc.value)
    with refused("own-update"):  # an outsider: not the set it revealed for
        r.verify(outsider, added)
    with refused("contribution"):  # what an outsider's lean check rests on: no honest member signs such a set
        r.attest(r.committee[0], Certificate(3, added.contributions, added.reveals, cert.committee, {}, True))
    one = committee.select(committee.set_digest(RUN, r.cid, 3, list(cert.contributions)), cert.reveals, 1)
    with refused("size"):  # a run config with committee_size=1: the owner's floor holds
        committee.verify(r.record(outsider), r.roster, RUN, r.cid, outsider,
                         Certificate(3, cert.contributions, cert.reveals, one, {}, True), 1, r.sum_blob,
                         require_checked=True)
    # after the reveals: drop an owner to re-draw. Every owner revealed for the full set, so a
    # certificate for any other set is refused, and no owner reveals again for another set.
    dropped = next(o for o in OWNERS if o != outsider)
    smaller = tuple(c for c in cert.contributions if c.owner != dropped)
    reveals = {o: v for o, v in cert.reveals.items() if o != dropped}
    redrawn = committee.select(committee.set_digest(RUN, r.cid, 3, list(smaller)), reveals, C)
    with refused("own-update"):
        r.verify(outsider, Certificate(3, smaller, reveals, redrawn, {}, True))
    queries = committee.reveal_queries(RUN, r.cid, 3, list(smaller))
    with refused("equivocation"):
        r.reveal(outsider, queries[outsider])
    with refused("equivocation"):  # the dropped owner revealed for the full set, and for nothing else
        r.reveal(dropped, queries[outsider])


def test_an_owner_reveals_for_one_set_and_accepts_only_that_set(fed):
    # The reveal query is a Merkle path: whatever path the coordinator sends, the owner's own leaf is
    # in the root it computes and records. A path that is not the honest set's binds it to a root no
    # certificate for another set can meet: it refuses that round's sum (as a dropped owner does),
    # and a malformed path gets no nonce at all.
    r = Round(fed, 7, {o: 0.5 for o in OWNERS}, reveal=False)
    me, other = OWNERS[0], OWNERS[1]
    bad = committee.reveal_queries(RUN, r.cid, 7, list(r.contributions))[me]
    Q = committee.RevealQuery
    for malformed in (Q(7, 5, 0, bad.path[:-1]), Q(7, 5, 0, (*bad.path, bytes(32))),
                      Q(7, 5, 5, bad.path)):
        with refused("own-update"):
            r.reveal(me, malformed)
    assert r.record(me).get("set", 7) is None  # nothing recorded, nothing revealed
    without = [c for c in r.contributions if c.owner != me]
    nonce = r.reveal(me, committee.reveal_queries(RUN, r.cid, 7, without)[other])  # another owner's place
    assert committee.commitment_of(nonce) == r.contributions[0].commitment
    reveals = {o: r.reveal(o, r.queries[o]) for o in OWNERS if o != me} | {me: nonce}
    for contributions in (tuple(without), r.contributions):  # the set without it, and even the honest one
        cert = Certificate(7, contributions, {o: reveals[o] for o in (c.owner for c in contributions)}, (), {}, True)
        cert = Certificate(7, contributions, cert.reveals, committee.committee_of(RUN, r.cid, cert, C), {}, True)
        with refused("own-update"):
            r.verify(me, cert)


def test_the_derived_committee_is_uniform_over_the_contributors():
    # What the grinding bound rests on: for fresh nonces the committee is a uniform c-subset, so a
    # coordinator with one try per round hits an all-colluding committee with probability
    # C(m, c) / C(n, c); each owner sits on it c/n of the time.
    rng = np.random.default_rng(7)
    owners = [f"client_{i}" for i in range(10)]
    draws, seats = 4000, dict.fromkeys(owners, 0)
    for _ in range(draws):
        reveals = {o: rng.bytes(32) for o in owners}
        for m in committee.select(b"set", reveals, 3):
            seats[m] += 1
    share = np.array(list(seats.values())) / draws
    assert np.all(np.abs(share - 0.3) < 0.035), share  # 0.3 = c/n; 4.8 standard errors
    assert committee.select(b"set", {"client_0": b"a", "client_1": b"b"}, 3) == ("client_0", "client_1")  # c <= n


def test_two_owners_shown_two_sums_cannot_both_hold_the_committees_signatures(fed):
    # Equivocation: the coordinator shows owner A the honest sum and owner B another. Every member
    # signs one statement per round (kept on disk), and an owner needs all c members on its sum.
    r = Round(fed, 4, {o: 0.1 * (i + 1) for i, o in enumerate(OWNERS)})
    cert = r.signed()
    a, b = r.outsiders()[:2]
    r.verify(a, cert)
    other = r.owners["client_0"].protect(np.full(SIZE, 3.0), 1.0).blobs["ciphertext"]
    with refused("sum"):
        r.verify(b, cert, other)
    # asked to sign again for the same round, with an update swapped for another owner-signed one, a member refuses
    honest = r.updates()
    swapped = RoundUpdates(4, {**honest.signed, "client_1": honest.signed["client_2"]})
    with refused("sum"):
        r.attest(r.committee[0], updates=swapped)
    with refused("equivocation"):  # the same set, but a member asked to sign a second statement (unchecked)
        r.attest(r.committee[0], Certificate(4, cert.contributions, cert.reveals, cert.committee, {}, False))
    assert r.attest(r.committee[0])[0] == hashlib.sha256(r.sum_blob).digest()  # the same statement again: fine


def test_an_owner_requiring_checked_updates_refuses_a_sum_only_summed(fed):
    r = Round(fed, 5, {o: 0.5 for o in OWNERS}, checked=False)
    cert = r.signed()
    outsider = r.outsiders()[0]
    with refused("unchecked"):
        r.verify(outsider, cert)
    r.verify(outsider, cert, require_checked=False)


def test_a_member_range_checks_every_update_before_signing(fed):
    # A poisoning owner (it holds the secret context) signs an update at 2.9x its cap, which would use
    # the other owners' headroom; with checked=true a member decrypts each update first, names the
    # owner and signs nothing; summed only (checked=false: the run says owners are honest) it adds up.
    import tenseal as ts

    keys, owners, _ = fed
    r = Round(fed, 6, {o: 0.01 for o in OWNERS})
    poisoner, member = r.outsiders()[0], r.committee[0]
    mal = owners[poisoner]
    slots = bfv.pack_slots(np.full(SIZE, int(2.9 * CFG.levels), np.int64), bfv.radix(CFG.poly_modulus_degree,
                                                                                     CFG.plain_modulus_bits))
    raw = pack([bfv.header(b"u", CFG.step), ts.bfv_vector(mal._secret, slots.tolist()).serialize(),
                bfv.seal_weight(mal._weight_key, 1.0)])
    signature = keys[poisoner].sign(update_statement(RUN, r.cid, 6, poisoner, raw))
    poisoned = RoundUpdates(6, {**r.updates().signed, poisoner: (raw, signature)})
    with pytest.raises(Refusal, match=f"owner {poisoner}'s update") as exc:
        committee_round.member_sum(owners[member], poisoned, True)
    assert (exc.value.code, exc.value.public) == ("bad-update", {"owner": poisoner})
    assert committee_round.member_sum(owners[member], poisoned, False)  # unchecked, it is summed


def test_an_owner_opens_a_certified_round_of_the_encrypted_global_and_refuses_a_forged_or_bare_one(fresh):
    # The download path: a pending round of the encrypted global may be a certified sum instead of
    # every signed update (``TensealOwner.open_global``); the same checks run before anything is decrypted.
    r = Round(fresh, 1, {o: 0.1 * (i + 1) for i, o in enumerate(OWNERS)})  # round 1: the global is its mean
    cert = r.signed()
    zeros = np.zeros(SIZE, np.float32)
    outsider = r.outsiders()[0]
    honest = EncryptedGlobal(None, [committee.certified_round(1, r.sum_blob, cert)]).arrays()
    np.testing.assert_allclose(r.owners[outsider].open_global(honest, zeros, 1), 0.3, atol=1e-4)
    forged = r.owners["client_0"].protect(np.full(SIZE, 5.0), 1.0).blobs["ciphertext"]
    for blob in (committee.certified_round(1, forged, cert), committee.certified_round(1, r.sum_blob, None)):
        with refused("sum"):
            r.owners[outsider].open_global(EncryptedGlobal(None, [blob]).arrays(), zeros, 1)
    with pytest.raises(PayloadError, match="stale or replayed"):  # a certified round 1 as round 2
        r.owners[outsider].open_global(honest, zeros, 2)


def test_only_an_owner_whose_view_is_that_owners_are_honest_opens_a_sum_summed_without_range_checks(fresh):
    # The owner is sovereign: a coordinator stating privacy.malicious_owners=false gets an unchecked sum
    # past no owner that holds owners may poison (the default); one that holds they are honest opens it.
    r = Round(fresh, 1, {o: 0.2 for o in OWNERS}, checked=False)
    arrays = EncryptedGlobal(None, [committee.certified_round(1, r.sum_blob, r.signed())]).arrays()
    zeros = np.zeros(SIZE, np.float32)
    believer, wary = r.outsiders()[:2]
    with refused("unchecked"):
        r.owners[wary].open_global(arrays, zeros, 1)
    r.owners[believer].malicious_owners = False
    np.testing.assert_allclose(r.owners[believer].open_global(arrays, zeros, 1), 0.2, atol=1e-4)
    # the sum alone, with no certificate (form sum): the wary owner refuses it; the believer's policy
    # (malicious_owners=false) takes it on the coordinator's word
    alone = EncryptedGlobal(None, [committee.certified_round(1, r.sum_blob, None)]).arrays()
    with refused("sum"):
        r.owners[wary].open_global(alone, zeros, 1)
    np.testing.assert_allclose(r.owners[believer].open_global(alone, zeros, 1), 0.2, atol=1e-4)


# --- owners outside a round's cohort (its own record holds no nonce for the round) ----------------------------

HONEST, COLLUDERS, OUTSIDER = ("client_0", "client_1"), ("client_2", "client_3"), "client_4"


def full(r, cert=None, reveal_signatures=None):
    """``cert`` (default: the signed one) as the holder keeps it and sends an owner outside the cohort: every
    contributor's reveal signature over the set and its nonce, the update digests' root."""
    cert = cert or r.signed()
    if reveal_signatures is None:
        reveal_signatures = {o: committee.sign_reveal(r.record(o), RUN, r.cid, r.round, o, r.keys[o].sign)
                             for o in r.payloads}
    return Certificate.decode(Certificate(cert.round, cert.contributions, cert.reveals, cert.committee,
                                          cert.signatures, cert.checked, reveal_signatures,
                                          committee.update_root(RUN, r.cid, r.round, list(cert.contributions))
                                          ).encode())


def test_an_owner_outside_the_cohort_opens_the_full_certificate_and_refuses_one_without_signed_reveals(fed):
    r = Round(fed, 20, {o: 1.0 for o in OWNERS if o != OUTSIDER})
    assert r.record(OUTSIDER).get("nonce", 20) is None  # it contributed nothing: decided by its own record
    cert = full(r)
    r.verify(OUTSIDER, cert, lean=False)  # every contribution and reveal signature checked: accepted
    with refused("outsider"):  # the lean form it cannot check (it revealed for no set of the round)
        r.verify(OUTSIDER, cert)
    honest = HONEST[0]
    missing = {o: s for o, s in cert.reveal_signatures.items() if o != honest}
    with refused("reveal"):  # an honest owner's contribution without its reveal signature
        r.verify(OUTSIDER, full(r, cert, missing), lean=False)
    other_set = r.keys[honest].sign(committee.reveal_statement(RUN, r.cid, 20, honest, bytes(32), r.reveals[honest]))
    by_another = r.keys[COLLUDERS[0]].sign(committee.reveal_statement(RUN, r.cid, 20, honest, cert.set_id(RUN, r.cid),
                                                                      r.reveals[honest]))
    for wrong in (other_set, by_another, cert.reveal_signatures[COLLUDERS[0]]):
        with refused("reveal"):  # over another set, by another owner, or another owner's own
            r.verify(OUTSIDER, full(r, cert, {**cert.reveal_signatures, honest: wrong}), lean=False)
    # a contributor sent the full form (not the lean one) still checks its own set, and accepts the honest round
    for o in r.payloads:
        r.verify(o, cert, lean=False)


def test_a_set_grinded_after_the_reveals_carries_no_honest_reveal_signature_and_is_refused(fed):
    """The coordinator keeps S1's honest contributions (their nonces are out), adds colluders' contributions
    with commitments chosen after seeing them until the committee is colluders only, and has them sign a
    forged sum: S2. The honest owners' reveal signatures name S1; each signs a reveal for one set a round."""
    r = Round(fed, 21, {o: 1.0 for o in HONEST})  # S1: the honest owners revealed for it (and signed that)
    honest_sigs = {o: committee.sign_reveal(r.record(o), RUN, r.cid, 21, o, r.keys[o].sign) for o in HONEST}
    with refused("equivocation"):  # an honest owner never reveals for a second set of the round
        r.record(HONEST[0]).once("set", 21, bytes(32), "revealed for")
    forged = r.owners[COLLUDERS[0]].protect(np.full(SIZE, 5.0), 1.0).blobs["ciphertext"]
    digest = hashlib.sha256(forged).digest()
    rng = np.random.default_rng(0)
    for tries in range(1, 200):  # grinding: colluders' nonces chosen after the honest ones are public
        nonces = {o: rng.bytes(32) for o in COLLUDERS}
        added = tuple(committee.Contribution(o, digest, committee.commitment_of(nonces[o]), r.keys[o].sign(
            committee.contribution_statement(RUN, r.cid, 21, o, digest, committee.commitment_of(nonces[o]))))
            for o in COLLUDERS)
        contributions = tuple(sorted((*r.contributions, *added), key=lambda c: c.owner))
        draft = Certificate(21, contributions, {**r.reveals, **nonces}, (), {}, True)
        if committee.committee_of(RUN, r.cid, draft, C) == COLLUDERS:
            break
    assert tries < 200  # the coordinator finds a colluders-only committee for S2 quickly
    s2 = Certificate(21, contributions, draft.reveals, COLLUDERS, {}, True)
    statement = committee.sum_statement(RUN, r.cid, 21, setup.roster_digest(r.roster), s2.set_id(RUN, r.cid),
                                        hashlib.sha256(forged).digest(), COLLUDERS, True)
    colluding = {o: r.keys[o].sign(committee.reveal_statement(RUN, r.cid, 21, o, s2.set_id(RUN, r.cid), nonces[o]))
                 for o in COLLUDERS}
    s2 = Certificate(21, contributions, draft.reveals, COLLUDERS, {o: r.keys[o].sign(statement) for o in COLLUDERS},
                     True, {**honest_sigs, **colluding},
                     committee.update_root(RUN, r.cid, 21, list(contributions)))
    with refused("reveal"):  # the outsider: the honest reveal signatures are for S1's id
        r.verify(OUTSIDER, s2, forged, lean=False)
    for o in HONEST:  # the honest contributors: not the set they revealed for, in full or lean form
        with refused("own-update"):
            r.verify(o, s2, forged, lean=False)
        with refused("own-update"):
            r.verify(o, s2, forged)
    # what stops it is the reveal signatures alone: with S2's (which no honest owner gives) it would pass
    forged_reveals = {**colluding, **{o: r.keys[o].sign(committee.reveal_statement(
        RUN, r.cid, 21, o, s2.set_id(RUN, r.cid), r.reveals[o])) for o in HONEST}}
    r.verify(OUTSIDER, full(r, s2, forged_reveals), forged, lean=False)
    # a set that leaves the honest contributors out (the colluders', all signed): an owner outside the cohort takes
    # it (the caveat below), an owner that contributed refuses it, as its own record says, not the certificate
    kept = tuple(c for c in contributions if c.owner in COLLUDERS)
    s3 = Certificate(21, kept, nonces, (), {}, True)
    members, s3_id = committee.committee_of(RUN, r.cid, s3, C), s3.set_id(RUN, r.cid)
    statement = committee.sum_statement(RUN, r.cid, 21, setup.roster_digest(r.roster), s3_id, digest, members, True)
    s3 = Certificate(21, kept, nonces, members, {o: r.keys[o].sign(statement) for o in members}, True,
                     {o: r.keys[o].sign(committee.reveal_statement(RUN, r.cid, 21, o, s3_id, nonces[o]))
                      for o in COLLUDERS}, committee.update_root(RUN, r.cid, 21, list(kept)))
    r.verify(OUTSIDER, s3, forged, lean=False)
    for o in HONEST:
        with refused("own-update"):
            r.verify(o, s3, forged, lean=False)


def test_the_caveat_a_cohort_of_colluders_certifies_any_sum_towards_owners_outside_it(fresh):
    """The stated caveat (docs/privacy.md, the tenseal Guarantees): a round whose cohort the coordinator made of
    colluders only is certified with any sum, and an owner outside the cohort accepts it; in form every it would
    have range-checked each update itself. What it still refuses: any honest owner's contribution without its
    reveal signature for this set, and a committee the nonces do not derive."""
    r = Round(fresh, 1, {o: 1.0 for o in COLLUDERS})
    forged = r.owners[COLLUDERS[0]].protect(np.full(SIZE, 6.0), 1.0).blobs["ciphertext"]  # not the updates' sum
    statement = committee.sum_statement(RUN, r.cid, 1, setup.roster_digest(r.roster), r.cert.set_id(RUN, r.cid),
                                        hashlib.sha256(forged).digest(), r.committee, True)
    signed = Certificate(1, r.contributions, r.reveals, r.committee, {o: r.keys[o].sign(statement)
                                                                      for o in r.committee}, True)
    cert = full(r, signed)
    r.verify(OUTSIDER, cert, forged, lean=False)  # accepted: not detected
    for o in HONEST:  # so is it by any owner outside the cohort
        r.verify(o, cert, forged, lean=False)
    arrays = EncryptedGlobal(None, [committee.certified_round(1, forged, cert)]).arrays()
    opened = r.owners[OUTSIDER].open_global(arrays, np.zeros(SIZE, np.float32), 1)
    np.testing.assert_allclose(opened, 6.0, atol=1e-4)  # the colluders' global, not their updates' mean (1.0)
    with refused("choice"):  # detected: a committee the nonces do not derive
        r.verify(OUTSIDER, full(r, Certificate(1, r.contributions, r.reveals, COLLUDERS[:1] + (OUTSIDER,),
                                               signed.signatures, True)), forged, lean=False)


def test_dp_owner_level_a_certified_round_of_fewer_than_t_contributions_is_refused_by_members_and_owners(fresh):
    # dp=owner_level under tenseal: each contribution carries one noise share, only t carry the full noise.
    # A member refuses to sign, and an owner to open, a committed set of fewer than its t (counted first).
    r = Round(fresh, 1, {o: 0.1 for o in OWNERS[:3]})  # three contributors, t = 4 below
    contributor = next(o for o in OWNERS[:3] if o not in r.committee)
    member = r.committee[0]
    r.owners[member].min_contributions = 4
    with pytest.raises(Refusal, match="sums 3 signed contribution.*t=4") as exc:
        r.attest(member)
    assert (exc.value.code, exc.value.public) == ("bad-global", {"check": "contributions"})
    r.owners[member].min_contributions = 3  # its t met: it signs (and so does the other member)
    arrays = EncryptedGlobal(None, [committee.certified_round(1, r.sum_blob, r.signed())]).arrays()
    zeros = np.zeros(SIZE, np.float32)
    r.owners[contributor].min_contributions = 4
    with pytest.raises(Refusal, match="sums 3 signed contribution.*t=4") as exc:
        r.owners[contributor].open_global(arrays, zeros, 1)
    assert (exc.value.code, exc.value.public) == ("bad-global", {"check": "contributions"})
    r.owners[contributor].min_contributions = 3
    np.testing.assert_allclose(r.owners[contributor].open_global(arrays, zeros, 1), 0.1, atol=1e-4)
    # the sum alone (form sum) has no signed contributions to count: an owner with a floor refuses it
    alone = EncryptedGlobal(None, [committee.certified_round(1, r.sum_blob, None)]).arrays()
    r.owners[contributor].malicious_owners = False
    with refused("sum"):
        r.owners[contributor].open_global(alone, zeros, 1)
