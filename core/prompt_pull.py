"""Pull Flower's message objects promptly: an object announced but not uploaded yet is asked again soon.

Flower 1.42 makes a message visible to its reader before the message's objects (arrays, ciphertext
blobs) are uploaded, and a reader that asks too early is told "not available"; ``pull_objects``
then backs off 1 s, then 2 s, 4 s... (``PULL_INITIAL_BACKOFF = 1``,
``flwr/supercore/inflatable/inflatable_utils.py``). On each hop of a message (ServerApp ->
SuperLink -> SuperNode -> ClientApp, and the reply back) that cost 1-3 s. These wrappers ask
again every ``RETRY_S`` for up to ``PATIENCE_S`` before answering "not available", after which
Flower's own back-off applies unchanged. Nothing about what is pulled or checked changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

RETRY_S = 0.02
PATIENCE_S = 10.0


def prompt_pull_object(pull: Callable):
    """Wrap a ``PullObject(PullObjectRequest) -> PullObjectResponse`` call."""

    def pull_object(request):
        end = time.monotonic() + PATIENCE_S
        while True:
            res = pull(request)
            if not res.object_found or res.object_available or time.monotonic() >= end:
                return res
            time.sleep(RETRY_S)

    return pull_object


def prompt_pull_fn(pull: Callable[..., bytes]) -> Callable[..., bytes]:
    """Wrap a pull function that raises Flower's ``ObjectUnavailableError`` (the SuperNode's ``pull_object``)."""
    def pull_object(*args) -> bytes:
        end = time.monotonic() + PATIENCE_S
        while True:
            try:
                return pull(*args)
            except ObjectUnavailableError:
                if time.monotonic() >= end:
                    raise
                time.sleep(RETRY_S)

    return pull_object
