"""The transcript suite: under DP, nothing an owner releases depends on its data but the noised update.

The coordinator is the attacker. For each of its inputs (a row of ``CASES``: one or more Flower
Messages) the owner answers through the real ClientApp (``client/app.py``) on a dataset D and on
neighbours D' = D plus one record: a very long record (truncated under DP), and one that trips a
data check (a prompt longer than ``data.max_length``: the record is dropped). Every released byte
must be equal, but Flower's message ids and timestamps and the values of the noised update, and the
update must be finite. Each (case, dataset) runs with a fresh state directory.

Adding a coordinator input is one line in ``CASES``; every new message type or field joins here.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from crafted import overflowing_global  # tests/adversary/crafted.py (pytest puts this folder on sys.path)
from fedveil.client import owner as owner_module
from fedveil.client import owner_level
from fedveil.client.app import app
from fedveil.client.operations import WorkerState
from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.worker import serve
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.privacy.dp.owner_level_plan import OwnerLevelDPConfig, resolve
from fedveil.privacy.policy import OwnerPolicy, write_policy
from fedveil.privacy.secagg import BACKENDS
from fedveil.privacy.secagg.identity import pin_roster
from fedveil.task.demo_data import demo_records

pytestmark = [pytest.mark.adversary, pytest.mark.slow]

NOISED = {"delta"}  # the plain backend's noised update: its values differ, its dtype and shape may not
# blobs under fresh randomness (tenseal: the update, the re-encrypted global, their digests and signatures;
# crypten: the sealed shares and the signed bundle over them): their bytes differ on every run, their sizes
# (fixed by the parameters) may not
# tenseal's verifier committee: the nonce commitment and the signed contribution beside an update, the
# revealed nonce (the CSPRNG's) with the owner's signature over it and the set, and a member's signature over
# the round's sum (of noised updates)
OPAQUE = {"ciphertext", "sha256", "signature", wire.ENCRYPTED_GLOBAL, wire.GLOBAL_SIGNATURE, "bundle",
          *(f"share.{p}" for p in range(8)), "commitment", "contribution-signature", wire.NONCE,
          wire.REVEAL_SIGNATURE, wire.ATTESTATION}
MAX_LENGTH = 32
POLICY = OwnerPolicy(require_dp=True, max_epsilon=8.0, max_delta=1e-4, min_noise_multiplier=0.3,
                     max_sample_rate=0.5, allowed_backends=["plain"], max_rounds=3, max_local_steps=4)
BASE = {"seed": 3, "rounds": 3, "num_clients": 1, "output_dir": "/coordinator/run",
        "data": {"max_length": MAX_LENGTH}, "train": {"local_steps": 1, "batch_size": 4, "eval_batch_size": 8},
        "aggregation": {"name": "plain"},
        "dp": {"name": "sample_level", "target_epsilon": 8.0, "delta": 1e-5, "sample_rate": 0.25, "accountant": "rdp"}}


def honest(n: int) -> np.ndarray:  # the starting adapter (START: set by the `datasets` fixture)
    return START["initial"].copy()


START: dict = {}


# One coordinator input per row: (name, messages, what the owner releases to the last one: "ok" or
# the error's reason). A message: (op, round, run-config overrides, global, per-round overrides);
# a global is a function of the layout's size (None: no global); a dict override replaces a group.
def msg(op, server_round=1, cfg=None, glob=honest, per_round=None):
    return (op, server_round, cfg or {}, glob, per_round or {})


def const(value, dtype=np.float32):
    return lambda n: np.full(n, value, dtype=dtype)


def spiked(value, dtype=np.float32):
    def make(n):
        v = honest(n).astype(dtype)
        v[7] = value
        return v
    return make


CARRY = {wire.EVALUATE_FIRST: True}  # eval_in_train: round r - 1's evaluation rides in round r's train message
CASES = [
    ("train", [msg("train")], "ok"),
    ("evaluate the start", [msg("evaluate", 0)], "ok"),
    (
        "three rounds",
        [msg("train", 1), msg("evaluate", 1), msg("train", 2), msg("evaluate", 2), msg("train", 3), msg("evaluate", 3)],
        "ok",
    ),
    ("train a round twice", [msg("train", 1), msg("train", 1)], "ok"),
    (
        "train carrying the evaluation",
        [msg("train", 1, per_round=CARRY), msg("train", 2, per_round=CARRY)],
        "ok",
    ),
    (
        "carried evaluation past the cap",
        [msg("evaluate", 1)] * POLICY.max_evaluates_per_round + [msg("train", 2, per_round=CARRY)],
        "limit limit=max_evaluates_per_round",
    ),
    ("dp off under require_dp", [msg("train", cfg={"dp": {"name": "off"}})], "policy rule=require_dp"),
    ("epsilon above the cap", [msg("train", cfg={"dp.target_epsilon": 50.0})], "policy rule=max_epsilon"),
    ("delta above the cap", [msg("train", cfg={"dp.delta": 1e-3})], "policy rule=max_delta"),
    ("sigma below the minimum", [msg("train", cfg={"dp.noise_multiplier": 0.1})], "policy rule=min_noise_multiplier"),
    ("q above the cap", [msg("train", cfg={"dp.sample_rate": 0.9})], "policy rule=max_sample_rate"),
    ("no poisson sampling", [msg("train", cfg={"dp.poisson_sampling": False})], "policy rule=poisson_sampling"),
    ("more local steps", [msg("train", cfg={"train.local_steps": 50})], "policy rule=max_local_steps"),
    ("a backend not allowed", [msg("train", cfg={"aggregation.name": "tenseal"})], "policy rule=allowed_backends"),
    ("unknown config key", [msg("train", cfg={"dp.bogus": 1})], "config"),
    ("wrong config type", [msg("train", cfg={"rounds": "three"})], "config"),
    (
        "max_length probes",
        [
            msg("evaluate", 0, cfg={"data.max_length": 8}),
            msg("train", cfg={"data.max_length": 8}),
            msg("train", cfg={"data.max_length": 4096}),
        ],
        "config key=data.max_length",
    ),
    ("wrong layout digest", [msg("train", per_round={wire.LAYOUT_DIGEST: "0" * 64})], "layout"),
    ("no global", [msg("train", glob=None)], "config"),
    (
        "NaN global",
        [msg("train", glob=spiked(np.nan)), msg("evaluate", 1, glob=const(np.nan))],
        "bad-global check=finite",
    ),
    (
        "inf global",
        [msg("train", glob=spiked(np.inf)), msg("evaluate", 1, glob=spiked(-np.inf))],
        "bad-global check=finite",
    ),
    ("1e30 global", [msg("train", glob=spiked(1e30))], "bad-global check=bound"),
    ("1e39 global (float64)", [msg("train", glob=spiked(1e39, np.float64))], "bad-global check=dtype"),
    ("just within the bound", [msg("train", glob=const(99.0)), msg("evaluate", 1, glob=const(-99.0))], "ok"),
    ("float64 global", [msg("train", glob=lambda n: honest(n).astype(np.float64))], "bad-global check=dtype"),
    ("int global", [msg("train", glob=lambda n: np.zeros(n, np.int64))], "bad-global check=dtype"),
    ("str global", [msg("train", glob=lambda n: np.array(["0.1"] * 4))], "bad-global check=dtype"),
    ("wrong size global", [msg("train", glob=lambda n: honest(n)[:-1])], "bad-global check=shape"),
    ("2-D global", [msg("train", glob=lambda n: honest(n).reshape(2, -1))], "bad-global check=shape"),
    (
        "evaluates past the cap",
        [msg("evaluate", 1)] * (POLICY.max_evaluates_per_round + 2),
        "limit limit=max_evaluates_per_round",
    ),
    (
        "rounds past the plan",
        [msg("train", 4), msg("evaluate", 9), msg("train", 0), msg("train", -1)],
        "limit limit=rounds",
    ),
    ("a round number that is not one", [msg("train", "one")], "config key=server-round"),
    ("key set-up on plain", [msg("query.pubkey", 1)], "config key=aggregation.name"),
    ("reveal held-out losses under DP", [msg("query.evalsum", 1)], "config key=dp.name"),
    (
        "an encrypted-global hand-over asked of a plain owner",  # its hooks ignore it (no internal error)
        [msg("evaluate", 1, per_round={wire.REENCRYPT_BY: "client_0", wire.FINAL_ADAPTER: True})],
        "ok",
    ),
    ("exception inside training", [msg("train", per_round={"fail": "inside"})], "internal"),
    (
        "sign the final adapter",  # the signed statement: digests of the global, run, roster, rounds trained
        [msg("train", 1), msg("evaluate", 1, per_round={wire.SIGN_ADAPTER: True})],
        "ok",
    ),
    ("sign a global before training", [msg("evaluate", 1, per_round={wire.SIGN_ADAPTER: True})], "ok"),
]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):  # what a Flower process is given
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, tiny_gpt2):
    """D and its neighbours: D plus a very long record, D plus one that a data check drops."""
    root = tmp_path_factory.mktemp("transcript")
    records = [{"prompt": f"Q{i}: what is {i} plus {i}?", "completion": f" {2 * i}."} for i in range(24)]
    extra = {"long": {"prompt": "Tell a story.", "completion": " once upon a time" * 2000},
             "dropped": {"prompt": "context " * (8 * MAX_LENGTH), "completion": " yes"}}
    out = {}
    for name, rows in {"D": records, **{k: records + [v] for k, v in extra.items()}}.items():
        (root / name).mkdir()
        (root / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = root / name
    cfg = from_dict({**BASE, "model": {"path": str(tiny_gpt2)}})
    start = Owner(cfg, OwnerIdentity("client_0", str(out["D"]), str(root / "scratch")))
    START.update(initial=start.initial, digest=start.layout.digest, size=start.layout.size)
    return out


def run_config(model: dict, overrides: dict, base: dict = BASE) -> dict:
    groups = {k: v for k, v in overrides.items() if isinstance(v, dict)}
    flat = {k: v for k, v in overrides.items() if not isinstance(v, dict)}
    return {**to_run_config(from_dict({**base, **groups, "model": model})), **flat}


def message(op: str, server_round, config: dict, glob, per_round: dict, layout: tuple[str, int]) -> Message:
    digest, size = layout
    content = {wire.CONFIG: ConfigRecord({**config, wire.ROUND: server_round, wire.LAYOUT_DIGEST: digest,
                                          **{k: v for k, v in per_round.items() if k != "fail"}})}
    if isinstance(glob, dict):  # a global in another backend's form (its arrays, made by the test)
        content[wire.GLOBAL] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in glob.items()})
    elif glob is not None:
        content[wire.GLOBAL] = ArrayRecord({wire.CLEAR_GLOBAL: Array(glob(size))})
    m = Message(content=RecordDict(content), message_type=op, dst_node_id=1)
    m.metadata.__dict__["_message_id"] = m.object_id  # as the SuperLink stamps it
    return m


def canonical(reply: Message) -> tuple:
    """Every released byte of a reply but Flower's ids and timestamps and the noised values."""
    md = reply.metadata
    head = (md.message_type, md.src_node_id, md.dst_node_id, md.group_id, md.run_id)
    if reply.has_error():
        return head, ("error", reply.error.code, reply.error.reason)
    body = []
    for name, record in sorted(reply.content.items()):
        if isinstance(record, ArrayRecord):
            for key, array in sorted(record.items()):
                values = array.numpy()
                if key in NOISED and name == wire.UPDATE:
                    assert np.isfinite(values).all(), "a non-finite update left the owner"
                    body.append((name, key, array.dtype, tuple(array.shape), len(array.data)))
                else:
                    body.append((name, key, array.dtype, tuple(array.shape), bytes(array.data)))
        elif name == wire.BLOBS:  # a ciphertext (and its digest and signature) is fresh randomness each time
            body.append((name, sorted((k, len(v)) if k in OPAQUE else (k, repr(v)) for k, v in record.items())))
        else:
            body.append((name, type(record).__name__, sorted((k, repr(v)) for k, v in record.items())))
    return head, tuple(body)


