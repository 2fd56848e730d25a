"""The fault-injection tests' harness. A whole federation in one process: the coordinator's loop
(``server/federation.py``, as the ServerApp runs it) with every owner played by the ClientApp
(``client/app.py``, in-process path, simulated owner ``client_K``) through a grid in memory, and
crypten's aggregator parties started as their own processes (``launcher.local_parties``).

No Ray and no Simulation Engine: a few seconds instead of tens, and the process a failpoint
(``FEDVEIL_FAULT``, ``core/faults.py``) kills is this one, with its parties (they die with it).

    python tests/faults/harness.py CONFIG_JSON [--drop ROUND:OWNER ...]

``CONFIG_JSON`` is the experiment config (``configs/schema.py`` values); ``--drop`` makes an owner
vanish in that round: its train message gets no reply (a SuperNode that went away; the round
goes on when the others have answered, as after Flower's round timeout). ``down`` (in-process
runs) sets an owner's link down from round FIRST to LAST: in FIRST it trains but its reply is lost,
in the rounds after it is not connected (``get_node_ids`` leaves it out), after LAST it is back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
HARNESS = __file__
SERVER_APP_IDENTITY = (("_run_id", 1), ("_node_id", 0), ("_task_id", 1))  # what a ServerApp process is given


class LocalGrid:
    """The coordinator's Grid, minus the network: each message goes to its node's ClientApp here."""

    def __init__(self, num_owners: int, drop: set[tuple[int, str]] = frozenset(),
                 down: dict[str, tuple[int, int]] | None = None):
        self.nodes = {100 + k: k for k in range(num_owners)}
        self.drop, self.down, self.replies = set(drop), dict(down or {}), {}
        self.last_round = 0  # the round of the last message pushed: the next round is this one's successor

    def link_down(self, owner: str, server_round: int, mid_round: bool) -> bool:
        first, last = self.down.get(owner, (0, -1))
        return first <= server_round <= last if mid_round else first < server_round <= last

    def get_node_ids(self):
        return [n for n, k in self.nodes.items() if not self.link_down(f"client_{k}", self.last_round + 1, False)]

    def push_messages(self, messages):
        from flwr.app import Context, RecordDict

        from fedveil.client.app import app
        from fedveil.core import records, wire

        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            k = self.nodes[m.metadata.dst_node_id]
            ids.append(m.object_id)
            server_round = int(records.split_config(m.content[wire.CONFIG])[1].get(wire.ROUND, 0)) \
                if wire.CONFIG in m.content else self.last_round
            self.last_round = max(self.last_round, server_round)
            if m.metadata.message_type == "train" and (server_round, f"client_{k}") in self.drop:
                continue  # this owner vanished mid-round: no reply
            context = Context(run_id=1, node_id=m.metadata.dst_node_id, node_config={"partition-id": k},
                              state=RecordDict(), run_config={})
            reply = app(message=m, context=context)
            if not self.link_down(f"client_{k}", server_round, True):  # else: it did the work, the reply is lost
                self.replies[m.object_id] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def federate(values: dict, drop: set[tuple[int, str]] = frozenset(),
             down: dict[str, tuple[int, int]] | None = None) -> dict:
    """Run the federation ``values`` describes (with its local services); returns the summary."""
    from fedveil.configs.schema import from_dict
    from fedveil.core.console import quiet_libraries
    from fedveil.privacy.secagg import backend_spec
    from fedveil.server.federation import run_federation
    from fedveil.server.outputs import write_outputs
    from fedveil.server.prepare import prepare

    quiet_libraries()
    cfg = prepare(from_dict(values), report_data=False, write_policies=True)
    spec = backend_spec(cfg.aggregation.name)
    with spec.local_services(cfg.aggregation, Path(cfg.output_dir), cfg.num_clients):
        cfg.sim.round_timeout_s = 0.5 if drop or down else cfg.sim.round_timeout_s  # dropped owners never answer
        summary = run_federation(LocalGrid(cfg.num_clients, drop, down), cfg)
    write_outputs(cfg.output_dir, summary)  # as the ServerApp does
    return summary.to_dict()


def experiment(out: Path, model: Path, data: list[str], aggregation: dict, rounds: int = 3, **extra) -> dict:
    """A tiny federation: 3 owners, ``rounds`` rounds, 2 local steps of 4 short examples, no DP."""
    return {
        "seed": 3,
        "rounds": rounds,
        "num_clients": len(data),
        "output_dir": str(out),
        "model": {"path": str(model)},
        "data": {"client_dirs": data, "max_length": 32},
        "train": {"local_steps": 2, "batch_size": 4},
        "dp": {"name": "off"},
        "aggregation": aggregation,
        **extra,
    }


def in_process(values: dict, drop: set[tuple[int, str]] = frozenset(),
               down: dict[str, tuple[int, int]] | None = None) -> dict:
    """The federation in this process, as a ServerApp process would run it."""
    from flwr.supercore.task_identity import TaskIdentity

    with pytest.MonkeyPatch.context() as mp:
        for name, value in SERVER_APP_IDENTITY:
            mp.setattr(TaskIdentity, name, value)
        return federate(values, drop, down)


def killed(values: dict, fault: str, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the federation in its own process with ``FEDVEIL_FAULT=fault``; it must die of SIGKILL.
    Whatever it started is then killed by its process group (nothing may outlive the test)."""
    proc = subprocess.Popen(
        [sys.executable, HARNESS, json.dumps(values), *(f"--drop={d}" for d in drop)],
        env={**os.environ, "FEDVEIL_FAULT": fault},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, f"{fault}: exit {proc.returncode}\n{output[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


def rounds_logged(out: Path) -> list[int]:
    """The rounds metrics.jsonl holds, in order (every line must parse)."""
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("round_*.safetensors"))


