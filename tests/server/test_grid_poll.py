"""Replies collected without Flower's 3 s sleeps between pulls (HttpGrid.send_and_receive)."""

import time
from types import SimpleNamespace

from fedveil.server import grid_poll


class SlowGrid:
    """Replies come ``after`` pulls; a message with ``refuse`` in its type gets no id (the SuperLink refused it)."""

    def __init__(self, after: int) -> None:
        self.after, self.pulls, self.pushed = after, 0, []

    def push_messages(self, messages):
        self.pushed = [None if "refuse" in m else m for m in messages]
        return self.pushed

    def pull_messages(self, ids):
        self.pulls += 1
        if self.pulls < self.after:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)]


def test_replies_are_collected_at_the_short_interval_and_a_refused_message_is_not_waited_for():
    grid = SlowGrid(after=4)
    start = time.monotonic()
    replies = grid_poll.send_and_receive(grid, ["a", "b", "refuse-c"], timeout=30)
    elapsed = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert grid.pulls == 4 and elapsed < 3 * grid_poll.PULL_INTERVAL_S + 3.0  # Flower's HttpGrid: 9 s


def test_send_and_receive_stops_at_its_timeout():
    grid = SlowGrid(after=10**9)
    start = time.monotonic()
    assert grid_poll.send_and_receive(grid, ["a"], timeout=0.3) == []
    assert 0.3 <= time.monotonic() - start < 3.0  # a loaded CI machine may stall a poll ~1 s
