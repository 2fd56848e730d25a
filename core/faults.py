"""Failpoints for the fault-injection tests: SIGKILL this process at a named point in the code.

    FEDVEIL_FAULT="before-checkpoint:2"            # the coordinator, round 2, metrics row written, no checkpoint
    FEDVEIL_FAULT="crypten-party-mpc:2@1"          # aggregator party 1, in the MPC of round 2
    FEDVEIL_FAULT="ledger-write@client_0"          # client_0's epsilon ledger, between temp file and rename

A spec is ``POINT[:ROUND][@WHO]``; several may be given, comma-separated. A process that reaches
:func:`maybe_die` with a matching point (and round and who, where the spec names them) sends
itself SIGKILL: no ``finally``, no ``atexit``, no flush, as a power cut or the OOM killer would.
With ``FEDVEIL_FAULT`` unset each call is one dictionary lookup. Never set it outside tests.

The points (``tests/faults/`` kills at each and shows what survives; docs/reliability.md):

===================== ============================================================================
``aggregate``          coordinator, after the owners' replies arrived, before the backend combines them
``before-checkpoint``  coordinator, after the round's metrics row and round-chain entry, before its checkpoint
``after-checkpoint``   coordinator, right after the round's checkpoint (the round's commit point)
``ledger-write``       owner, inside an epsilon-ledger write: temp file written, not yet renamed (WHO: owner id)
``owner-training``     owner, after the round's spend is recorded, before local training (WHO: owner id)
``worker-training``    owner worker process, on a train instruction, before it is carried out (WHO: owner id)
``crypten-party-mpc``  aggregator party, after taking a round up, before the MPC (WHO: its rank)
===================== ============================================================================
"""

from __future__ import annotations

import os
import signal

ENV = "FEDVEIL_FAULT"


def matches(spec: str, point: str, server_round: int | None = None, who: str | None = None) -> bool:
    """Whether one of the comma-separated specs in ``spec`` names this point (round, who)."""
    for item in spec.split(","):
        name, _, target = item.strip().partition("@")
        name, _, at_round = name.partition(":")
        if name != point:
            continue
        if at_round and (server_round is None or int(at_round) != int(server_round)):
            continue
        if target and target != str(who):
            continue
        return True
    return False


def maybe_die(point: str, server_round: int | None = None, who: str | None = None) -> None:
    """SIGKILL this process if ``FEDVEIL_FAULT`` names ``point`` (and ``server_round``, ``who``)."""
    spec = os.environ.get(ENV)
    if spec and matches(spec, point, server_round, who):
        os.kill(os.getpid(), signal.SIGKILL)
