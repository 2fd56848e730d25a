"""Attacks and faults against the owner's epsilon ledger; each must fail.

The claim under attack: the privacy an owner has spent is never under-counted
(``privacy/dp/epsilon_ledger.py``). Every test names, in a ``before:`` comment (or the ATTACKS
table), what the attack achieved against the ledger before locking, unique temp files and the hash chain (commit
34f8495); those outcomes were observed by running the same attacks on that code.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re

import pytest

from fedveil.core.io import leftover_temps
from fedveil.privacy.dp import epsilon_ledger as ledger
from fedveil.privacy.dp.accounting import epsilon_of
from fedveil.privacy.dp.epsilon_ledger import BudgetExceeded, LedgerError, Step, reserve
from fedveil.privacy.dp.sgd import SampleLevelDPConfig

pytestmark = pytest.mark.adversary

SIGMA, Q, STEPS, DELTA = 1.0, 0.05, 5, 1e-5


def cfg(budget: float) -> SampleLevelDPConfig:
    return SampleLevelDPConfig(target_epsilon=budget, delta=DELTA, accountant="rdp", noise_multiplier=SIGMA)


# --- (a) concurrent owners on one state dir ------------------------------------------------------

@pytest.fixture(scope="module")
def procs():
    """Processes from a fork server that has imported the ledger (and opacus, torch) once: a
    fresh interpreter per worker costs ~5 s of CPU each, too slow for 2 cores. The server is
    forked before any test thread or torch pool exists, so its children are clean."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fedveil.privacy.dp.epsilon_ledger"])
    return ctx


def owner_process(state, who, rounds, budget, reopen, barrier, results):
    """One owner process: reserve ``rounds`` steps, all released at once by ``barrier``."""
    try:
        c = cfg(budget)
        led = ledger.open_ledger(state, c, 1000, budget)  # loaded once: stale once another process reserves
        barrier.wait(timeout=120)
        ok = refused = 0
        for r in range(1, rounds + 1):
            if reopen:
                led = ledger.open_ledger(state, c, 1000, budget)
            sigma = ledger.run_noise(led, f"run-{who}", c, Q, rounds * STEPS)
            try:
                reserve(state, led, Step(f"run-{who}", r, sigma, Q, STEPS))
                ok += 1
            except BudgetExceeded:
                refused += 1
        results.put((who, ok, refused, ""))
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((who, 0, 0, f"{exc.__class__.__name__}: {exc}"))


def test_concurrent_owners_never_pass_the_budget_nor_lose_a_step(tmp_path, procs):
    # before: each process computed epsilon from its own in-memory history and the last os.replace
    # won: the file kept one process's entries (seen: one entry, eps 7.5) while 10.2 was spent
    # against a budget of 8, and writers collided on the shared '.privacy_ledger.json.tmp'
    # (FileNotFoundError in os.replace). This very scenario on that code: 10 reserves succeeded
    # where 8 fit (spent 3.18 > budget 3.02), the file kept 6 entries (eps 2.74), and 2 of the 4
    # processes died of FileNotFoundError. Here: 4 processes x 5 rounds, released at once; two keep
    # the ledger they loaded at the start, two reopen it every round.
    workers, rounds = 4, 5
    fits = 8  # the budget lies between 8 and 9 steps' worth, so 12 of the 20 attempts must be refused
    eps = [epsilon_of([(SIGMA, Q, STEPS * k)], DELTA, "rdp") for k in (fits, fits + 1)]
    budget = (eps[0] + eps[1]) / 2
    barrier, results = procs.Barrier(workers), procs.Queue()
    started = [procs.Process(target=owner_process, args=(tmp_path, w, rounds, budget, w % 2 == 1, barrier, results))
               for w in range(workers)]
    for p in started:
        p.start()
    try:
        outcome = sorted(results.get(timeout=150) for _ in started)
    finally:
        for p in started:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert [err for *_, err in outcome] == [""] * workers, outcome
    ok = sum(o[1] for o in outcome)
    assert ok + sum(o[2] for o in outcome) == workers * rounds
    assert ok == fits  # exactly what the budget allows: nothing over, nothing refused that fitted

    final = ledger.load(tmp_path)
    assert len(final.history) == ok  # no step lost
    for who, n, _, _ in outcome:
        assert sum(s.run == f"run-{who}" for s in final.history) == n
    recomputed = epsilon_of(final.entries, final.delta, final.accountant)
    assert final.spent_epsilon == pytest.approx(recomputed, rel=1e-9) and recomputed <= budget
    raw = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert raw["entry_count"] == ok and raw["steps_total"] == ok * STEPS
    assert leftover_temps(tmp_path / "privacy_ledger.json") == []


