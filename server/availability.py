"""Which owners a round goes on with: the connected ones, waited for at most the round's timeout.

Flower's FedAvg waits (``strategy_utils.sample_nodes``) until ``min_available_nodes`` nodes are
connected, without a limit: one owner whose link is down would hold the federation forever. Here a
round waits at most ``sim.round_timeout_s`` (public, in the run config) for every owner, then goes on
with those connected if they are at least the backend's floor (:func:`owner_floor`); the others are
recorded in the round's row (``excluded``) and take part again as soon as they are back.
"""

from __future__ import annotations

import time

from flwr.serverapp import Grid

from fedveil.configs.schema import FedveilConfig
from fedveil.core.console import progress
from fedveil.core.errors import UserError

POLL_S = 0.5  # get_node_ids is one request to the SuperLink; an owner's reconnect takes seconds anyway


def owner_floor(cfg: FedveilConfig) -> int:
    """The fewest owners a round can go on with: ``aggregation.min_owners`` where the backend has one
    (crypten: its parties reveal no smaller aggregate), else 1."""
    return max(1, int(getattr(cfg.aggregation, "min_owners", 1) or 1))


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, poll: float = POLL_S) -> list[int]:
    """The connected nodes, once ``wanted`` of them are or ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < wanted and time.monotonic() < end:
        time.sleep(max(0.0, min(poll, end - time.monotonic())))
    return nodes


def connected_nodes(grid: Grid, cfg: FedveilConfig, server_round: int) -> list[int]:
    """The nodes round ``server_round`` goes on with: every owner, or those connected after
    ``sim.round_timeout_s`` if they are at least the backend's floor; else the run stops in one line."""
    timeout = cfg.sim.round_timeout_s
    nodes = wait_for_nodes(grid, cfg.num_clients, timeout)
    floor = owner_floor(cfg)
    if len(nodes) < floor:
        raise UserError(f"round {server_round}: {len(nodes)} of {cfg.num_clients} owners connected within "
                        f"sim.round_timeout_s={timeout:g} s, fewer than the {floor} a round needs "
                        f"(aggregation.min_owners); bring the owners back and restart with resume=true")
    if len(nodes) < cfg.num_clients:
        progress(f"  round {server_round}: {len(nodes)} of {cfg.num_clients} owners connected after {timeout:g} s; "
                 "going on with them")
    return nodes


def absent_reason(timeout: float) -> str:
    return f"not connected within sim.round_timeout_s={timeout:g} s (its link is down or it stopped)"


def silent_reason(timeout: float) -> str:
    return f"no reply within sim.round_timeout_s={timeout:g} s (the owner went away)"
