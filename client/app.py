"""The ClientApp: a thin translator between Flower Messages and the owner's operations.

Each handler decodes the Message into an :class:`~fedveil.client.protocol.Instruction` and either
relays it to the owner's long-lived worker (deployment: node config ``worker='<socket>'``; see
``client/worker.py``) or carries it out in this process (simulation, or a SuperNode without a
worker) with :func:`fedveil.client.operations.handle`. Whatever comes back, a reply or any
exception, leaves through the owner's release gate (``client/release.py``): a refusal leaves as a
code with public parameters, its line stays on this console. In relay mode this process imports
neither torch nor the model.

Where an owner's files are (in-process path):

- deployment: the SuperNode's ``--node-config "data-dir='...' state-dir='...' client-id='...'
  policy='...' roster='...' model-path='...'"`` (the owner's own copy of the base model, default the
  run's ``model.path``; the owner's policy file, default ``<state-dir>/policy.json``; the
  pinned roster of every owner's keys that tenseal's key set-up needs, default
  ``<state-dir>/roster.json``, format in ``privacy/secagg/identity.py``; the federation distributes
  it out of band, the coordinator never does); ``party-keys='...'`` (crypten: the aggregator
  parties' X25519 keys the owner pins, default ``<state-dir>/party-keys.json`` where it exists:
  keys from the server that differ are refused);
- simulation: ``data.client_dirs[partition-id]`` of the experiment, state under
  ``<output_dir>/clients/client_<partition-id>/`` (the runner pins the roster there).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedveil.client import protocol
from fedveil.client.protocol import Answer, Instruction
from fedveil.client.release import dp_requested, release
from fedveil.client.worker import relay
from fedveil.core import records, wire
from fedveil.core.console import quiet_libraries
from fedveil.core.disk import owner_id, owner_state_dir
from fedveil.core.errors import Refusal, UserError

app = ClientApp()


def instruction_of(msg: Message, op: str) -> Instruction:
    run_config, per_round = records.split_config(msg.content[wire.CONFIG])
    content = msg.content
    try:
        arrays = (
            records.record_arrays(content.array_records[wire.GLOBAL]) if wire.GLOBAL in content.array_records else {}
        )
    except (ValueError, TypeError) as exc:  # e.g. a str array: numpy cannot even hold it
        raise Refusal("bad-global", f"the global adapter cannot be read as an array ({exc})", check="dtype") from exc
    keys = dict(content.config_records[wire.KEYS].items()) if wire.KEYS in content.config_records else {}
    return Instruction(op, run_config, per_round, arrays, keys)


def carry_out(instruction: Instruction, context: Context) -> Answer:
    """Relay to the owner's worker when the node config names one; else run here."""
    node = context.node_config
    if "worker" in node:
        return relay(str(node["worker"]), instruction)
    from fedveil.client.operations import handle  # lazy: torch and the model code; a relay never loads them
    from fedveil.configs.schema import from_run_config  # lazy: torch and the model code; a relay never loads them

    quiet_libraries()
    cfg = from_run_config(instruction.run_config)
    return handle(instruction, owner_identity(context, cfg.data.client_dirs, cfg.output_dir), cfg)


def owner_identity(context: Context, data_dirs: list[str] | None, output_dir: str):
    from fedveil.client.owner import OwnerIdentity  # torch: only where this process is the owner (see carry_out)

    node = context.node_config
    if "data-dir" in node:
        who = str(node.get("client-id", f"node_{context.node_id}"))
        state = str(node.get("state-dir", Path.home() / ".fedveil" / who))
        cap = float(node["max-epsilon"]) if "max-epsilon" in node else None
        policy = str(node["policy"]) if "policy" in node else None  # else <state-dir>/policy.json
        roster = str(node["roster"]) if "roster" in node else None  # else <state-dir>/roster.json
        model = str(node["model-path"]) if "model-path" in node else None  # else the run's model.path
        parties = str(node["party-keys"]) if "party-keys" in node else None  # else <state-dir>/party-keys.json
        return OwnerIdentity(who, str(node["data-dir"]), state, cap, policy, roster, model, parties)
    if "partition-id" not in node:
        raise UserError("this SuperNode has no data: start it with --node-config \"data-dir='/path/to/data'\" "
                        "(or worker='/path/owner.sock' beside a running fedveil-owner worker)")
    k = int(node["partition-id"])
    if not data_dirs or k >= len(data_dirs):
        raise UserError(f"no data.client_dirs entry for partition {k}: list one directory per owner")
    return OwnerIdentity(owner_id(k), data_dirs[k], str(owner_state_dir(output_dir, k)))


def answer(msg: Message, context: Context, op: str) -> Message:
    """Carry out ``msg`` and reply with what the release gate lets out (an error for any failure)."""
    dp_on = True  # a message whose config cannot say counts as DP
    try:
        if wire.CONFIG in msg.content.config_records:
            dp_on = dp_requested(dict(msg.content.config_records[wire.CONFIG]))
        outcome: Answer | BaseException = carry_out(instruction_of(msg, op), context)
    except Exception as exc:  # noqa: BLE001 -- every failure leaves as a code; its text stays here
        outcome = exc
    released = release(outcome, dp_on, f"node {context.node_id}")
    if released.is_error:
        return Message(Error(code=released.error_code, reason=released.reason), reply_to=msg)
    return Message(records.reply(released.metrics, released.meta, released.protected), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return answer(msg, context, protocol.TRAIN)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return answer(msg, context, protocol.EVALUATE)


def _answering(op: str):
    def handler(msg: Message, context: Context) -> Message:
        return answer(msg, context, op)

    handler.__name__ = op.replace(".", "_")
    return handler


# the queries: key set-up (server/key_setup.py relays it; the backend's KeySetup does the work), tenseal's held-out
# sum, and its verifier committee (server/committee_exchange.py asks; client/operations.py:committee_step answers)
for _op in (*protocol.KEY_SETUP_OPS, protocol.EVALSUM, *protocol.COMMITTEE_OPS):
    app.query(_op)(_answering(_op))