def transcript(case, data_dir, state_dir, model: dict, monkeypatch, base: dict = BASE, policy: OwnerPolicy = POLICY,
               layout: tuple[str, int] | None = None, worker: bool = False,
               identity: Path | None = None) -> list[tuple]:
    """The canonical replies of the owner at ``data_dir`` to the messages of ``case`` (``identity``: the
    state directory to start from, keys and roster; default: :func:`pinned_identity`)."""
    if identity is not None:
        shutil.copytree(identity, state_dir, dirs_exist_ok=True)
    else:
        pinned_identity(state_dir)
    write_policy(state_dir / "policy.json", policy)
    node = {"data-dir": str(data_dir), "state-dir": str(state_dir), "client-id": "client_0",
            "policy": str(state_dir / "policy.json")}
    if worker:  # the deployed path: the ClientApp relays to the owner's worker, which answers
        node = {"worker": start_worker(data_dir, state_dir)}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    replies = []
    for op, server_round, overrides, glob, per_round in case:
        with monkeypatch.context() as patch:
            if per_round.get("fail") == "inside":
                def leak(model, loader, *args, **kwargs):  # an exception whose text holds the data
                    raise RuntimeError(f"boom after {len(loader.dataset)} records: {loader.dataset[-1]}")
                patch.setattr(owner_module, "train_steps", leak)
            sent = message(
                op, server_round, run_config(model, overrides, base), glob, per_round, layout or (START["digest"],
                                                                                                  START["size"])
            )
            replies.append(canonical(app(message=sent, context=context)))
    return replies


