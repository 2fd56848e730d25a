"""Federation-wide key set-up, relayed by the server (``tenseal``): it ends up with the public context only.

1. ``query.pubkey``: every owner checks its pinned roster and answers with its X25519 public key
   and its Ed25519 verify key (the server checks owners' signed updates and globals against these
   to exclude bad ones; owners check them against their pinned roster, whatever the server does).
2. ``query.keygen``: the key holder (the owner with the smallest id, or ``aggregation.key_holder``;
   it must be the roster's) makes the keys, seals the secret part to every *pinned* owner key and
   signs the set-up; it answers with the public context, the signed statement and the sealed boxes.
3. ``query.install``: each owner checks the key holder's signature, opens its sealed box and stores
   the context.

A restarted coordinator (``resume=true``) keys nothing: in step 1 every owner also names the
context it holds for the run (the key holder adds the public context and its signed statement);
if all name the same one, the server takes it up (:func:`rejoin`) and its stored ciphertexts stay
valid. Owners that hold none, or different ones, stop the run with one line: re-keying would orphan
the stored ciphertexts (and owners refuse a second context for a run anyway). Without
``resume=true`` a run its owners already hold a context for is refused the same way.

The server relays sealed boxes it cannot open and a signature it cannot forge; the owner-side steps
are the backend's ``KeySetup`` (``privacy/secagg/tenseal/keys.py``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedveil.core import records, wire
from fedveil.core.disk import owner_id
from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import KeySetup
from fedveil.server.availability import wait_for_nodes
from fedveil.server.grid_poll import send_and_receive


def connected_owners(grid: Grid, num_owners: int, timeout: float) -> list[int]:
    """The nodes to key: ``num_owners`` of those connected, or all connected once ``timeout``
    (``sim.round_timeout_s``) has passed with fewer (:func:`ask` then names who is missing)."""
    nodes = wait_for_nodes(grid, num_owners, timeout)
    return random.sample(nodes, num_owners) if len(nodes) > num_owners else nodes


def ask(grid: Grid, nodes: list[int], message_type: str, run_config: dict, keys: dict[int, dict],
        timeout: float, *, owners: dict[int, str] | None = None, expected: int | None = None) -> dict[int, Message]:
    """Every node's reply to ``message_type``, waited for at most ``timeout``; any missing, refused or
    (``expected`` owners, fewer ``nodes``) never connected: one line naming them and the fix."""
    msgs = [Message(RecordDict({wire.CONFIG: ConfigRecord(dict(run_config)), wire.KEYS: ConfigRecord(keys.get(n, {}))}),
                    dst_node_id=n, message_type=message_type) for n in nodes]
    replies = {m.metadata.src_node_id: m for m in send_and_receive(grid, msgs, timeout)}
    names = {**(owners or {}), **{n: records.owner_label(m) for n, m in replies.items() if m.has_content()}}
    failed = {names.get(n, f"node_{n}"): records.error_reason(m) for n, m in replies.items() if m.has_error()}
    silent = [n for n in nodes if n not in replies]
    failed.update({names[n]: f"no answer within sim.round_timeout_s={timeout:g} s" for n in silent if n in names})
    unnamed = sum(n not in names for n in silent) + max(0, (expected or len(nodes)) - len(nodes))
    if unnamed:  # never heard of by name: the owner ids they would have (core/disk.py), else how many
        guess = [o for o in map(owner_id, range(expected or len(nodes))) if o not in names.values()]
        who = ", ".join(guess) if len(guess) == unnamed else f"{unnamed} owner(s)"
        failed[who] = f"not connected, or no answer within sim.round_timeout_s={timeout:g} s"
    if failed:
        detail = "; ".join(f"{who}: {why}" for who, why in sorted(failed.items()))
        raise UserError(f"key set-up failed at {message_type} ({detail}); every owner must take part to key the "
                        "federation: bring those owners back (SuperNode running, link up) and start the run again, "
                        "or raise sim.round_timeout_s")
    return replies


@dataclass(frozen=True)
class Keyed:
    """What the server ends up with: the public context, the run it was made for, node id -> owner
    id, and owner id -> the Ed25519 verify key it announced (announced again after a restart)."""

    public: bytes
    run: str
    owners: dict[int, str]
    signers: dict[str, bytes]
    rejoined: bool = False  # a resumed run: the context the owners already held, no key set-up


def setup_keys(grid: Grid, run_config: dict, num_owners: int, key_holder: str, timeout: float,
               resume: bool = False, *, setup: KeySetup) -> Keyed:
    """Run the three exchanges; or, when resuming a run the owners hold a context for, take that one up
    (``setup``: the backend's key set-up, whose server-side checks this uses)."""
    nodes = connected_owners(grid, num_owners, timeout)
    replies = ask(grid, nodes, wire.QUERY_PUBKEY, run_config, {}, timeout, expected=num_owners)
    owners = {n: records.owner_label(m) for n, m in replies.items()}
    metas = {owners[n]: m.content.config_records[wire.META] for n, m in replies.items()}
    pubkeys = {o: meta[wire.PUBLIC_KEY] for o, meta in metas.items()}
    signers = {o: bytes(meta.get(wire.VERIFY_KEY, b"")) for o, meta in metas.items()}
    held = {o: {k[len(wire.HELD_PREFIX):]: bytes(v) for k, v in meta.items() if k.startswith(wire.HELD_PREFIX)}
            for o, meta in metas.items()}
    if any(held.values()):
        if not resume:
            raise UserError(f"the owners already hold a tenseal context for this run ({_contexts(held)}): a second key "
                            "set-up would re-key it, which they refuse; pass resume=true to continue the run, or "
                            "choose another hydra.run.dir")
        return rejoin(held, owners, signers, key_holder or min(owners.values()), setup=setup)
    holder_id = key_holder or min(owners.values())
    holder = next((n for n, oid in owners.items() if oid == holder_id), None)
    if holder is None:
        raise UserError(f"aggregation.key_holder '{key_holder}' is not among the owners {sorted(owners.values())}")
    keygen = {f"{wire.PUBKEY_PREFIX}{oid}": pk for oid, pk in pubkeys.items()}
    made = ask(grid, [holder], wire.QUERY_KEYGEN, run_config, {holder: keygen}, timeout,
               owners=owners)[holder].content.config_records[wire.META]
    public = made[wire.PUBLIC_CONTEXT]
    signed = {wire.PUBLIC_CONTEXT: public, wire.SETUP_STATEMENT: made[wire.SETUP_STATEMENT],
              wire.SETUP_SIGNATURE: made[wire.SETUP_SIGNATURE]}
    missing = sorted(owners[n] for n in nodes if f"{wire.SEALED_PREFIX}{owners[n]}" not in made)
    if missing:
        raise UserError(f"the key holder sealed no context to {missing}: they are not in its pinned roster; "
                        "pin the same roster at every owner")
    install = {n: {**signed, wire.SEALED: made[f"{wire.SEALED_PREFIX}{owners[n]}"]} for n in nodes}
    ask(grid, nodes, wire.QUERY_INSTALL, run_config, install, timeout, owners=owners)
    return Keyed(public, setup.run_of(made[wire.SETUP_STATEMENT]), owners, signers)


def _contexts(held: dict[str, dict[str, bytes]]) -> str:
    return ", ".join(
        f"{o}: {h['context'].decode()[:12] if 'context' in h else 'none'}" for o, h in sorted(held.items())
    )


def rejoin(held: dict[str, dict[str, bytes]], owners: dict[int, str], signers: dict[str, bytes],
           key_holder: str, *, setup: KeySetup) -> Keyed:
    """A restarted coordinator takes up the context every owner holds for the run (no re-keying);
    the public context and the run come from ``key_holder``'s signed set-up, checked here."""
    contexts = {h.get("context", b"") for h in held.values()}
    if len(contexts) != 1 or b"" in contexts:
        raise UserError(
            f"the owners do not all hold the same tenseal context for this run ({_contexts(held)}), so it cannot "
            "resume without re-keying (which would orphan its stored ciphertexts); start a new run directory"
        )
    told = held.get(key_holder, {})
    if "public" not in told:
        raise UserError(f"the key holder {key_holder} sent no public tenseal context for this run: the run cannot "
                        "resume; check aggregation.key_holder and that the key holder's state directory is intact")
    try:
        if json.loads(told["statement"])["key_holder"] != key_holder:
            raise PayloadError(f"its statement names another key holder than {key_holder}")
        run, cid = setup.check_rejoin(
            told["public"], told["statement"], told["signature"], signers.get(key_holder, b"")
        )
    except (PayloadError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"the key holder's held tenseal set-up does not check out ({exc}): the run cannot "
                        "resume") from exc
    if contexts != {cid.encode()}:
        raise UserError("the key holder's public tenseal context is not the one the owners hold: the run cannot resume")
    return Keyed(told["public"], run, owners, signers, rejoined=True)
