"""Key set-up for ``tenseal``, relayed by the server, which ends up holding the public context only.

1. ``query.pubkey``: every owner answers with its X25519 public key.
2. ``query.keygen``: the key holder (the owner with the smallest client id, or
   ``aggregation.key_holder``) creates the CKKS context and seals its secret part to every
   owner's public key; it answers with the public context and the sealed boxes.
3. ``query.install``: each owner receives its sealed box, opens it and stores the context.

The server relays sealed boxes it cannot open (libsodium sealed boxes, X25519 + XSalsa20-Poly1305).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.server.strategy import client_label, error_reason

PUBKEY, KEYGEN, INSTALL = "query.pubkey", "query.keygen", "query.install"


def ask(grid: Grid, nodes: list[int], message_type: str, base_config: dict, keys: dict[int, dict],
        timeout: float) -> dict[int, Message]:
    msgs = [Message(RecordDict({wire.CONFIG: ConfigRecord(dict(base_config)), wire.KEYS: ConfigRecord(keys.get(n, {}))}),
                    dst_node_id=n, message_type=message_type) for n in nodes]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs, timeout=timeout)}
    failed = {n: (error_reason(m) if m.has_error() else "no answer") for n, m in replies.items() if m.has_error()}
    failed.update({n: "no answer in time" for n in nodes if n not in replies})
    if failed:
        detail = "; ".join(f"node {n}: {why}" for n, why in sorted(failed.items()))
        raise UserError(f"tenseal key set-up failed at {message_type} ({detail}); every owner must be reachable to key the federation")
    return replies


def setup_keys(grid: Grid, base_config: dict, num_clients: int, key_holder: str, timeout: float) -> tuple[bytes, dict[int, str]]:
    """Run the three exchanges; returns the public context and node id -> client id."""
    nodes, _ = sample_nodes(grid, num_clients, num_clients)
    replies = ask(grid, nodes, PUBKEY, base_config, {}, timeout)
    owners = {n: client_label(m) for n, m in replies.items()}
    pubkeys = {owners[n]: m.content.config_records[wire.META]["public-key"] for n, m in replies.items()}
    holder_id = key_holder or min(owners.values())
    holder = next((n for n, cid in owners.items() if cid == holder_id), None)
    if holder is None:
        raise UserError(f"aggregation.key_holder '{key_holder}' is not among the owners {sorted(owners.values())}")
    keygen = {f"pubkey.{cid}": pk for cid, pk in pubkeys.items()}
    made = ask(grid, [holder], KEYGEN, base_config, {holder: keygen}, timeout)[holder].content.config_records[wire.META]
    public = made["public-context"]
    install = {n: {"public-context": public, "sealed": made[f"sealed.{owners[n]}"]} for n in nodes}
    ask(grid, nodes, INSTALL, base_config, install, timeout)
    return public, owners
