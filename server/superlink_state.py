"""The SuperLink's durable state (``--database FILE``), with Flower's hottest reads made cheap.

Profiled (``FEDVEIL_SUPERLINK_PROFILE``, below) on the deploy demo, the cost of Flower 1.42's
``SqlLinkState`` is not the disk: Flower already opens the file with ``journal_mode=WAL`` and
``synchronous=NORMAL`` (``flwr/supercore/constant.py:SQLITE_PRAGMAS``), and the same class on an
in-memory SQLite database is only ~25 % faster. It is Python: every call builds SQLAlchemy ORM
statements and a session (0.2-2 ms of CPU each, 3 ms and more when 13 processes share 2 cores),
and the three calls made on every poll are writes or run one first:

- ``get_node_id_by_public_key``: the node-authentication check of every Fleet request;
- ``get_message_ins``: a SuperNode's pull, an ``UPDATE ... RETURNING`` even when nothing is queued;
- ``get_run_status`` (and ``get_run_info``): ``_cleanup_expired_task_tokens`` first, two ``UPDATE``s
  even when no task's heartbeat expired.

``FastSqlLinkState`` answers each of these from a plain ``sqlite3`` read on the same file when the
answer needs no write: the key's node (or none), "nothing queued for this node", "no task token has
expired" (then the run's status, from the columns Flower's ORM query reads). Otherwise, and inside
a transaction Flower already has open, it calls Flower's own method. Nothing is cached: each
answer is read from the committed state at the time of the call, so a key deleted or unregistered
stops authenticating at once and a message stored is seen by the next pull, exactly as with
Flower's methods. The state written, its format and its durability are Flower's, unchanged: WAL
with ``synchronous=NORMAL`` survives a killed process (every committed transaction is in the WAL
file); power loss or an OS crash may lose the transactions committed since the last checkpoint
(SQLite syncs the WAL at checkpoints only), never corrupt the file.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.server.superlink.linkstate import linkstate_factory
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState, _run_status_from_task_model
from flwr.supercore.constant import NodeStatus
from flwr.supercore.object_store import object_store_factory
from flwr.supercore.run import RunStatus
from flwr.supercore.sql_mixin import _current_sessions
from flwr.supercore.utils import int64_to_uint64, uint64_to_int64

PROFILE_ENV = "FEDVEIL_SUPERLINK_PROFILE"  # FILE: per-method calls and seconds of the SuperLink's state, as JSON
FAST_READS_ENV = "FEDVEIL_SUPERLINK_FAST_READS"  # "0": Flower's own SqlLinkState (the baseline of the profile)
PROFILE_EVERY_S = 5.0  # the profile is rewritten this often: a killed SuperLink still leaves one
COLUMNS = ("calls", "wall_s", "cpu_s", "outer_wall_s", "outer_cpu_s")

NODE_BY_KEY = "SELECT node_id FROM node WHERE public_key = ? AND status != ? LIMIT 1"
# get_message_ins's claim condition (sql_linkstate.py:_claim_message_ins_rows), without a run filter
QUEUED_FOR_NODE = ("SELECT 1 FROM message_ins WHERE dst_node_id = ? AND delivered_at = '' AND created_at + ttl > ? "
                   "LIMIT 1")
# get_run_status's join (sql_linkstate.py); _run_status_from_task_model reads only these columns
RUN_STATUS = ("SELECT r.run_id, t.pending_at, t.starting_at, t.running_at, t.finished_at, t.sub_status, t.details, "
              "t.task_id FROM run r JOIN task t ON t.task_id = r.primary_task_id WHERE r.run_id IN ({})")
# what either UPDATE of _cleanup_expired_task_tokens needs before it changes a row (its status filters only narrow it)
EXPIRED_TOKEN = "SELECT 1 FROM task WHERE token IS NOT NULL AND active_until < ? LIMIT 1"


def sqlite_utc(moment: datetime) -> str:
    """A UTC time as Flower's ``UTCDateTime`` binds it on SQLite (``schema/types.py``): compared as text."""
    return moment.astimezone(UTC).isoformat(sep=" ")