def test_a_stale_copy_cannot_spend_what_another_process_spent(tmp_path):
    # before: reserve() trusted the caller's history, so a copy loaded before another process's
    # rounds could spend the whole budget again (and its save erased those rounds).
    budget = epsilon_of([(SIGMA, Q, STEPS * 3)], DELTA, "rdp") * 1.0001
    stale = ledger.open_ledger(tmp_path, cfg(budget), 1000, budget)
    fresh = ledger.open_ledger(tmp_path, cfg(budget), 1000, budget)
    for r in (1, 2, 3):
        reserve(tmp_path, fresh, Step("fresh", r, SIGMA, Q, STEPS))
    with pytest.raises(BudgetExceeded):
        reserve(tmp_path, stale, Step("stale", 1, SIGMA, Q, STEPS))
    assert [s.run for s in ledger.load(tmp_path).history] == ["fresh"] * 3


def test_a_stale_copy_cannot_be_saved_over_a_longer_history(tmp_path):
    # before: save() wrote whatever it was handed: the stale copy replaced 2 recorded rounds with 0.
    stale = ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0)
    fresh = ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0)
    reserve(tmp_path, fresh, Step("run", 1, SIGMA, Q, STEPS))
    reserve(tmp_path, fresh, Step("run", 2, SIGMA, Q, STEPS))
    with pytest.raises(LedgerError, match="does not extend the one on disk"):
        ledger.save(tmp_path, stale)
    assert len(ledger.load(tmp_path).history) == 2


def test_rolling_the_file_back_under_a_running_owner_is_refused(tmp_path):
    # before: reserve() rewrote the file from its own copy, silently undoing (or, when the copy was
    # the older one, accepting) any replacement of the file.
    led = ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0)
    path = tmp_path / "privacy_ledger.json"
    reserve(tmp_path, led, Step("run", 1, SIGMA, Q, STEPS))
    old = path.read_bytes()
    reserve(tmp_path, led, Step("run", 2, SIGMA, Q, STEPS))
    path.write_bytes(old)  # a valid, older ledger: the file alone cannot tell
    with pytest.raises(LedgerError, match="rolled back"):
        reserve(tmp_path, led, Step("run", 3, SIGMA, Q, STEPS))
    path.unlink()
    with pytest.raises(LedgerError, match="is missing"):
        reserve(tmp_path, led, Step("run", 3, SIGMA, Q, STEPS))


# --- (b) a damaged or edited file -------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> str:
    """A valid ledger text with 4 entries over two noise levels (two runs)."""
    state = tmp_path_factory.mktemp("recorded")
    led = ledger.open_ledger(state, cfg(50.0), 1000, 50.0)
    for run, sigma in (("run-a", 1.0), ("run-b", 1.3)):
        for r in (1, 2):
            reserve(state, led, Step(run, r, sigma, Q, STEPS))
    return (state / "privacy_ledger.json").read_text()


def edit(change):
    """A damage that edits the parsed ledger and writes it back as JSON."""
    def damage(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data, indent=1)
    return damage


def drop_last_and_fix_totals(d):
    last = d["history"].pop()
    d["entry_count"] -= 1
    d["steps_total"] -= last["steps"]
    d["spent_epsilon"] = d["history"][-1]["epsilon_after"]


def lower_first_sigma_consistently(d):  # more noise on entry 1 makes the spend look smaller
    d["history"][0]["noise_multiplier"] = 5.0


def weaken_last_entry_consistently(d):  # last entry edited, its epsilon and the total recomputed
    d["history"][-1]["noise_multiplier"] = 50.0
    hist = [(h["noise_multiplier"], h["sample_rate"], h["steps"]) for h in d["history"]]
    d["spent_epsilon"] = d["history"][-1]["epsilon_after"] = epsilon_of(hist, d["delta"], d["accountant"])


