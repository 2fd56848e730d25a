"""One data owner's side of a round, free of Flower: check, load, train, protect, evaluate.

The ClientApp (``client/app.py``) only turns Messages into calls on :class:`Owner`. The owner's
backend side (``privacy/secagg``) protects its update and opens the global the server sends.

Every instruction is checked before the owner's data is read or its ε ledger opened, in this
order: its own policy (``privacy/policy.py``, a named file that is missing stops it), the layout
digest, the round number against the plan and the owner's run record (``client/run_record.py``)
and the global (``privacy/inputs.py``). Only then does :meth:`Owner.load_data` read the data and
run the checks whose answer depends on it (δ < 1/n). Under DP the owner computes only its DP-SGD
update (weight 1, a public value) and its DP accounting record; evaluation runs a fixed public
number of held-out examples drawn with replacement at a fixed padded length; its losses stay home
(``<state dir>/evaluations.jsonl``). Without DP the held-out loss leaves as a protected pair
(loss x tokens, tokens) the backend sums (:meth:`Owner.protect_eval_pair`). What actually leaves is
decided by ``client/release.py``.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fedveil.client import owner_level
from fedveil.client.run_record import RunRecord
from fedveil.configs.schema import FedveilConfig, run_key  # noqa: F401 -- run_key: the owner's name for it
from fedveil.core import wire
from fedveil.core.layout import AdapterLayout
from fedveil.core.payload import Protected, RoundContext, with_eval_pair
from fedveil.core.console import progress
from fedveil.core.errors import Refusal, UserError
from fedveil.core.faults import maybe_die
from fedveil.core.io import append_jsonl
from fedveil.privacy import provenance
from fedveil.privacy.dp import epsilon_ledger
from fedveil.privacy.dp.randomness import secret_uniform
from fedveil.privacy.dp.sgd import owner_delta, poisson_loader, private_training
from fedveil.privacy.inputs import check_global
from fedveil.privacy.policy import FILENAME as POLICY_FILE
from fedveil.privacy.policy import load_policy
from fedveil.privacy.secagg import backend_spec, eval_pair
from fedveil.privacy.secagg.base import server_sees_counts
from fedveil.privacy.secagg.identity import OwnerKeys
from fedveil.task.data import IGNORE_INDEX, DataConfig, OwnerData, collate, load_owner_data
from fedveil.task.model import (
    LoraSettings,
    ModelConfig,
    get_adapter,
    load_lora_model,
    load_tokenizer,
    resolve_device,
    set_adapter,
)
from fedveil.task.train import evaluate, make_optimizer, shuffled_loader, train_steps


@dataclass(frozen=True)
class OwnerIdentity:
    """Who this owner is and where its files live (never sent to the server but the id)."""

    owner_id: str
    data_source: str
    state_dir: str
    max_epsilon: Optional[float] = None  # the owner's own cap on its privacy budget (its policy's wins)
    policy_path: Optional[str] = None  # None: <state_dir>/policy.json
    roster_path: Optional[str] = None  # the pinned roster of owner keys; None: <state_dir>/roster.json
    model_path: Optional[str] = None  # the owner's own copy of the base model; None: the config's model.path
    party_keys_path: Optional[str] = None  # crypten: pinned party keys; None: <state_dir>/party-keys.json if any

    @property
    def policy_file(self) -> Path:
        return Path(self.policy_path) if self.policy_path else Path(self.state_dir) / POLICY_FILE

    @property
    def keys(self) -> OwnerKeys:
        """This owner's signing and sealing keys and its pinned roster (privacy/secagg/identity.py)."""
        return OwnerKeys(self.owner_id, self.state_dir, self.roster_path, self.party_keys_path)


_LOADS = {"models": 0}


def model_loads() -> int:
    """How many times this process loaded a model (a worker: once per model, whatever the rounds)."""
    return _LOADS["models"]


