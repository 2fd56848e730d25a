"""The ClientApp: a thin adapter from Flower Messages to :class:`fedveil.client.owner.Owner`.

Where an owner's files are:

- deployment: the SuperNode's ``--node-config "data-dir='...' state-dir='...' client-id='...'"``;
- simulation: ``data.client_dirs[partition-id]`` of the experiment, state under
  ``<output_dir>/clients/client_<partition-id>/``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.configs.schema import from_run_config
from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.quiet import quiet_libraries

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


def owner_for(msg: Message, context: Context) -> tuple[Owner, dict]:
    quiet_libraries()
    run_config, per_round = wire.split_config(msg.content[wire.CONFIG])
    cfg = from_run_config(run_config)
    owner = Owner(cfg, owner_identity(context, cfg.data.client_dirs, cfg.output_dir))
    owner.layout.check(str(per_round.get(wire.DIGEST_KEY, "")), "the server")
    return owner, per_round


@app.train()
@refusals_as_errors
def train(msg: Message, context: Context) -> Message:
    owner, per_round = owner_for(msg, context)
    global_vector = wire.record_vector(msg.content[wire.GLOBAL])
    protected, metrics = owner.train_round(int(per_round[wire.ROUND_KEY]), global_vector)
    meta = {wire.DIGEST_KEY: owner.layout.digest, wire.CLIENT_KEY: owner.identity.client_id}
    return Message(wire.reply(metrics, meta, protected), reply_to=msg)


@app.evaluate()
@refusals_as_errors
def evaluate(msg: Message, context: Context) -> Message:
    owner, _ = owner_for(msg, context)
    metrics = owner.evaluate(wire.record_vector(msg.content[wire.GLOBAL]))
    meta = {wire.DIGEST_KEY: owner.layout.digest, wire.CLIENT_KEY: owner.identity.client_id}
    return Message(wire.reply(metrics, meta), reply_to=msg)
