"""The SuperNode's nudge to its ClientApp runner: delivered, drained, private, and never an error."""

import stat
import time

from fedveil.core.wake import Nudger, Waiter


def test_a_nudge_wakes_the_waiter_at_once_and_queued_nudges_count_once(tmp_path):
    path = tmp_path / "clientapp.wake"
    waiter, nudger = Waiter(path), Nudger(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # only the owner's user can nudge
        start = time.monotonic()
        assert waiter.wait(0.05) is False and time.monotonic() - start >= 0.04  # nothing sent: it times out
        for _ in range(5):  # nudges sent while the runner was busy with a task
            nudger.nudge()
        start = time.monotonic()
        assert waiter.wait(5.0) is True and time.monotonic() - start < 1.0
        assert waiter.wait(0.05) is False  # all five were consumed by the one wake-up
    finally:
        waiter.close()
    assert not path.exists()


def test_nudging_nobody_is_harmless_and_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "clientapp.wake"
    Nudger(path).nudge()  # no runner yet: the nudge is lost, nothing raises
    first = Waiter(path)
    first.sock.close()  # a runner that died without cleaning up leaves its socket file
    second = Waiter(path)
    try:
        Nudger(path).nudge()
        assert second.wait(5.0) is True
    finally:
        second.close()
