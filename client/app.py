"""The ClientApp: a thin adapter from Flower Messages to :class:`fedveil.client.owner.Owner`.

Where an owner's files are:

- deployment: the SuperNode's ``--node-config "data-dir='...' state-dir='...' client-id='...'
  policy='...' party-keys='...'"`` (the owner's policy file; default ``<state-dir>/policy.json``;
  crypten: the aggregator parties' X25519 keys the owner pins, default
  ``<state-dir>/party-keys.json`` where it exists: keys from the server that differ are refused);
- simulation: ``data.client_dirs[partition-id]`` of the experiment, state under
  ``<output_dir>/clients/client_<partition-id>/``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.configs.schema import FedveilConfig, from_run_config
from fedveil.core import records, wire
from fedveil.core.console import quiet_libraries
from fedveil.core.errors import UserError
from fedveil.core.payload import Protected
from fedveil.privacy.secagg import backend_spec, sealing

app = ClientApp()

USER_ERROR_CODE = 4000  # an owner-side refusal or bad input; the reason is one line


def refusals_as_errors(handler):
    """Turn an owner-side :class:`UserError` into an error reply the server logs as one line."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except UserError as exc:
            return Message(Error(code=USER_ERROR_CODE, reason=str(exc)), reply_to=msg)

    return wrapped


def owner_identity(context: Context, data_dirs: list[str] | None, output_dir: str) -> OwnerIdentity:
    node = context.node_config
    if "data-dir" in node:
        owner_id = str(node.get("client-id", f"node_{context.node_id}"))
        state = str(node.get("state-dir", Path.home() / ".fedveil" / owner_id))
        cap = float(node["max-epsilon"]) if "max-epsilon" in node else None
        policy = str(node["policy"]) if "policy" in node else None  # else <state-dir>/policy.json
        return OwnerIdentity(owner_id, str(node["data-dir"]), state, cap, policy)
    if "partition-id" not in node:
        raise UserError("this SuperNode has no data: start it with --node-config \"data-dir='/path/to/data'\"")
    k = int(node["partition-id"])
    if not data_dirs or k >= len(data_dirs):
        raise UserError(f"no data.client_dirs entry for partition {k}: list one directory per owner")
    return OwnerIdentity(f"client_{k}", data_dirs[k], str(Path(output_dir) / "clients" / f"client_{k}"))


def identity_for(msg: Message, context: Context) -> tuple[FedveilConfig, OwnerIdentity, dict]:
    """(experiment config, this owner's identity, per-round keys) from a message."""
    quiet_libraries()
    run_config, per_round = records.split_config(msg.content[wire.CONFIG])
    cfg = from_run_config(run_config)
    return cfg, owner_identity(context, cfg.data.client_dirs, cfg.output_dir), per_round


def check_party_keys(cfg: FedveilConfig, context: Context, per_round: dict) -> None:
    """crypten: refuse party keys from the server that differ from those the node config pins."""
    pinned = context.node_config.get("party-keys")
    if cfg.aggregation.name != "crypten" or not pinned:
        return  # else the owner's <state-dir>/party-keys.json, where it exists (privacy/secagg/__init__.py)
    from fedveil.privacy.secagg.crypten.backend import check_pinned_party_keys

    keys = [bytes.fromhex(h) for h in str(per_round.get(wire.PARTY_KEYS, "")).split(",") if h]
    if keys:
        check_pinned_party_keys(keys, str(pinned))


def owner_for(msg: Message, context: Context) -> tuple[Owner, dict]:
    cfg, identity, per_round = identity_for(msg, context)
    check_party_keys(cfg, context, per_round)
    owner = Owner(cfg, identity, per_round)
    owner.layout.check(str(per_round.get(wire.LAYOUT_DIGEST, "")), "the server")
    return owner, per_round


def reply(msg: Message, owner_id: str, metrics: dict | None = None, meta: dict | None = None,
          protected: Protected | None = None) -> Message:
    return Message(records.reply(metrics or {}, {wire.OWNER_ID: owner_id, **(meta or {})}, protected), reply_to=msg)


@app.train()
@refusals_as_errors
def train(msg: Message, context: Context) -> Message:
    owner, _ = owner_for(msg, context)
    global_vector, reveal_seconds = owner.open_global(records.record_arrays(msg.content[wire.GLOBAL]))
    protected, metrics = owner.train_round(global_vector)
    metrics[wire.REVEAL_SECONDS] = reveal_seconds
    return reply(msg, owner.identity.owner_id, metrics, {wire.LAYOUT_DIGEST: owner.layout.digest}, protected)


@app.evaluate()
@refusals_as_errors
def evaluate(msg: Message, context: Context) -> Message:
    owner, per_round = owner_for(msg, context)
    global_vector, reveal_seconds = owner.open_global(records.record_arrays(msg.content[wire.GLOBAL]))
    metrics = {**owner.evaluate(global_vector), wire.REVEAL_SECONDS: reveal_seconds}
    encrypted = None
    if per_round.get(wire.REENCRYPT_BY) == owner.identity.owner_id:
        encrypted = Protected(blobs={wire.ENCRYPTED_GLOBAL: owner.encrypt_global(global_vector)})
    if per_round.get(wire.FINAL_ADAPTER):
        owner.save_final_adapter(global_vector)
    return reply(msg, owner.identity.owner_id, metrics, {wire.LAYOUT_DIGEST: owner.layout.digest}, encrypted)


# --- key set-up (see fedveil.server.key_setup; the backend's KeySetup does the work) -------


@app.query(wire.QUERY_PUBKEY.split(".", 1)[1])
@refusals_as_errors
def pubkey(msg: Message, context: Context) -> Message:
    _, identity, _ = identity_for(msg, context)
    _, public = sealing.keypair(identity.state_dir)
    return reply(msg, identity.owner_id, meta={wire.PUBLIC_KEY: public})


@app.query(wire.QUERY_KEYGEN.split(".", 1)[1])
@refusals_as_errors
def keygen(msg: Message, context: Context) -> Message:
    cfg, identity, _ = identity_for(msg, context)
    record = msg.content.config_records[wire.KEYS]
    owner_keys = {k[len(wire.PUBKEY_PREFIX):]: record[k] for k in record.keys() if k.startswith(wire.PUBKEY_PREFIX)}
    public, sealed = key_setup_of(cfg).generate(cfg.aggregation, owner_keys)
    boxes = {f"{wire.SEALED_PREFIX}{owner}": box for owner, box in sealed.items()}
    return reply(msg, identity.owner_id, meta={wire.PUBLIC_CONTEXT: public, **boxes})


@app.query(wire.QUERY_INSTALL.split(".", 1)[1])
@refusals_as_errors
def install(msg: Message, context: Context) -> Message:
    cfg, identity, _ = identity_for(msg, context)
    record = msg.content.config_records[wire.KEYS]
    key_setup_of(cfg).install(identity.state_dir, record[wire.PUBLIC_CONTEXT], record[wire.SEALED])
    return reply(msg, identity.owner_id)


def key_setup_of(cfg: FedveilConfig):
    setup = backend_spec(cfg.aggregation.name).key_setup
    if setup is None:
        raise UserError(f"aggregation '{cfg.aggregation.name}' has no key set-up; the server asked for one by mistake")
    return setup
