"""The ClientApp: a thin adapter from Flower Messages to :class:`fedveil.client.owner.Owner`.

Where an owner's files are:

- deployment: the SuperNode's ``--node-config "data-dir='...' state-dir='...' client-id='...'"``;
- simulation: ``data.client_dirs[partition-id]`` of the experiment, state under
  ``<output_dir>/clients/client_<partition-id>/``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.configs.schema import from_run_config
from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.quiet import quiet_libraries
from fedveil.privacy import keys
from fedveil.privacy.secagg import tenseal_ckks as ckks
from fedveil.privacy.secagg.base import Protected

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
        client_id = str(node.get("client-id", f"node_{context.node_id}"))
        state = str(node.get("state-dir", Path.home() / ".fedveil" / client_id))
        cap = float(node["max-epsilon"]) if "max-epsilon" in node else None
        return OwnerIdentity(client_id, str(node["data-dir"]), state, cap)
    if "partition-id" not in node:
        raise UserError("this SuperNode has no data: start it with --node-config \"data-dir='/path/to/data'\"")
    k = int(node["partition-id"])
    if not data_dirs or k >= len(data_dirs):
        raise UserError(f"no data.client_dirs entry for partition {k}: list one directory per owner")
    return OwnerIdentity(f"client_{k}", data_dirs[k], str(Path(output_dir) / "clients" / f"client_{k}"))


def identity_for(msg: Message, context: Context):
    """(experiment config, this owner's identity, per-round keys) from a message."""
    quiet_libraries()
    run_config, per_round = wire.split_config(msg.content[wire.CONFIG])
    cfg = from_run_config(run_config)
    return cfg, owner_identity(context, cfg.data.client_dirs, cfg.output_dir), per_round


def owner_for(msg: Message, context: Context) -> tuple[Owner, dict]:
    cfg, identity, per_round = identity_for(msg, context)
    owner = Owner(cfg, identity, per_round)
    owner.layout.check(str(per_round.get(wire.DIGEST_KEY, "")), "the server")
    return owner, per_round


def global_of(owner: Owner, record) -> tuple[np.ndarray, float]:
    """The global adapter from the message: in clear (plain) or opened from ciphertexts."""
    if "adapter" in record:
        return wire.record_vector(record), 0.0
    return owner.open_global(*wire.record_sealed(record))


def meta_of(owner: Owner) -> dict:
    return {wire.DIGEST_KEY: owner.layout.digest, wire.CLIENT_KEY: owner.identity.client_id}


@app.train()
@refusals_as_errors
def train(msg: Message, context: Context) -> Message:
    owner, per_round = owner_for(msg, context)
    global_vector, reveal_seconds = global_of(owner, msg.content[wire.GLOBAL])
    protected, metrics = owner.train_round(int(per_round[wire.ROUND_KEY]), global_vector)
    metrics["reveal-seconds"] = reveal_seconds
    return Message(wire.reply(metrics, meta_of(owner), protected), reply_to=msg)


@app.evaluate()
@refusals_as_errors
def evaluate(msg: Message, context: Context) -> Message:
    owner, per_round = owner_for(msg, context)
    global_vector, reveal_seconds = global_of(owner, msg.content[wire.GLOBAL])
    metrics = {**owner.evaluate(global_vector), "reveal-seconds": reveal_seconds}
    resealed = None
    if per_round.get(wire.REENCRYPT_KEY) == owner.identity.client_id:
        resealed = Protected(blobs={wire.REENCRYPTED: owner.seal_global(global_vector)})
    if per_round.get(wire.FINAL_KEY):
        owner.save_final_adapter(global_vector)
    return Message(wire.reply(metrics, meta_of(owner), resealed), reply_to=msg)


# --- tenseal key set-up (see fedveil.server.key_setup) -------------------------------------


@app.query("pubkey")
@refusals_as_errors
def pubkey(msg: Message, context: Context) -> Message:
    _, identity, _ = identity_for(msg, context)
    _, public = keys.owner_keypair(identity.state_dir)
    return Message(wire.reply({}, {wire.CLIENT_KEY: identity.client_id, "public-key": public}), reply_to=msg)


@app.query("keygen")
@refusals_as_errors
def keygen(msg: Message, context: Context) -> Message:
    cfg, identity, _ = identity_for(msg, context)
    ctx = ckks.make_context(cfg.aggregation)
    public, secret = ckks.public_bytes(ctx), ckks.secret_bytes(ctx)
    record = msg.content.config_records[wire.KEYS]
    sealed = {f"sealed.{k[len('pubkey.'):]}": ckks.seal(secret, record[k]) for k in record.keys() if k.startswith("pubkey.")}
    del secret, ctx  # the key holder keeps its copy only through its own sealed box, like everyone
    return Message(wire.reply({}, {wire.CLIENT_KEY: identity.client_id, "public-context": public, **sealed}), reply_to=msg)


@app.query("install")
@refusals_as_errors
def install(msg: Message, context: Context) -> Message:
    _, identity, _ = identity_for(msg, context)
    record = msg.content.config_records[wire.KEYS]
    private, _ = keys.owner_keypair(identity.state_dir)
    secret = ckks.unseal(record["sealed"], private)
    ckks.load_context(secret)  # refuse bytes that are no CKKS context before storing them
    keys.install_context(identity.state_dir, record["public-context"], secret)
    return Message(wire.reply({}, {wire.CLIENT_KEY: identity.client_id}), reply_to=msg)