@lru_cache(maxsize=4)
def _model_bundle(model_key: str, seed: int, device: str):
    """Model, tokenizer and layout, cached per process (a Ray actor or an owner worker serves many rounds)."""
    _LOADS["models"] += 1
    values = json.loads(model_key)
    cfg = ModelConfig(**{**values, "lora": LoraSettings(**values["lora"]), "tiny": None, "device": device})
    model = load_lora_model(cfg, seed=seed)
    tokenizer = load_tokenizer(cfg.path)
    layout = AdapterLayout.of(get_adapter(model))
    return model, tokenizer, layout, layout.flatten(get_adapter(model))


@lru_cache(maxsize=8)  # a few owners per process: a simulation worker plays many, holding only these
def _owner_data(source: str, tokenizer, data_key: str, seed: int, one_row_per_record: bool) -> OwnerData:
    return load_owner_data(source, tokenizer, DataConfig(**json.loads(data_key)), seed,
                           one_row_per_record=one_row_per_record)


class Owner:
    """A data owner bound to one experiment config and one round's instructions."""

    def __init__(self, cfg: FedveilConfig, identity: OwnerIdentity, per_round: dict | None = None) -> None:
        """Checks everything that depends only on the coordinator's instruction and public values;
        reads no data and opens no ledger (that waits for :meth:`load_data` and training)."""
        self.cfg, self.identity = cfg, identity
        self.policy = load_policy(identity.policy_file, named=identity.policy_path is not None)
        self.dp_on = cfg.dp.name != "off"
        self.device = resolve_device(cfg.model.device)
        model_key = json.dumps({**dataclasses.asdict(cfg.model), "tiny": None}, sort_keys=True)
        self.model, self.tokenizer, self.layout, self.initial = _model_bundle(model_key, cfg.seed, str(self.device))
        self.policy.check(cfg, self.layout.digest)
        if cfg.dp.name == "owner_level":
            owner_level.check_config(cfg, self.policy, self.layout.size)
        check_max_length(self.model, cfg.data.max_length)
        Path(identity.state_dir).mkdir(parents=True, exist_ok=True)
        per_round = per_round or {}
        self.ctx = RoundContext(round_number(per_round.get(wire.ROUND, 0)), self.layout.digest, identity.owner_id)
        self.runs = RunRecord(identity.state_dir, run_key(cfg))
        self.runs.check_round(self.ctx.round, cfg.rounds)
        self.backend = backend_spec(cfg.aggregation.name).owner(cfg.aggregation, self.layout.size, identity.keys,
                                                                per_round, run=run_key(cfg))
        self._data: Optional[OwnerData] = None
        self.held_out_pair: Optional[Protected] = None  # set by evaluate() without DP: what it sends beside its metrics

    @property
    def data(self) -> OwnerData:
        return self._data if self._data is not None else self.load_data()

    def load_data(self) -> OwnerData:
        """Read and tokenize the owner's data, after every input check; the checks that depend on
        the data run here and are shown here: the server gets the code ``data`` only."""
        data_key = json.dumps(dataclasses.asdict(self.cfg.data), sort_keys=True)
        try:
            self._data = _owner_data(self.identity.data_source, self.tokenizer, data_key, self.cfg.seed, self.dp_on)
            if self.dp_on:
                n = len(self._data.train) + len(self._data.eval)
                if self.policy.max_delta is not None:
                    # against the owner's own cap, so the answer cannot be probed with the server's δ
                    # (the policy already refused a δ above the cap)
                    owner_delta(dataclasses.replace(self.cfg.dp, delta=self.policy.max_delta), n)
                owner_delta(self.cfg.dp, n)
        except UserError as exc:  # DataError included
            self._data = None
            if isinstance(exc, Refusal):
                raise
            raise Refusal("data", f"{self.identity.owner_id}: {exc}") from exc
        return self._data

    @property
    def num_examples(self) -> int:
        return len(self.data.train)

    @property
    def num_records(self) -> int:
        """Every record the owner holds, held-out ones included (all are protected under DP)."""
        return len(self.data.train) + len(self.data.eval)

    def open_global(self, arrays: dict[str, np.ndarray], after_round: int) -> tuple[np.ndarray, float]:
        """The global adapter after round ``after_round`` from the server's arrays (clear, or checked
        and decrypted here), refused unless float32, of the layout's size, finite and within the
        policy's ``max_global_abs``; and seconds spent."""
        start = time.perf_counter()
        size, bound = self.layout.size, self.policy.max_global_abs
        if wire.CLEAR_GLOBAL in arrays:  # as sent: a float64 or int global is refused, never cast
            check_global(arrays[wire.CLEAR_GLOBAL], size, bound)
        vector = check_global(np.asarray(self.backend.open_global(arrays, self.initial, after_round), np.float32),
                              size, bound)
        return vector, time.perf_counter() - start

    def save_final_adapter(self, vector: np.ndarray) -> Path:
        """The final adapter, written by the owner into its own state directory (where the backend's
        ``writes_final_adapter`` says so: the server holds no plaintext global to write)."""
        self.load_global(vector)
        target = Path(self.identity.state_dir) / provenance.ADAPTER_FOLDER
        self.model.save_pretrained(target)
        return target

    def sign_final_adapter(self, vector: np.ndarray, per_round: dict) -> dict[str, bytes]:
        """Where the server asks (the last evaluate), this owner's signed statement over ``vector`` as a
        PEFT adapter (``privacy/provenance.py``), as reply meta; {} where not asked, or where it pins no
        roster (its console says why: the evaluation still leaves). Under ``writes_final_adapter`` the
        bundle is also written beside the owner's own final adapter."""
        if not per_round.get(wire.SIGN_ADAPTER):
            return {}
        keeps = self.backend.writes_final_adapter(per_round)
        try:
            with tempfile.TemporaryDirectory(prefix="fedveil-sign-") as scratch:
                folder = Path(self.identity.state_dir) / provenance.ADAPTER_FOLDER if keeps else Path(scratch)
                if not keeps:  # the same files the server writes from the same global (server/federation.py)
                    self.load_global(vector)
                    self.model.save_pretrained(folder)
                bundle = provenance.sign_adapter(self.identity.keys, folder, self.run_key(), sorted(self.runs.trained),
                                                 self.ctx.round)
                if keeps:
                    provenance.write_bundle(folder, self.identity.owner_id, bundle)
        except UserError as exc:  # no roster pinned, or keys that differ from it: not signed, said here
            progress(f"{self.identity.owner_id}: final adapter not signed: {exc}")
            return {}
        return {wire.ADAPTER_STATEMENT: bundle}

    def load_global(self, vector: np.ndarray) -> None:
        set_adapter(self.model, self.layout.unflatten(vector))

    def run_key(self) -> str:
        return run_key(self.cfg)

    def train_round(self, global_vector: np.ndarray) -> tuple[Protected, dict[str, float]]:
        """Train from the global adapter (with DP-SGD where configured); protect the delta."""
        self.runs.check_train(self.ctx.round, self.policy.max_rounds)
        self.data  # noqa: B018 -- read (its checks run, e.g. delta < 1/n) before any spend is reserved
        self.load_global(global_vector)
        tc, server_round = self.cfg.train, self.ctx.round
        torch.manual_seed(self.cfg.seed * 1_000_003 + server_round)  # init-like randomness only; DP draws its own
        optimizer = make_optimizer(self.model, tc)
        if self.cfg.dp.name == "owner_level":  # no per-example noise: the noise is the round's (below)
            metrics = owner_level.reserve(self.cfg, self.policy, self.identity.state_dir, self.run_key(), server_round,
                                          self.layout.size, node_cap=self.identity.max_epsilon)
            result = self.train_plain(optimizer)
        elif self.dp_on:
            result, metrics = self.train_private(optimizer)
        else:
            result, metrics = self.train_plain(optimizer), {}
        delta = clip_update(self.layout.flatten(get_adapter(self.model)) - global_vector, tc.update_clip_norm)
        if self.cfg.dp.name == "owner_level":
            delta = owner_level.noised_update(self.cfg, delta)
        start = time.perf_counter()
        # under DP every owner weighs 1 (a public value): an exact count would leave un-noised
        protected = self.backend.protect(delta, 1.0 if self.dp_on else float(self.num_examples), self.ctx)
        self.runs.note_trained(server_round)
        self.keep_local({"round": server_round, "train_loss": result.loss})
        if self.dp_on:  # sizes fixed by public values; no timings, losses or norms
            metrics.update({wire.NUM_EXAMPLES: 1, wire.TRAIN_STEPS: tc.local_steps})
            return protected, metrics
        metrics.update({
            wire.NUM_EXAMPLES: self.metric_weight(self.num_examples),
            wire.TRAIN_STEPS: result.steps,
            wire.TRAIN_SECONDS: result.seconds,
            wire.PROTECT_SECONDS: time.perf_counter() - start,
            wire.TRAIN_LOSS: result.loss,
        })
        if self.backend.server_sees_updates:  # elsewhere even the norm stays home
            metrics[wire.UPDATE_NORM] = float(np.linalg.norm(delta))
        return protected, metrics

    def train_plain(self, optimizer):
        """Local steps without per-example noise (dp=off, and dp=owner_level, whose noise is the round's)."""
        tc, server_round = self.cfg.train, self.ctx.round
        maybe_die("owner-training", server_round, self.identity.owner_id)
        loader = shuffled_loader(self.data.train, tc.batch_size, self.tokenizer.pad_token_id,
                                 seed=zlib.crc32(f"{self.cfg.seed}:{server_round}:{self.identity.owner_id}".encode()))
        return train_steps(self.model, loader, optimizer, tc.local_steps, self.device, self.training_progress)

    def train_private(self, optimizer):
        """DP-SGD for this round: noise planned and spend reserved in the owner's ledger first."""
        tc, dp, q = self.cfg.train, self.cfg.dp, self.cfg.dp.sample_rate
        cap = self.policy.max_epsilon if self.policy.max_epsilon is not None else self.identity.max_epsilon
        try:
            ledger = epsilon_ledger.open_ledger(self.identity.state_dir, dp, self.num_records, cap)
            server_round, run = self.ctx.round, self.run_key()
            sigma = epsilon_ledger.run_noise(ledger, run, dp, q, self.cfg.rounds * tc.local_steps,
                                             server_round=server_round,
                                             steps_left=(self.cfg.rounds - server_round + 1) * tc.local_steps)
            self.policy.check_noise(sigma)
            # Spend is recorded before the update exists; a refusal raises BudgetExceeded here.
            step = epsilon_ledger.Step(run, server_round, sigma, q, tc.local_steps)
            epsilon = epsilon_ledger.reserve(self.identity.state_dir, ledger, step)
        except epsilon_ledger.BudgetExceeded as exc:
            raise Refusal("budget", str(exc)) from exc
        except epsilon_ledger.LedgerError as exc:  # the owner's own files: its operator reads the line
            raise Refusal("internal", str(exc)) from exc
        maybe_die("owner-training", server_round, self.identity.owner_id)  # the spend is on disk already
        loader = poisson_loader(self.data.train, partial(collate, pad_id=self.tokenizer.pad_token_id), dp)
        with private_training(self.model, optimizer, loader, dp, sigma) as (model, dp_optimizer, dp_loader):
            result = train_steps(model, dp_loader, dp_optimizer, tc.local_steps, self.device, self.training_progress)
        return result, {wire.DP_NOISE: sigma, wire.DP_SAMPLE_RATE: q, wire.DP_STEPS: tc.local_steps,
                        wire.DP_DELTA: ledger.delta, wire.DP_EPSILON: epsilon, wire.DP_BUDGET: ledger.budget_epsilon}

    def training_progress(self, done: int, steps: int) -> None:
        """A console line while local training runs long (every 10 s; never for short rounds)."""
        progress(f"{self.identity.owner_id}: round {self.ctx.round} local training, step {done}/{steps}")

    def metric_weight(self, count: int) -> int:
        """Counts weight the server's metric averages; secure backends and DP hide them (weight 1)."""
        return count if server_sees_counts(self.backend, self.dp_on) else 1

    def evaluate(self, global_vector: np.ndarray, after_round: Optional[int] = None) -> dict[str, float]:
        """Held-out loss of the global adapter after round ``after_round`` (None: this instruction's
        round; ``eval_in_train``: the round before, whose global the owner is about to train from).
        Under DP it stays with the owner (evaluations.jsonl) and is taken on ``policy.dp_eval_examples``
        examples drawn with replacement from the OS CSPRNG, each padded to ``data.max_length``: the
        work does not scale with the owner's data."""
        ctx = self.ctx if after_round is None else dataclasses.replace(self.ctx, round=after_round)
        self.runs.take_evaluate(ctx.round, self.policy.max_evaluates_per_round)
        examples = self.data.eval
        if self.dp_on:
            examples = fixed_size_sample(examples, self.policy.dp_eval_examples, self.cfg.data.max_length,
                                         self.tokenizer.pad_token_id)
        self.load_global(global_vector)
        start = time.perf_counter()
        loss, tokens = evaluate(self.model, examples, self.cfg.train.eval_batch_size,
                                self.tokenizer.pad_token_id, self.device)
        self.keep_local({"round": ctx.round, "eval_loss": loss, "eval_tokens": tokens})
        if self.dp_on:
            return {wire.NUM_EXAMPLES: 1}
        self.held_out_pair = self.protect_eval_pair(loss, tokens, ctx)
        metrics = {wire.NUM_EXAMPLES: self.metric_weight(tokens), wire.EVAL_SECONDS: time.perf_counter() - start}
        if server_sees_counts(self.backend, self.dp_on):  # plain: the server sees this owner's loss anyway
            metrics[wire.EVAL_LOSS] = loss
        return metrics

    def protect_eval_pair(self, loss: float, tokens: int, ctx: Optional[RoundContext] = None) -> Optional[Protected]:
        """Without DP: the held-out pair ``(loss x tokens, tokens)`` protected by the backend for this
        round, bound apart from an update (``privacy/secagg/eval_pair.py``); None for a non-finite loss
        (the owner's console says so; the federation's mean is then over the other owners)."""
        if not (np.isfinite(loss) and tokens > 0):
            progress(f"{self.identity.owner_id}: held-out loss {loss} over {tokens} tokens is not sent")
            return None
        delta, weight = eval_pair.as_update(loss, tokens)
        return with_eval_pair(self.backend.protect(delta, weight, (ctx or self.ctx).for_eval_pair()))

    def keep_local(self, row: dict) -> None:
        """The owner's own record of its losses (never sent): ``<state dir>/evaluations.jsonl``."""
        append_jsonl(Path(self.identity.state_dir) / EVALUATIONS_FILE, {"run": self.cfg.output_dir, **row})


