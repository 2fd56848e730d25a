"""tenseal's verifier committee in the round loop: what a round's download form adds after its train replies.

``aggregation.download`` (resolved by the run; ``tenseal/committee.py``, docs/privacy.md "tenseal's verifier
committee"):

- ``every``: nothing; the holder keeps every accepted owner's signed update of the round.
- ``sum``: the holder keeps the sum of the round's updates alone (no exchange); owners whose policy says
  other owners do not poison open it.
- ``committee``: one reveal exchange (each contributor is shown its place in the committed set and replies
  with its nonce), the draft (the committee the nonces derive), one attest exchange (the members only: every
  signed update and the draft; each replies with its signature), then the certified round replaces the
  signed updates in the holder.

Any failure (an owner that does not reveal in time or refuses, a member that does not sign, a reveal
signature that fails) keeps the form ``every`` for the round: owners always open it. An owner outside the
round's cohort opens a certified round too: it revealed for no set of it, so it checks the full certificate,
every contributor's reveal signature over this set included (``tenseal/committee.py``). The bytes of both
exchanges count in the round's row (:func:`settle` returns them).
"""

from __future__ import annotations

from fedveil.core import records, wire
from fedveil.core.console import progress
from fedveil.core.errors import UserError
from fedveil.core.payload import Protected
from fedveil.server.grid_poll import Exchange, exchange, query_messages
from fedveil.server.strategy import TrainOutcome

NOTHING = Exchange([], {}, {}, 0.0)
# ``fed`` below is server/federation.py's Federation (untyped here: that module imports this one)


def settle(fed, server_round: int, outcome: TrainOutcome) -> Exchange:
    """Round ``server_round``'s pending entry in ``fed.state`` as its download form says (after
    ``fed.state.apply(outcome)``); returns the exchanges it took (their bytes join the round's row)."""
    form, steps = getattr(fed.cfg.aggregation, "download", "every"), fed.spec.committee
    if form == "every" or steps is None or not outcome.accepted:
        return NOTHING
    payloads = outcome.payloads
    try:
        if form == "sum":
            steps.settle(fed.state, server_round, steps.sum_round(fed.strategy.backend, payloads, server_round))
            return NOTHING
        return certify(fed, server_round, payloads, steps)
    except UserError as exc:
        progress(f"  round {server_round}: download form '{form}' not used, every signed update kept: {exc}")
        return getattr(exc, "exchanged", NOTHING)


def certify(fed, server_round: int, payloads: dict[str, Protected], steps) -> Exchange:
    """The reveal exchange, the draft, the members' attest exchange, the certified round kept in the holder.
    A failure raises :class:`UserError` carrying what was exchanged so far (``exchanged``)."""
    server, done = fed.strategy.backend, NOTHING
    nodes = {who: node for node, who in fed.labels.items() if who in payloads}  # the node each update came from
    try:
        missing = steps.uncommitted(payloads)
        if missing:
            raise UserError(f"owner(s) {missing} sent no nonce commitment with their update")
        contributions = steps.contributions_of(payloads)
        queries = steps.reveal_queries(server, server_round, contributions)
        shown_each = {o: {wire.REVEAL_QUERY: q} for o, q in queries.items()}
        done, revealed = ask(fed, server_round, wire.QUERY_REVEAL, shown_each, nodes,
                             (wire.NONCE, wire.REVEAL_SIGNATURE), done)
        reveals = {o: r[wire.NONCE] for o, r in revealed.items()}
        draft = steps.draft(server, server_round, contributions, reveals, checked=fed.cfg.privacy.malicious_owners)
        shown = {m: {wire.COMMITTEE_UPDATES: steps.round_updates(payloads, server_round, leave_out=m),
                     wire.COMMITTEE_DRAFT: draft.encode()} for m in draft.committee}  # a member has its own
        done, attested = ask(fed, server_round, wire.QUERY_ATTEST, shown, nodes, (wire.ATTESTATION,), done)
        signatures = {o: r[wire.ATTESTATION] for o, r in attested.items()}
        steps.settle(fed.state, server_round, steps.certify(server, payloads, draft, signatures,
                                                            {o: r[wire.REVEAL_SIGNATURE] for o, r in revealed.items()}))
    except UserError as exc:
        exc.exchanged = done
        raise
    progress(f"  round {server_round}: sum certified by committee {list(draft.committee)}")
    return done


def ask(fed, server_round: int, message_type: str, keys: dict[str, dict[str, bytes]], nodes: dict[str, int],
        reply_keys: tuple[str, ...], done: Exchange) -> tuple[Exchange, dict[str, dict[str, bytes]]]:
    """One exchange with the owners in ``keys`` (their KEYS record each); every one must reply with a blob under
    each of ``reply_keys`` (owner -> those blobs)."""
    absent = sorted(set(keys) - set(nodes))
    if absent:
        raise UserError(f"no node is known for owner(s) {absent}")
    msgs = query_messages(fed.run_config, server_round, fed.layout.digest, message_type, keys, nodes)
    ex = exchange(fed.grid, msgs, fed.cfg.sim.round_timeout_s)
    done = done.plus(ex)
    asked, got = {nodes[o]: o for o in keys}, {}
    for m in ex.replies:  # named by the node asked, never by what the reply says of itself
        blobs = records.records_to_protected(m.content).blobs if m.has_content() and not m.has_error() else {}
        wanted = {k: blobs.get(k) for k in reply_keys}
        if all(isinstance(b, bytes) and b for b in wanted.values()) and m.metadata.src_node_id in asked:
            got[asked[m.metadata.src_node_id]] = wanted
    silent = sorted(set(keys) - set(got))
    if silent:
        why = [records.error_reason(m) for m in ex.replies if m.has_error()]
        error = UserError(f"{message_type}: owner(s) {silent} did not answer{f' ({why[0]})' if why else ''}")
        error.exchanged = done
        raise error
    return done, got
