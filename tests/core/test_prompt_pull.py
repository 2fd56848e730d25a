"""Objects still being uploaded are asked for again promptly, not after Flower's 1 s back-off."""

import time
from types import SimpleNamespace

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedveil.core import prompt_pull


def test_an_object_still_being_uploaded_is_asked_for_again_until_it_arrives(monkeypatch):
    calls = []

    def pull(run_id, object_id):
        calls.append(object_id)
        if len(calls) < 5:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert prompt_pull.prompt_pull_fn(pull)(1, "obj") == b"content" and len(calls) == 5
    monkeypatch.setattr(prompt_pull, "PATIENCE_S", 0.1)  # then Flower's own back-off takes over
    with pytest.raises(ObjectUnavailableError):
        prompt_pull.prompt_pull_fn(lambda *a: (_ for _ in ()).throw(ObjectUnavailableError("x")))(1, "x")


def test_the_protobuf_pull_returns_the_object_once_available_and_a_missing_one_at_once():
    answers = iter([SimpleNamespace(object_found=True, object_available=False)] * 3
                   + [SimpleNamespace(object_found=True, object_available=True, object_content=b"x")])
    assert prompt_pull.prompt_pull_object(lambda req: next(answers))("req").object_content == b"x"
    missing = SimpleNamespace(object_found=False, object_available=False)
    start = time.monotonic()
    assert prompt_pull.prompt_pull_object(lambda req: missing)("req") is missing
    assert time.monotonic() - start < 0.5