def assert_nothing_half_written(out: Path) -> None:
    """Every file a run keeps parses: metrics rows, round-chain entries (and the chain verifies),
    checkpoints, owners' epsilon ledgers; and no temp file of an atomic write is left behind."""
    from safetensors.numpy import load_file

    from fedveil.server import round_chain

    rows = rounds_logged(out) if (out / "metrics.jsonl").exists() else []
    assert rows == sorted(set(rows)), f"a round is logged twice or out of order: {rows}"
    if (out / round_chain.FILENAME).exists():
        ok, why = round_chain.verify(out / round_chain.FILENAME)
        assert ok, why
        chained = [e["round"] for e in map(json.loads, (out / round_chain.FILENAME).read_text().splitlines())]
        assert chained == [r for r in rows if r > 0], (chained, rows)
    for ckpt in (out / "checkpoints").glob("*.safetensors"):
        load_file(ckpt)
    for ledger in out.glob("clients/*/privacy_ledger.json"):
        json.loads(ledger.read_text())
    assert not [p for p in out.rglob(".*.tmp")], "a temp file of an interrupted write was left behind"


def final_adapter(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(out / "final_adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    diffs = {k: float(abs(a[k] - b[k]).max()) for k in a}
    assert max(diffs.values()) == 0.0, diffs


def main() -> int:
    """As ``server/app.py``: a :class:`UserError` that ends the run is one line and exit 2."""
    from fedveil.core.errors import UserError

    parser = argparse.ArgumentParser()
    parser.add_argument("config", help="the experiment config as JSON")
    parser.add_argument("--drop", action="append", default=[], help="ROUND:OWNER that vanishes in that round")
    args = parser.parse_args()
    drop = {(int(r), owner) for r, owner in (d.split(":", 1) for d in args.drop)}
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in SERVER_APP_IDENTITY:
        setattr(TaskIdentity, name, value)
    try:
        federate(json.loads(args.config), drop)
    except UserError as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
