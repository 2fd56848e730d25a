"""Fault points for the fault tests (tests/faults/): a process kills itself where a test asks.

``FEDVEIL_FAULT="POINT:N"`` (e.g. ``after-checkpoint:2``) makes :func:`maybe_die` send SIGKILL to
its own process when it reaches ``POINT`` with ``N``: no clean-up, no atexit, as a power cut or
the OOM killer would. Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "FEDVEIL_FAULT"


def maybe_die(point: str, n: int) -> None:
    if os.environ.get(ENV) == f"{point}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)
