"""A nudge between two local processes: "there is work for you now", instead of polling for it.

The SuperNode (``client/supernode.py``) nudges its long-lived ClientApp runner
(``client/clientapp_runner.py``) each time it has stored a message, so the runner asks for the
task at once instead of asking every few tens of milliseconds (on a 2-core machine with three
owners, that polling cost more than it saved: ``experiments/bench_deploy.py``). The channel is a
Unix datagram socket the waiting process binds with 0600 permissions in its owner's state
directory. A nudge carries no data and nothing is trusted from it: a stray one only makes the
runner ask the SuperNode once more, and a lost one costs at most the waiter's fallback interval.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

ENV = "FEDVEIL_WAKE_SOCKET"  # the socket's path, in both processes' environment (deploy/start-supernode.sh)


class Waiter:
    """The receiving end: bind ``path`` (0600; a stale socket file is replaced) and wait for nudges."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a previous runner's socket: nobody listens on it any more
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)

    def wait(self, timeout: float) -> bool:
        """True when nudged within ``timeout`` seconds (every nudge already queued is consumed)."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recv(16)
        except (socket.timeout, BlockingIOError):
            return False
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(16)
        except (BlockingIOError, InterruptedError):
            pass
        return True

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class Nudger:
    """The sending end; never raises (no waiter, a full queue: the waiter's fallback covers it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def nudge(self) -> None:
        try:
            self.sock.sendto(b"!", self.path)
        except OSError:
            pass