IDENTITY: dict = {}


def pinned_identity(state_dir: Path) -> None:
    """One owner identity (its keys and pinned roster) in every state directory: what it signs is then
    compared on D and D' (a fresh key each would differ whatever the data)."""
    if "dir" not in IDENTITY:
        IDENTITY["dir"] = Path(tempfile.mkdtemp(prefix="fv-identity-"))
        pin_roster({"client_0": IDENTITY["dir"]}, "client_0")
    shutil.copytree(IDENTITY["dir"], state_dir, dirs_exist_ok=True)


def start_worker(data_dir, state_dir) -> str:
    """An owner worker on a thread (``client/worker.py``); returns its socket (a short path)."""
    sock = Path(tempfile.mkdtemp(prefix="fv", dir="/tmp")) / "owner.sock"
    state = WorkerState("client_0", str(data_dir), str(state_dir), policy=str(state_dir / "policy.json"))
    ready = threading.Event()
    threading.Thread(target=serve, args=(sock, state.answer, ready.set), daemon=True).start()
    assert ready.wait(10)
    return str(sock)


WORKER_CASES = ("train", "three rounds", "epsilon above the cap", "NaN global", "str global", "max_length probes",
                "evaluates past the cap", "exception inside training", "sign a global before training",
                "reveal held-out losses under DP")


