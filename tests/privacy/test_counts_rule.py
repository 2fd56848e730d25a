"""The one rule "may the coordinator see counts", as both sides call it."""

from types import SimpleNamespace

import pytest

from fedveil.privacy.secagg.base import server_sees_counts
from fedveil.privacy.secagg.plain import PlainBackend


@pytest.mark.parametrize("sees_updates, dp_on, seen", [(True, False, True), (True, True, False),
                                                       (False, False, False), (False, True, False)])
def test_counts_only_where_updates_are_seen_and_without_dp(sees_updates, dp_on, seen):
    assert server_sees_counts(SimpleNamespace(server_sees_updates=sees_updates), dp_on) is seen


def test_plain_without_dp_is_the_only_case():
    assert server_sees_counts(PlainBackend, False) and not server_sees_counts(PlainBackend, True)