ATTACKS = {
    # name: (damage, what it achieved before: the same damage to a version-1 file, loaded by the old code)
    "truncated": (lambda t: t[: len(t) // 2], "refused (JSONDecodeError)"),
    "emptied file": (lambda t: "", "refused (JSONDecodeError)"),
    "emptied history": (edit(lambda d: d.update(history=[])), "LOADED as spent 0: the whole budget again"),
    "emptied history, totals zeroed": (
        edit(lambda d: d.update(history=[], spent_epsilon=0.0, entry_count=0, steps_total=0)),
        "LOADED as spent 0",
    ),
    "last entry cut": (
        edit(lambda d: d["history"].pop()),
        "LOADED with the last round forgotten (2.194 spent instead of 2.232)",
    ),
    "last entry cut, totals fixed": (edit(drop_last_and_fix_totals), "LOADED (v1 had no totals: as 'last entry cut')"),
    "middle entry deleted": (edit(lambda d: d["history"].pop(1)), "refused, only because epsilon moved by > 2%"),
    "entries reordered": (edit(lambda d: d["history"].reverse()), "refused, only because epsilon moved by > 2%"),
    "sigma raised on entry 1": (edit(lower_first_sigma_consistently), "refused, only because epsilon moved by > 2%"),
    "last entry weakened, spend recomputed": (
        edit(weaken_last_entry_consistently),
        "LOADED: under-count (2.194 instead of 2.232)",
    ),
    "spent lowered 1%": (edit(lambda d: d.update(spent_epsilon=d["spent_epsilon"] * 0.99)), "LOADED (2% tolerance)"),
    "JSON list": (lambda t: "[" + t + "]", "uncaught AttributeError: 'list' object has no attribute 'get'"),
    "JSON number": (lambda t: "3.5", "uncaught AttributeError"),
    "JSON string": (lambda t: json.dumps(t), "uncaught AttributeError"),
    "JSON null": (lambda t: "null", "uncaught AttributeError"),
    "spent_epsilon a string": (edit(lambda d: d.update(spent_epsilon="0")), "LOADED (float('0') accepted)"),
    "steps a string": (edit(lambda d: d["history"][0].update(steps="5")), "uncaught TypeError in the accountant"),
    "round a float": (edit(lambda d: d["history"][0].update(round=1.5)), "LOADED"),
    "steps a bool": (edit(lambda d: d["history"][0].update(steps=True)), "refused, only because epsilon moved"),
    "history an object": (edit(lambda d: d.update(history={"0": d["history"][0]})), "refused (TypeError)"),
    "history entry a list": (edit(lambda d: d["history"].__setitem__(0, [1, 2])), "refused (TypeError)"),
    "plans a list": (edit(lambda d: d.update(plans=[])), "uncaught AttributeError"),
    "budget a bool": (edit(lambda d: d.update(budget_epsilon=True)), "LOADED as budget 1.0"),
    "spent NaN": (
        lambda t: re.sub(r'"spent_epsilon": [^,]+', '"spent_epsilon": NaN', t, count=1),
        "LOADED (the stored figure was not checked)",
    ),
    "delta infinite": (
        lambda t: t.replace('"delta": 1e-05', '"delta": 1e999', 1),
        "refused, only because epsilon moved",
    ),
    "prev not a digest": (edit(lambda d: d["history"][0].update(prev="x")), "(no chain before)"),
    "head removed": (edit(lambda d: d.pop("head")), "(no chain before)"),
    "unknown version": (edit(lambda d: d.update(version=3)), "refused"),
    "version a string": (edit(lambda d: d.update(version="2")), "refused"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_damaged_or_edited_ledger_is_refused_in_one_line(tmp_path, recorded, name):
    damage, _before = ATTACKS[name]
    path = tmp_path / "privacy_ledger.json"
    path.write_text(damage(recorded))
    with pytest.raises(LedgerError) as err:
        ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "restore it from a backup" in message or "use the fedveil that wrote it" in message
    with pytest.raises(LedgerError):  # and nothing can be spent on top of it
        reserve(tmp_path, ledger.Ledger(50.0, DELTA, "rdp"), Step("run", 9, SIGMA, Q, STEPS))
    assert path.read_text() == damage(recorded)  # never reset or repaired


# --- (c) an interrupted write -------------------------------------------------------------------

def crash_mid_write(state):
    """Reserve a step, dying (as on power loss) after the temp file is written, before the rename."""
    os.replace = lambda *a: os._exit(9)
    reserve(state, ledger.load(state), Step("run", 2, SIGMA, Q, STEPS))


def test_a_write_cut_off_by_a_crash_is_reported_never_used(tmp_path, procs):
    # before: the leftover had the fixed name '.privacy_ledger.json.tmp', which the next writer
    # (of any process) truncated and reused; with unique names it must still be found.
    reserve(tmp_path, ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0), Step("run", 1, SIGMA, Q, STEPS))
    path = tmp_path / "privacy_ledger.json"
    before = path.read_bytes()
    crash = procs.Process(target=crash_mid_write, args=(tmp_path,))
    crash.start()
    crash.join(timeout=120)
    assert crash.exitcode == 9
    assert path.read_bytes() == before  # the old ledger, whole
    [leftover] = leftover_temps(path)
    assert leftover.name.startswith(".privacy_ledger.json.") and leftover.name.endswith(".tmp")
    for attempt in (lambda: ledger.load(tmp_path),
                    lambda: ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0),
                    lambda: reserve(tmp_path, ledger.Ledger(50.0, DELTA, "rdp"), Step("run", 2, SIGMA, Q, STEPS))):
        with pytest.raises(LedgerError, match="write was interrupted") as err:
            attempt()
        assert str(leftover) in str(err.value) and "\n" not in str(err.value)
    assert leftover.exists() and path.read_bytes() == before  # neither deleted nor used


def test_a_failed_write_leaves_the_old_ledger_and_no_temp_file(tmp_path, monkeypatch):
    # A write that raises (disk full, ...) rather than crashing cleans up after itself.
    # before: the fixed-name temp file stayed behind, and every later load refused the ledger.
    led = ledger.open_ledger(tmp_path, cfg(50.0), 1000, 50.0)
    reserve(tmp_path, led, Step("run", 1, SIGMA, Q, STEPS))
    path = tmp_path / "privacy_ledger.json"
    before = path.read_bytes()

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        reserve(tmp_path, led, Step("run", 2, SIGMA, Q, STEPS))
    monkeypatch.undo()
    assert path.read_bytes() == before and leftover_temps(path) == []
    assert len(ledger.load(tmp_path).history) == 1