@pytest.mark.parametrize("name", WORKER_CASES)
def test_the_deployed_worker_releases_what_the_in_process_owner_releases(name, datasets, tiny_gpt2, tmp_path,
                                                                         monkeypatch):
    (case, _), model = {n: (c, e) for n, c, e in CASES}[name], {"path": str(tiny_gpt2)}
    in_process = transcript(case, datasets["D"], tmp_path / "app", model, monkeypatch)
    relayed = transcript(case, datasets["D"], tmp_path / "worker", model, monkeypatch, worker=True)
    assert relayed == in_process


@pytest.mark.parametrize("name, case, expect", CASES, ids=[c[0] for c in CASES])
def test_every_released_byte_is_the_same_on_neighbouring_datasets(name, case, expect, datasets, tiny_gpt2, tmp_path,
                                                                  monkeypatch):
    model = {"path": str(tiny_gpt2)}
    on_d = transcript(case, datasets["D"], tmp_path / "D", model, monkeypatch)
    last = on_d[-1][1]
    assert (last[2] if last[0] == "error" else "ok") == expect  # the mechanism that answered
    for neighbour in ("long", "dropped"):
        assert transcript(case, datasets[neighbour], tmp_path / neighbour, model, monkeypatch) == on_d, neighbour


def test_a_tenseal_train_carrying_the_evaluation_and_the_hand_over_releases_the_same_bytes(
        datasets, tiny_gpt2, tmp_path, monkeypatch, tenseal_keyed):
    """``eval_in_train`` with tenseal: one train message asks the owner to evaluate the global first and to
    re-encrypt it for the server (the hand-over), then to train. Under DP the evaluation leaves nothing
    (no pair, no loss), the re-encrypted global depends on the global only, and the update is noised: on
    neighbouring datasets every released byte is the same but the encryption randomness, and the sizes."""
    from fedveil.configs.schema import run_key

    model = {"path": str(tiny_gpt2)}
    base = {**BASE, "aggregation": {"name": "tenseal"}}
    policy = OwnerPolicy(**{**POLICY.__dict__, "allowed_backends": ["tenseal"]})
    cfg = from_dict({**base, "model": model})
    tenseal_keyed(tmp_path / "keyed", cfg.aggregation, run_key(cfg), ["client_0"])
    # round 1 (the global after round 0: no ciphertext, every owner derives it) carrying round 0's evaluation
    case = [msg("train", 1, glob=None, per_round={**CARRY, wire.REENCRYPT_BY: "client_0"})]
    on = {name: transcript(case, datasets[name], tmp_path / name, model, monkeypatch, base, policy,
                           identity=tmp_path / "keyed" / "client_0") for name in ("D", "long", "dropped")}
    assert on["long"] == on["D"] and on["dropped"] == on["D"]
    (head, body), = on["D"]
    assert head[0] == "train" and body[0] != "error"
    blobs = dict(next(items for name, items in (b[:2] for b in body) if name == wire.BLOBS))
    assert {wire.ENCRYPTED_GLOBAL, wire.GLOBAL_SIGNATURE, "ciphertext", "signature"} <= set(blobs)  # both left
    assert not any(k.startswith(wire.EVAL_PAIR_PREFIX) for k in blobs)  # the pair is cut under DP
    metrics = dict(next(b[2] for b in body if b[0] == wire.METRICS))
    assert wire.EVAL_LOSS not in metrics and wire.EVAL_SECONDS not in metrics


def test_a_tenseal_train_without_the_base_the_owner_does_not_keep_releases_the_same_refusal(
        datasets, tiny_gpt2, tmp_path, monkeypatch, tenseal_keyed):
    """A coordinator that leaves the signed base out (as it may for an owner that keeps the global it opened,
    ``tenseal/kept.py``) from an owner that keeps none: the owner refuses before its data is read, with the same
    code on neighbouring datasets."""
    from fedveil.configs.schema import run_key

    model = {"path": str(tiny_gpt2)}
    base = {**BASE, "aggregation": {"name": "tenseal"}}
    policy = OwnerPolicy(**{**POLICY.__dict__, "allowed_backends": ["tenseal"]})
    cfg = from_dict({**base, "model": model})
    tenseal_keyed(tmp_path / "keyed", cfg.aggregation, run_key(cfg), ["client_0"])
    case = [msg("train", 3, glob=None)]  # the global after round 2, with nothing to build it from
    on = {name: transcript(case, datasets[name], tmp_path / name, model, monkeypatch, base, policy,
                           identity=tmp_path / "keyed" / "client_0") for name in ("D", "long", "dropped")}
    assert on["long"] == on["D"] and on["dropped"] == on["D"]
    (head, body), = on["D"]
    assert body[0] == "error" and body[2] == "bad-global check=kept-global", body


