"""The SuperLink's state file: FastSqlLinkState answers as Flower's SqlLinkState does, cheaper, and survives a kill."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from flwr.app import DEFAULT_TTL, ConfigRecord, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate import LinkStateFactory, linkstate_factory
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.utils import uint64_to_int64
from flwr.superlink.federation import NoOpFederationManager
from sqlalchemy import event

from fedveil.server.superlink_state import FastSqlLinkState, Profile, install_fast_state, sqlite_utc


def open_state(cls, db):
    state = cls(str(db), NoOpFederationManager(), ObjectStoreFactory().store())  # objects in memory: not tested here
    state.initialize()
    return state


def an_owner(state, key=b"owner-key"):
    node_id = state.create_node("operator", "operator", key, 30.0)
    assert state.activate_node(node_id, 30.0)
    return node_id


def a_run(state):
    return state.create_run(None, None, "0" * 64, {}, NOOP_FEDERATION_ID, None, "operator", "serverapp")


def instruction(run_id, node_id, ttl=DEFAULT_TTL, created_at=None):
    metadata = Metadata(run_id=run_id, message_id="", src_node_id=SUPERLINK_NODE_ID, dst_node_id=node_id,
                        reply_to_message_id="", group_id="", message_type="train",
                        created_at=time.time() if created_at is None else created_at, ttl=ttl)
    message = make_message(metadata=metadata, content=RecordDict({"c": ConfigRecord({"round": 1})}))
    message.metadata.__dict__["_message_id"] = message.object_id  # as the SuperLink sets it
    return message


@contextmanager
def statements(state):
    """The SQL statements a state runs through Flower's SQLAlchemy engine while the block runs."""
    seen = []
    def count(conn, cursor, statement, *_):
        seen.append(statement)
    event.listen(state._engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(state._engine, "before_cursor_execute", count)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    """A state file with Flower's schema: its migrations take seconds, a copy of the file does not."""
    path = tmp_path_factory.mktemp("state") / "superlink.db"
    open_state(SqlLinkState, path)._engine.dispose()  # closing checkpoints the WAL into the file
    return path


@pytest.fixture
def db(tmp_path, migrated):
    shutil.copy(migrated, tmp_path / "superlink.db")
    return tmp_path / "superlink.db"


def test_a_registered_key_authenticates_and_stops_at_once_when_its_node_is_deleted(db):
    fast, flower = open_state(FastSqlLinkState, db), open_state(SqlLinkState, db)
    node_id = an_owner(fast)
    for key, expected in ((b"owner-key", node_id), (b"stranger-key", None)):
        assert fast.get_node_id_by_public_key(key) == flower.get_node_id_by_public_key(key) == expected
    fast.delete_node("operator", node_id)  # the operator unregisters it: nothing remembered lets it in
    assert fast.get_node_id_by_public_key(b"owner-key") is None
    assert flower.get_node_id_by_public_key(b"owner-key") is None
    # written by another state object on the file: read at once; ids are random uint64, stored as int64
    others = {key: an_owner(flower, key) for key in (b"key-%d" % i for i in range(24))}
    assert {key: fast.get_node_id_by_public_key(key) for key in others} == others
    assert max(others.values()) >= 2**63  # (each id has 1/2 odds: one of 24 is above 2**63 but once in 2**24)


def test_a_pull_gets_each_queued_message_once_and_nothing_expired_or_for_another_node(db):
    fast = open_state(FastSqlLinkState, db)
    node_id, other = an_owner(fast), an_owner(fast, b"other-key")
    run_id = a_run(fast)
    assert fast.get_message_ins(node_id, 1) == []
    stored = fast.store_message_ins(instruction(run_id, node_id))
    assert fast.get_message_ins(other, 1) == []
    pulled = fast.get_message_ins(node_id, 1)
    assert [m.metadata.message_id for m in pulled] == [stored] and pulled[0].content["c"]["round"] == 1
    assert fast.get_message_ins(node_id, 1) == []  # delivered: not again
    fast.store_message_ins(instruction(run_id, node_id, ttl=2.0, created_at=time.time() - 1.0))
    time.sleep(1.2)  # its TTL ran out in the queue
    assert fast.get_message_ins(node_id, 1) == []


def test_run_status_reads_as_flowers_and_an_expired_task_token_is_still_cleaned_up(db):
    fast, flower = open_state(FastSqlLinkState, db), open_state(SqlLinkState, db)
    pending, running, missing = a_run(fast), a_run(fast), 12345
    past, later = (sqlite_utc(datetime.now(UTC) + timedelta(minutes=m)) for m in (-5, 5))
    with sqlite3.connect(db) as conn:  # two ServerApps claimed their runs' tasks; one still sends heartbeats
        for run_id, until in ((pending, None), (running, later)):
            if until:
                conn.execute("UPDATE task SET starting_at = ?, running_at = ?, token = ?, active_until = ? "
                             "WHERE run_id = ?", (past, past, f"tok-{run_id}", until, uint64_to_int64(run_id)))
    ids = {pending, running, missing}
    assert fast.get_run_status(ids) == flower.get_run_status(ids)
    assert {k: v.status for k, v in fast.get_run_status(ids).items()} == {pending: "pending", running: "running"}
    with sqlite3.connect(db) as conn:  # ... the running one stops
        conn.execute("UPDATE task SET active_until = ? WHERE run_id = ?", (past, uint64_to_int64(running)))
    status = fast.get_run_status({running})[running]
    assert (status.status, status.sub_status, status.details) == ("finished", "failed",
                                                                  "No heartbeat received from the task")
    assert fast.get_run_status(ids) == flower.get_run_status(ids) and fast.get_run_status(set()) == {}


def test_the_polled_reads_skip_flowers_orm_unless_a_write_is_due(db):
    fast, flower = open_state(FastSqlLinkState, db), open_state(SqlLinkState, db)
    node_id, run_id = an_owner(fast), a_run(fast)
    for state, expected in ((fast, [0, 0, 0]), (flower, [1, 1, 3])):  # Flower: UPDATE...RETURNING; 2 UPDATEs first
        counts = []
        for call in (lambda s=state: s.get_node_id_by_public_key(b"owner-key"), lambda s=state: s.get_message_ins(
                node_id, 1), lambda s=state: s.get_run_status({run_id})):
            with statements(state) as seen:
                call()
            counts.append(len(seen))
        assert counts == expected, type(state).__name__


def test_inside_flowers_open_transaction_flowers_own_method_answers(db):
    fast = open_state(FastSqlLinkState, db)
    with fast.session():  # uncommitted: a second connection cannot see this node yet, Flower's session can
        node_id = fast.create_node("operator", "operator", b"new-key", 30.0)
        assert fast.get_node_id_by_public_key(b"new-key") == node_id


def test_the_state_file_is_wal_with_normal_sync_and_the_superlink_builds_the_fast_state(db, monkeypatch):
    monkeypatch.setattr(linkstate_factory, "SqlLinkState", SqlLinkState)  # put back after the test
    install_fast_state()
    state = LinkStateFactory(str(db), NoOpFederationManager(), ObjectStoreFactory(str(db))).state()
    assert type(state) is FastSqlLinkState
    with state._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: no fsync per commit


KILLED = """
import os, signal, sys, time
from fedveil.server.superlink_state import install_fast_state
install_fast_state()
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.utils import uint64_to_int64
from flwr.superlink.federation import NoOpFederationManager
sys.path.insert(0, {tests!r})
from test_superlink_state import a_run, an_owner, instruction
db = {db!r}
state = LinkStateFactory(db, NoOpFederationManager(), ObjectStoreFactory(db)).state()
node_id = an_owner(state)
run_id = a_run(state)
message_id = state.store_message_ins(instruction(run_id, node_id))
print(node_id, run_id, message_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: what a killed SuperLink leaves
"""


def test_the_state_survives_a_killed_superlink(db):
    code = KILLED.format(tests=os.path.dirname(__file__), db=str(db))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    node_id, run_id, message_id = proc.stdout.split()
    assert os.path.getsize(f"{db}-wal") > 0  # the commits are in the WAL, not yet checkpointed into the file
    state = open_state(FastSqlLinkState, db)
    assert state.get_node_id_by_public_key(b"owner-key") == int(node_id)
    assert state.get_run_status({int(run_id)})[int(run_id)].status == "pending"
    assert [m.metadata.message_id for m in state.get_message_ins(int(node_id), 1)] == [message_id]


def test_the_profile_counts_calls_and_seconds_of_the_outermost_calls_only(tmp_path):
    class State:
        def outer(self):
            return self.inner() + 1

        def inner(self):
            time.sleep(0.01)
            return 1

    profile = Profile(str(tmp_path / "profile.json"))
    timed = profile.wrap(State)()
    assert timed.outer() == 2 and timed.inner() == 1
    profile.write()
    written = json.loads((tmp_path / "profile.json").read_text())
    assert written["methods"]["State.inner"]["calls"] == 2 and written["methods"]["State.outer"]["calls"] == 1
    assert written["methods"]["State.inner"]["outer_wall_s"] < written["methods"]["State.inner"]["wall_s"]
    assert written["summary"]["calls"] == 3 and 0.02 <= written["summary"]["state_wall_s"] < 0.5
