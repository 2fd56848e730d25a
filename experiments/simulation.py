"""Run the ServerApp and ClientApps on Flower's Simulation Engine (Ray), in this process.

Flower 1.42 deprecates the public ``run_simulation()`` in favour of ``flwr run``, which packages
the app, starts a detached local SuperLink that outlives the command, and streams logs back. A
Hydra sweep wants none of that: it wants one in-process run per job that returns when the run
ends. ``run_simulation()`` is a thin wrapper (deprecation warning + telemetry) around
``_run_simulation``, which we call directly; the version pin (flwr==1.42.0) and the
end-to-end tests (``tests/experiments/test_end_to_end.py``) guard the call. ``flwr run .`` still works for users who
prefer it (``[tool.flwr.app]`` in pyproject.toml).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedveil.configs.schema import FedveilConfig, to_run_config
from fedveil.core.console import quiet_loggers
from fedveil.core.metrics import RunSummary
from fedveil.privacy.secagg import backend_spec

WAITING_REFRESH_S = 0.05  # the engine sweeps all nodes every 0.1 s


def run_in_simulation(cfg: FedveilConfig) -> RunSummary | None:
    """Run the federation; returns the coordinator's summary of it (None: the run ended early), which
    the caller writes (summary.json is written once, with what the runner adds)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from flwr.app import Context, RecordDict  # lazy: after the environment above (read at flwr's import)

    from fedveil.client.app import app as client_app  # lazy: imports flwr
    from fedveil.server.app import server_app  # lazy: imports flwr

    quiet_loggers()

    init_args = {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}
    if cfg.sim.ray_address:  # an existing cluster: its nodes need this environment and the run's paths
        init_args["address"] = cfg.sim.ray_address
    backend_config = {
        "client_resources": {"num_cpus": cfg.sim.client_cpus, "num_gpus": cfg.sim.client_gpus},
        "init_args": init_args,
    }
    # what the backend needs running beside the federation (crypten: local aggregator parties)
    with backend_spec(cfg.aggregation.name).local_services(cfg.aggregation, Path(cfg.output_dir), cfg.num_clients):
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=to_run_config(cfg))
        kept: list[RunSummary] = []
        run_engine(cfg, context, client_app, server_app(kept.append), backend_config)
    return kept[0] if kept else None


def run_engine(cfg: FedveilConfig, context, client_app, server_app, backend_config: dict) -> None:
    from flwr.simulation.run_simulation import _run_simulation  # lazy: as in run_in_simulation
    from flwr.supercore.telemetry import EventType  # lazy: as in run_in_simulation

    skip_idle_nodes()

    _run_simulation(
        num_supernodes=cfg.num_clients,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config,
        server_app_context=context,
    )


def skip_idle_nodes() -> None:
    """Make the Simulation Engine's message polling cost O(messages), not O(owners x messages).

    Flower 1.42's engine (``vce_api.add_messages_to_queue``) asks the in-memory state, every 0.1 s
    and for each of the ``num_clients`` nodes, for that node's next message; each ask checks every
    stored message (expiry, federation: a lock, a clock read and set operations per message). With
    1,000 owners and a round's 100 messages in flight that is 100,000 checks per tick: measured here
    a thread of the runner busy as long as both simulation workers together. Now one plain scan of
    the undelivered messages' destinations, at most every ``WAITING_REFRESH_S``, answers the nodes
    without a message (empty); a node with one is asked as before (checks, expiry clean-up and
    delivery unchanged). A message pushed just after a scan waits for the next sweep (0.1 s).
    """
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState  # lazy: as in run_in_simulation

    original = InMemoryLinkState.get_message_ins
    if getattr(original, "_fedveil_skips_idle", False):
        return

    def get_message_ins(self, node_id, limit, *, run_id=None):
        now = time.monotonic()
        at, waiting = getattr(self, "_fedveil_waiting", (-1.0, set()))
        if now - at > WAITING_REFRESH_S:  # one scan serves a whole sweep over the nodes
            with self.lock:
                waiting = {
                    m.metadata.dst_node_id for m in self.message_ins_store.values() if m.metadata.delivered_at == ""
                }
            self._fedveil_waiting = (now, waiting)
        return original(self, node_id, limit, run_id=run_id) if node_id in waiting else []

    get_message_ins._fedveil_skips_idle = True
    InMemoryLinkState.get_message_ins = get_message_ins