def test_tenseals_committee_reveal_and_attest_release_the_same_bytes(datasets, tiny_gpt2, tmp_path, monkeypatch,
                                                                     tenseal_keyed):
    """``aggregation.download=committee`` (the default): after its train reply (the update with its nonce
    commitment beside it) the owner is shown its place in the round's committed set (``query.reveal``) and
    replies with its nonce; as a member it is given every signed update and the draft (``query.attest``)
    and replies with its signature over the sum. Under DP neither depends on its data: on neighbouring
    datasets every released byte is the same but the nonce, the commitment and the signatures (fresh
    randomness, over ciphertexts of fresh randomness), and their sizes."""
    from fedveil.configs.schema import run_key
    from fedveil.core import records
    from fedveil.core.payload import update_of
    from fedveil.privacy.secagg.tenseal import committee_round as step
    from fedveil.privacy.secagg.tenseal.backend import TensealServer

    model = {"path": str(tiny_gpt2)}
    base = {**BASE, "aggregation": {"name": "tenseal"}}
    policy = OwnerPolicy(**{**POLICY.__dict__, "allowed_backends": ["tenseal"]})
    cfg = from_dict({**base, "model": model})
    assert cfg.aggregation.download == "committee"
    keys, made = tenseal_keyed(tmp_path / "keyed", cfg.aggregation, run_key(cfg), ["client_0"])
    server = TensealServer(cfg.aggregation, START["size"], public=made.public, run=run_key(cfg),
                           signers={"client_0": keys["client_0"].member().verify_key})
    config = run_config(model, {}, base)

    def query(op, blobs):
        per_round = {wire.ROUND: 1, wire.LAYOUT_DIGEST: START["digest"]}
        m = Message(content=RecordDict({wire.CONFIG: ConfigRecord({**config, **per_round}),
                                        wire.KEYS: ConfigRecord(blobs)}), message_type=op, dst_node_id=1)
        m.metadata.__dict__["_message_id"] = m.object_id
        return m

    def transcript_of(name):
        state = tmp_path / name
        shutil.copytree(tmp_path / "keyed" / "client_0", state)
        write_policy(state / "policy.json", policy)
        node = {"data-dir": str(datasets[name]), "state-dir": str(state), "client-id": "client_0",
                "policy": str(state / "policy.json")}
        context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
        trained = app(message=message("train", 1, config, None, {}, (START["digest"], START["size"])),
                      context=context)
        payloads = {"client_0": update_of(records.records_to_protected(trained.content))}
        contributions = step.contributions_of(payloads)
        shown = step.reveal_queries(server, 1, contributions)["client_0"]
        revealed = app(message=query(wire.QUERY_REVEAL, {wire.REVEAL_QUERY: shown}), context=context)
        blobs = records.records_to_protected(revealed.content).blobs
        nonce = blobs[wire.NONCE]
        draft = step.draft(server, 1, contributions, {"client_0": nonce}, checked=True)
        attested = app(message=query(wire.QUERY_ATTEST, {wire.COMMITTEE_UPDATES: step.round_updates(payloads, 1),
                                                          wire.COMMITTEE_DRAFT: draft.encode()}), context=context)
        signature = records.records_to_protected(attested.content).blobs[wire.ATTESTATION]
        # a real signature over the real sum, a real reveal signature over the real set (certify checks it)
        step.certify(server, payloads, draft, {"client_0": signature}, {"client_0": blobs[wire.REVEAL_SIGNATURE]})
        return [canonical(r) for r in (trained, revealed, attested)]

    on = {name: transcript_of(name) for name in ("D", "long", "dropped")}
    assert on["long"] == on["D"] and on["dropped"] == on["D"]
    ops = [head[0] for head, _ in on["D"]]
    assert ops == ["train", wire.QUERY_REVEAL, wire.QUERY_ATTEST] and all(b[0] != "error" for _, b in on["D"])
    released = [dict(next(items for name, items in (b[:2] for b in body) if name == wire.BLOBS)) for _, body in on["D"]]
    assert {"commitment": 32, "contribution-signature": 64}.items() <= released[0].items()
    assert released[1:] == [{wire.NONCE: 32, wire.REVEAL_SIGNATURE: 64}, {wire.ATTESTATION: 64}]


def test_a_crypten_train_carrying_the_evaluation_releases_the_same_bytes(datasets, tiny_gpt2, tmp_path,
                                                                        monkeypatch):
    """``eval_in_train`` with crypten: the train message asks the owner to evaluate the global first (its
    server holds the global: no hand-over). Under DP nothing of the evaluation leaves (no pair shares, no
    loss) and the update's sealed shares are the same size on neighbouring datasets."""
    from nacl.public import PrivateKey

    model = {"path": str(tiny_gpt2)}
    base = {**BASE, "num_clients": 3, "aggregation": {"name": "crypten", "parties": 2, "min_owners": 2}}
    policy = OwnerPolicy(**{**POLICY.__dict__, "allowed_backends": ["crypten"]})
    parties = ",".join(bytes(PrivateKey.generate().public_key).hex() for _ in range(2))
    case = [msg("train", 1, per_round={**CARRY, wire.PARTY_KEYS: parties}),
            msg("train", 2, per_round={**CARRY, wire.PARTY_KEYS: parties})]
    on = {name: transcript(case, datasets[name], tmp_path / name, model, monkeypatch, base, policy)
          for name in ("D", "long", "dropped")}
    assert on["long"] == on["D"] and on["dropped"] == on["D"]
    for head, body in on["D"]:
        assert head[0] == "train" and body[0] != "error"
        blobs = dict(next(items for name, items in (b[:2] for b in body) if name == wire.BLOBS))
        assert set(blobs) == {"share.0", "share.1", "bundle"}  # the update's; the pair is cut under DP
        metrics = dict(next(b[2] for b in body if b[0] == wire.METRICS))
        assert wire.EVAL_LOSS not in metrics and wire.EVAL_SECONDS not in metrics