class FastSqlLinkState(SqlLinkState):
    """Flower's ``SqlLinkState`` whose read-only answers on the hot path come from a plain SQLite read."""

    def initialize(self, log_queries: bool = False, **engine_kwargs: Any) -> list[str]:
        tables = super().initialize(log_queries, **engine_kwargs)
        self._reads = threading.local()
        self._path = None if self._is_in_memory_sqlite else self._engine.url.database
        return tables

    def _read(self, sql: str, params: tuple, rows: bool = False) -> tuple | list | None | bool:
        """One row (or all ``rows``) of a read on the committed state, or False where Flower's method must answer."""
        if self._path is None or (_current_sessions.get() or {}).get(self._session_scope) is not None:
            return False  # an open transaction of Flower's may hold writes a second connection cannot see
        conn = getattr(self._reads, "conn", None)
        if conn is None:
            # autocommit: each SELECT sees the last committed transaction; query_only: this connection never writes
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=5.0)
            conn.execute("PRAGMA query_only = 1")
            self._reads.conn = conn
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if rows else cursor.fetchone()

    def get_node_id_by_public_key(self, public_key: bytes) -> int | None:
        row = self._read(NODE_BY_KEY, (public_key, NodeStatus.UNREGISTERED))
        if row is False:
            return super().get_node_id_by_public_key(public_key)
        return None if row is None else int64_to_uint64(row[0])

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list:
        if run_id is None and (limit is None or limit >= 1):
            if self._read(QUEUED_FOR_NODE, (uint64_to_int64(node_id), time.time())) is None:
                return []  # Flower's claim would update no row, and an empty claim does nothing else
        return super().get_message_ins(node_id, limit, run_id=run_id)

    def get_run_status(self, run_ids: set[int]) -> dict[int, RunStatus]:
        self._cleanup_expired_task_tokens()
        if not run_ids:
            return {}
        found = self._read(RUN_STATUS.format(",".join("?" * len(run_ids))), tuple(map(uint64_to_int64, run_ids)), True)
        if found is False:
            return super().get_run_status(run_ids)
        columns = ("pending_at", "starting_at", "running_at", "finished_at", "sub_status", "details", "task_id")
        return {int64_to_uint64(row[0]): _run_status_from_task_model(SimpleNamespace(**dict(zip(columns, row[1:]))))
                for row in found}

    def _cleanup_expired_task_tokens(self) -> None:
        if self._read(EXPIRED_TOKEN, (sqlite_utc(datetime.now(UTC)),)) is None:
            return
        super()._cleanup_expired_task_tokens()


class Profile:
    """Calls and seconds (wall, and this thread's CPU) per method of the SuperLink's state objects."""

    def __init__(self, path: str) -> None:
        self.path, self.lock, self.rows = Path(path), threading.Lock(), {}
        self.depth = threading.local()

    def wrap(self, cls: type) -> type:
        """A subclass of ``cls`` whose public methods (and the token clean-up) are timed."""
        names = {n for klass in cls.__mro__ if klass is not object for n, v in vars(klass).items()
                 if callable(v) and (not n.startswith("_") or n == "_cleanup_expired_task_tokens")}
        names -= {"initialize", "get_metadata", "session", "query"}
        methods = {n: self.timed(f"{cls.__name__}.{n}", getattr(cls, n)) for n in names}
        return type(cls.__name__, (cls,), methods)

    def timed(self, name: str, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            outer = not getattr(self.depth, "n", 0)
            self.depth.n = getattr(self.depth, "n", 0) + 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth.n -= 1
                self.add(name, time.perf_counter() - wall, time.thread_time() - cpu, outer)
        return run

    def add(self, name: str, wall: float, cpu: float, outer: bool) -> None:
        with self.lock:
            row = self.rows.setdefault(name, dict.fromkeys(COLUMNS, 0))
            row["calls"] += 1
            row["wall_s"] += wall
            row["cpu_s"] += cpu
            if outer:  # a call from Flower's handlers, not one state method inside another: these add up
                row["outer_wall_s"] += wall
                row["outer_cpu_s"] += cpu

    def write(self) -> None:
        with self.lock:
            rows = {k: dict(v) for k, v in self.rows.items()}
        summary = {"state_wall_s": sum(v["outer_wall_s"] for v in rows.values()),
                   "state_cpu_s": sum(v["outer_cpu_s"] for v in rows.values()),
                   "calls": sum(v["calls"] for v in rows.values())}
        methods = dict(sorted(rows.items(), key=lambda kv: -kv[1]["outer_wall_s"]))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"summary": summary, "methods": methods}, indent=1))
        os.replace(tmp, self.path)

    def start(self) -> None:
        def loop() -> None:
            while True:
                time.sleep(PROFILE_EVERY_S)
                self.write()
        threading.Thread(target=loop, name="fedveil-state-profile", daemon=True).start()
        atexit.register(self.write)


def install_fast_state(fast: bool = True, profile: str | None = None) -> type:
    """Make Flower's state factories build ``FastSqlLinkState`` (``fast``) for a database file; time them (``profile``).

    ``fast=False`` keeps Flower's own ``SqlLinkState``: the baseline the profile compares against.
    """
    state_cls = FastSqlLinkState if fast else SqlLinkState
    if profile:
        timer = Profile(profile)
        state_cls = timer.wrap(state_cls)
        object_store_factory.SqlObjectStore = timer.wrap(object_store_factory.SqlObjectStore)
        timer.start()
    linkstate_factory.SqlLinkState = state_cls
    return state_cls


def install_from_env() -> str:
    """``install_fast_state`` as the environment asks; returns the line the SuperLink logs."""
    fast = os.environ.get(FAST_READS_ENV, "1") != "0"
    profile = os.environ.get(PROFILE_ENV) or None
    install_fast_state(fast, profile)
    return (f"fedveil-superlink: state file read {'by FastSqlLinkState' if fast else 'by Flower (fast reads off)'}"
            + (f"; profiled into {profile}" if profile else ""))
