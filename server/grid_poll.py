"""Send messages to the owners and collect their replies, polling the SuperLink often.

Flower 1.42's ``Grid.send_and_receive`` pushes and then pulls the replies, but in deployment
(``HttpGrid``, ``flwr/superlink/grid/http_grid.py``) it sleeps a fixed 3 s between pulls, so every
exchange lasted a whole multiple of 3 s (two exchanges a round: 3-6 s of a round spent asleep).
This is the same loop with a short interval; a pull is one request to the SuperLink's Runtime API.
A reply's objects still being uploaded are asked for again soon, not after Flower's 1 s back-off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedveil.core import records, wire
from fedveil.core.prompt_pull import prompt_pull_object

PULL_INTERVAL_S = 0.05


@dataclass
class Exchange:
    """One send-and-receive: the replies and the bytes each node moved."""

    replies: list[Message]
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    seconds: float

    def plus(self, more: "Exchange") -> "Exchange":
        """These replies, with the bytes and seconds of ``more`` (an exchange the round needed besides) added."""
        def add(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
            return {n: a.get(n, 0) + b.get(n, 0) for n in {*a, *b}}

        return Exchange(self.replies, add(self.bytes_down, more.bytes_down), add(self.bytes_up, more.bytes_up),
                        self.seconds + more.seconds)


def exchange(grid: Grid, messages: list[Message], timeout: float) -> Exchange:
    """Send ``messages`` and collect the replies (:func:`send_and_receive`), counting each node's bytes."""
    down = {m.metadata.dst_node_id: records.content_nbytes(m.content) for m in messages}
    start = time.perf_counter()
    replies = send_and_receive(grid, messages, timeout) if messages else []
    up = {m.metadata.src_node_id: records.content_nbytes(m.content) for m in replies if m.has_content()}
    return Exchange(replies, down, up, time.perf_counter() - start)


def query_messages(run_config: dict, server_round: int, layout_digest: str, message_type: str,
                   keys: dict[str, dict[str, bytes]], nodes: dict[str, int]) -> list[Message]:
    """One query message of a round to each owner in ``keys``, at its node in ``nodes``: the run's config with the
    round and the adapter layout, and the blobs the owner is shown (its KEYS record)."""
    config = ConfigRecord({**run_config, wire.ROUND: server_round, wire.LAYOUT_DIGEST: layout_digest})
    return [Message(RecordDict({wire.CONFIG: config, wire.KEYS: ConfigRecord(dict(k))}), dst_node_id=nodes[o],
                    message_type=message_type) for o, k in sorted(keys.items())]


def send_and_receive(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Push, then pull replies every ``PULL_INTERVAL_S`` until all came or ``timeout`` passed.

    A message the SuperLink did not accept (no id) gets no reply and is not waited for.
    """
    prompt_replies(grid)
    pending = {i for i in grid.push_messages(messages) if i}
    end = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() >= end:
            break
        time.sleep(PULL_INTERVAL_S)
    return replies


def prompt_replies(grid: Grid) -> None:
    """Deployment: ask the SuperLink again soon for a reply's objects still being uploaded.

    ``HttpGrid.pull_messages`` pulls each reply's objects through its Runtime API client's
    ``PullObject`` with Flower's 1 s back-off (``core/prompt_pull.py``); this wraps that client's
    call once. The in-memory grid of the simulation has no such client and is left as it is.
    """
    client = getattr(grid, "_runtime_client", None)  # flwr 1.42 HttpGrid (pinned)
    if client is not None and not getattr(client, "_fedveil_prompt", False):
        client.PullObject = prompt_pull_object(client.PullObject)
        client._fedveil_prompt = True
