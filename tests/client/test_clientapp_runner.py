"""The long-lived ClientApp runner imports no app but the one its owner pinned."""

from types import SimpleNamespace

import pytest

from fedveil.client import clientapp_runner
from fedveil.client.clientapp_runner import Runner
from fedveil.client.supernode import fab_sha256


def test_the_clientapp_runner_imports_no_app_but_the_pinned_one(monkeypatch):
    installed = []
    monkeypatch.setattr(clientapp_runner, "install_from_fab", lambda content, **kw: installed.append(content))
    pinned_content, other_content = b"the app the owner reviewed", b"the app with one changed line"
    runner = Runner("127.0.0.1:9", fab_sha256(pinned_content))
    run = SimpleNamespace(fab_id="fedveil/fedveil", fab_version="1")
    # the SuperLink names the hash; the runner hashes the content itself
    other = SimpleNamespace(hash_str=fab_sha256(pinned_content), content=other_content)
    with pytest.raises(PermissionError, match="is not the pinned app"):
        runner.app_for(run, other)
    assert installed == [] and runner.apps == {}