EVALUATIONS_FILE = "evaluations.jsonl"


def round_number(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise Refusal("config", f"the round number {value!r} is not an integer", key=wire.ROUND) from exc


def check_max_length(model, max_length: int) -> None:
    """Refuse a ``data.max_length`` past the model's positions: the forward pass would fail only on
    records that long, and whether it fails would tell the coordinator that one exists."""
    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if limit is not None and max_length > int(limit):
        raise Refusal("config", f"data.max_length={max_length} is past the model's {limit} positions: lower it",
                      key="data.max_length")


def fixed_size_sample(examples: list, k: int, length: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """``k`` of ``examples`` drawn with replacement from the OS CSPRNG, each padded to ``length``
    tokens (labels -100 on the padding, so the loss is the unpadded one: causal attention never
    looks ahead)."""
    picks = np.minimum((secret_uniform(k) * len(examples)).astype(np.int64), len(examples) - 1)
    out = []
    for i in picks.tolist():
        ids, labels = examples[i]["input_ids"][:length], examples[i]["labels"][:length]
        pad = length - len(ids)
        out.append({"input_ids": torch.cat([ids, torch.full((pad,), pad_id, dtype=ids.dtype)]),
                    "labels": torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=labels.dtype)])})
    return out


def clip_update(delta: np.ndarray, bound: Optional[float]) -> np.ndarray:
    """Scale ``delta`` down to L2 norm ``bound`` (no-op when None or already within)."""
    if bound is None:
        return delta
    norm = float(np.linalg.norm(delta))
    return delta if norm <= bound else (delta * (bound / norm)).astype(delta.dtype)