def test_the_signed_statement_is_released(datasets, tiny_gpt2, tmp_path, monkeypatch):
    """The signing case above compares a statement that did leave (not an evaluate reply without one)."""
    case = {n: c for n, c, _ in CASES}["sign the final adapter"]
    last = transcript(case, datasets["D"], tmp_path / "D", {"path": str(tiny_gpt2)}, monkeypatch)[-1][1]
    meta = dict(next(items for name, _, items in last if name == wire.META))
    statement = json.loads(ast.literal_eval(meta[wire.ADAPTER_STATEMENT]))["statement"]  # repr of bytes -> bytes
    assert statement["owner"] == "client_0" and statement["rounds_trained"] == [1]
    assert statement["after_round"] == 1
    assert statement["run"].startswith(BASE["output_dir"] + "#")


def test_a_global_crafted_to_overflow_on_some_records_releases_the_same_bytes_and_a_finite_update(
        tiny_llama, tmp_path, monkeypatch):
    """An fp16 owner, a finite global within the bound that overflows its forward pass only on records
    holding a trigger token, and D' = D + one such record, sampled at q = 0.9 (tests/adversary/crafted.py)."""
    model = {"path": str(tiny_llama), "dtype": "fp16"}
    base = {**BASE, "data": {"max_length": 64}, "dp": {**BASE["dp"], "sample_rate": 0.9}}
    crafted = overflowing_global(tiny_llama, seed=base["seed"])
    records = demo_records(0, 24, seed=0)
    dirs = {}
    for name, rows in (("D", records), ("D+trigger", records + [crafted.record()])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        dirs[name] = tmp_path / name
    start = Owner(from_dict({**base, "model": model}), OwnerIdentity("client_0", str(dirs["D"]), str(tmp_path / "o")))
    policy = OwnerPolicy(**{**POLICY.__dict__, "max_sample_rate": 1.0})
    def glob(n):
        return crafted.vector.copy()

    case = [msg("train", 1, glob=glob), msg("evaluate", 1, glob=glob), msg("train", 2, glob=glob)]
    on = {name: transcript(case, path, tmp_path / f"state-{name}", model, monkeypatch, base, policy,
                             (start.layout.digest, start.layout.size))
          for name, path in dirs.items()}
    assert on["D+trigger"] == on["D"]
    assert not any(reply[1][0] == "error" for reply in on["D"])  # trained and evaluated: not refused


def test_the_battery_covers_at_least_25_coordinator_inputs():
    assert len(CASES) >= 25 and len({name for name, _, _ in CASES}) == len(CASES)


# dp=owner_level under crypten: the unit is the owner's whole dataset, so the neighbour of D is another
# owner's data altogether ("other"), besides D's own neighbours
OWNER_LEVEL_POLICY = OwnerPolicy(**{**POLICY.__dict__, "allowed_backends": ["crypten", "tenseal"],
                                    "owner_level_max_epsilon": 8.0,
                                    "owner_level_min_noise_multiplier": 0.3, "owner_level_max_sample_rate": 0.5,
                                    "min_honest_owners": 3})


def owner_level_base() -> dict:
    dp = {"name": "owner_level", "target_epsilon": 8.0, "sample_rate": 0.5, "min_honest_owners": 3}
    planned = OwnerLevelDPConfig(**dp)
    bound = resolve(planned, START["size"], 3, BASE["rounds"], BACKENDS["crypten"].integers)
    return {**BASE, "num_clients": 3, "dp": {**dp, "gamma": planned.gamma, "mu": planned.mu},
            "aggregation": {"name": "crypten", "parties": 2, "min_owners": 3, "norm_bound": bound}}


@pytest.fixture(scope="module")
def other_owner(datasets, tmp_path_factory):
    """A whole other owner's dataset: D's owner-level neighbour."""
    path = tmp_path_factory.mktemp("other")
    rows = [{"text": f"Record {i} of another owner, about the weather on day {i}."} for i in range(40)]
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


OWNER_LEVEL_CASES = [  # (name, run-config overrides for every train, expected release); mu is scaled by the test
    ("two rounds", {}, "ok"),
    ("less noise", {"dp.mu": 1e-2}, "policy rule=owner_level_min_noise_multiplier"),
    ("lower t", {"dp.min_honest_owners": 2}, "policy rule=min_honest_owners"),
    ("lower parties' floor", {"aggregation.min_owners": 2}, "config"),
    ("higher q", {"dp.sample_rate": 0.9}, "policy rule=owner_level_max_sample_rate"),
    ("a lower norm bound", {"aggregation.norm_bound": 10.0}, "config key=aggregation.norm_bound"),
    ("to plain", {"aggregation": {"name": "plain"}}, "config"),
    ("to tenseal", {"aggregation": {"name": "tenseal"}}, "config key=aggregation.value_bound"),  # not at step 1
]


@pytest.mark.parametrize("name, overrides, expect", OWNER_LEVEL_CASES, ids=[c[0] for c in OWNER_LEVEL_CASES])
def test_owner_level_releases_the_same_bytes_for_another_owners_data(name, overrides, expect, datasets, other_owner,
                                                                     tiny_gpt2, tmp_path, monkeypatch):
    from nacl.public import PrivateKey

    model, base = {"path": str(tiny_gpt2)}, owner_level_base()
    if "dp.mu" in overrides:
        overrides = {**overrides, "dp.mu": base["dp"]["mu"] * overrides["dp.mu"]}  # sigma / 10
    if "aggregation" in overrides:  # a coordinator sends what the schema would not build: forge its run config
        forged = from_dict({**base, "model": model})
        forged.aggregation = BACKENDS[overrides["aggregation"]["name"]].config()
        flat = to_run_config(forged)
        monkeypatch.setattr(sys.modules[__name__], "run_config", lambda *_: flat)
    parties = ",".join(bytes(PrivateKey.generate().public_key).hex() for _ in range(2))
    case = [msg("train", r, cfg=overrides, per_round={wire.PARTY_KEYS: parties}) for r in (1, 2)]
    sources = {"D": datasets["D"], "other": other_owner, "long": datasets["long"]}
    on = {n: transcript(case, path, tmp_path / n, model, monkeypatch, base, OWNER_LEVEL_POLICY)
          for n, path in sources.items()}
    last = on["D"][-1][1]
    assert (last[2] if last[0] == "error" else "ok") == expect
    assert on["other"] == on["D"] and on["long"] == on["D"]
    ledger = tmp_path / "D" / "owner_level_ledger.json"
    if expect != "ok":  # refused before the data was read or epsilon reserved
        assert not ledger.exists()
        return
    entries = json.loads(ledger.read_text())["history"]
    assert [e["round"] for e in entries] == [1, 2]
    for head, body in on["D"]:
        blobs = dict(next(items for n, items in (b[:2] for b in body) if n == wire.BLOBS))
        assert set(blobs) == {"share.0", "share.1", "bundle"}
        metrics = dict(next(b[2] for b in body if b[0] == wire.METRICS))
        assert set(metrics) == {wire.NUM_EXAMPLES, wire.TRAIN_STEPS, *wire.DP_FIELDS}  # no loss, norm, timing


def test_an_owner_that_does_not_join_releases_what_one_that_joins_releases(datasets, tiny_gpt2, tmp_path, monkeypatch):
    """The owner's coin decides whether its delta is in its update; its bytes, keys and values' kind do not tell."""
    from nacl.public import PrivateKey

    model, base = {"path": str(tiny_gpt2)}, owner_level_base()
    parties = ",".join(bytes(PrivateKey.generate().public_key).hex() for _ in range(2))
    case = [msg("train", r, per_round={wire.PARTY_KEYS: parties}) for r in (1, 2)]
    sent, real = {}, owner_level.noised_update
    for coin, draw in (("joins", 0.0), ("stays out", 0.999999)):
        shared = []

        def noised(cfg, delta, draw=draw, shared=shared):
            monkeypatch.setattr(owner_level, "secret_uniform", lambda n: np.full(n, draw))
            update = real(cfg, delta)
            shared.append(update)
            return update

        monkeypatch.setattr(owner_level, "noised_update", noised)
        sent[coin] = transcript(case, datasets["D"], tmp_path / coin, model, monkeypatch, base, OWNER_LEVEL_POLICY)
        assert all(np.isfinite(u).all() and np.array_equal(u, np.rint(u)) for u in shared)
        sent[coin + " updates"] = shared
    assert sent["joins"] == sent["stays out"]
    assert sent["joins"][0][1][0] != "error"


def owner_level_tenseal_base() -> dict:
    """dp=owner_level under tenseal's BFV: the plan in its integer domain, and the bounds the runner sets
    (``tenseal/config.integer_values``: integers at step 1, the owners' norm check at the plan's bound)."""
    from fedveil.privacy.secagg.tenseal.config import TensealConfig, integer_values, integers

    dp = {"name": "owner_level", "target_epsilon": 8.0, "sample_rate": 0.5, "min_honest_owners": 3}
    planned, agg = OwnerLevelDPConfig(**dp), TensealConfig(max_owners=3)
    bound = resolve(planned, START["size"], 3, BASE["rounds"], integers(agg))
    integer_values(agg, bound, planned.gamma, planned.sample_rate, BASE["rounds"])
    return {**BASE, "num_clients": 3, "dp": {**dp, "gamma": planned.gamma, "mu": planned.mu},
            "aggregation": {"name": "tenseal", "max_owners": 3, "max_weight": agg.max_weight,
                            "value_bound": agg.value_bound, "norm_bound": agg.norm_bound,
                            "global_bound": agg.global_bound}}


def test_owner_level_under_tenseal_releases_the_same_bytes_for_another_owners_data(
        datasets, other_owner, tiny_gpt2, tmp_path, monkeypatch, tenseal_keyed):
    """dp=owner_level under tenseal: one encrypted integer update (the quantised delta and the owner's noise
    share, or the share alone), signed, with its committee commitment, and the DP record: on D, on another
    owner's whole dataset and on D's neighbour every released byte is the same but the encryption's and the
    CSPRNG's randomness, and the sizes; whether the owner's coin had it join does not show either."""
    from fedveil.configs.schema import run_key

    model, base = {"path": str(tiny_gpt2)}, owner_level_tenseal_base()
    cfg = from_dict({**base, "model": model})
    tenseal_keyed(tmp_path / "keyed", cfg.aggregation, run_key(cfg), ["client_0"])
    case = [msg("train", 1, glob=None)]  # round 1 starts from the global every owner derives
    sent = {}
    for coin, draw in (("joins", 0.0), ("stays out", 0.999999)):
        monkeypatch.setattr(owner_level, "secret_uniform", lambda n, draw=draw: np.full(n, draw))  # the coin only
        sent[coin] = {name: transcript(case, path, tmp_path / coin / name, model, monkeypatch, base,
                                       OWNER_LEVEL_POLICY, identity=tmp_path / "keyed" / "client_0")
                      for name, path in (("D", datasets["D"]), ("other", other_owner), ("long", datasets["long"]))}
        on = sent[coin]
        assert on["other"] == on["D"] and on["long"] == on["D"]
        entries = json.loads((tmp_path / coin / "D" / "owner_level_ledger.json").read_text())["history"]
        assert [e["round"] for e in entries] == [1]
    assert sent["joins"]["D"] == sent["stays out"]["D"]
    (head, body), = sent["joins"]["D"]
    assert head[0] == "train" and body[0] != "error"
    blobs = dict(next(items for name, items in (b[:2] for b in body) if name == wire.BLOBS))
    assert {"ciphertext", "signature"} <= set(blobs) and set(blobs) <= OPAQUE | {"context-id"}
    metrics = dict(next(b[2] for b in body if b[0] == wire.METRICS))
    assert set(metrics) == {wire.NUM_EXAMPLES, wire.TRAIN_STEPS, *wire.DP_FIELDS}  # no loss, norm, timing


def test_owner_level_under_tenseal_a_round_of_fewer_than_t_contributions_is_refused_alike_on_any_data(
        datasets, other_owner, tiny_gpt2, tmp_path, monkeypatch, tenseal_keyed):
    """A coordinator that keeps 2 signed updates of a round (t = 3) would show the owners, who hold the key, a
    sum carrying 2 of the t noise shares. The owner refuses it before its data is read or epsilon reserved, with
    the code alone (``bad-global check=contributions``), byte-identical on D, on another owner's whole dataset
    and on D's neighbour."""
    from fedveil.configs.schema import run_key
    from fedveil.core.payload import RoundContext
    from fedveil.privacy.secagg import backend_spec
    from fedveil.privacy.secagg.tenseal.backend import TensealServer
    from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal

    model, base = {"path": str(tiny_gpt2)}, owner_level_tenseal_base()
    cfg = from_dict({**base, "model": model})
    owners = ["client_0", "client_1", "client_2"]
    keys, made = tenseal_keyed(tmp_path / "keyed", cfg.aggregation, run_key(cfg), owners)
    size = START["size"]
    payloads = {o: backend_spec("tenseal").owner(cfg.aggregation, size, keys[o], {}, run=run_key(cfg)).protect(
        np.zeros(size), 1.0, RoundContext(1, START["digest"], o)) for o in owners[1:]}  # client_0's left out
    server = TensealServer(cfg.aggregation, size, public=made.public, run=run_key(cfg),
                           signers={o: k.member().verify_key for o, k in keys.items()})
    kept = server.combine(payloads, RoundContext(1, START["digest"])).payload.blobs[ROUND_UPDATES]
    case = [msg("train", 2, glob=EncryptedGlobal(None, [kept]).arrays())]
    on = {name: transcript(case, path, tmp_path / name, model, monkeypatch, base, OWNER_LEVEL_POLICY,
                           identity=tmp_path / "keyed" / "client_0")
          for name, path in (("D", datasets["D"]), ("other", other_owner), ("long", datasets["long"]))}
    assert on["other"] == on["D"] and on["long"] == on["D"]
    (head, body), = on["D"]
    assert head[0] == "train" and body[0] == "error"
    assert body[2] == "bad-global check=contributions", body  # the code and its check: no text, no count
    for name in on:  # refused before the data was read or any epsilon reserved
        assert not (tmp_path / name / "owner_level_ledger.json").exists()
