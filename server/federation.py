"""The coordinator's loop: rounds of train -> aggregate -> evaluate, with outputs each round.

Reads top to bottom: :func:`run_federation` sets up, evaluates the starting adapter (round 0),
runs each round (:func:`run_round`: train, advance the global, evaluate, write the round's row,
checkpoint and round-chain entry) and writes the final outputs (:func:`finish`). Like Flower's
``Strategy.start`` but with round-0 evaluation, per-round outputs, resume and progress lines; a
round goes on without owners not connected or silent within ``sim.round_timeout_s`` (availability.py).
``eval_in_train``: round r's evaluation rides in round r+1's train (:func:`join_evaluation`).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedveil.configs.schema import FedveilConfig, to_run_config
from fedveil.core import records, wire
from fedveil.core.console import progress
from fedveil.core.errors import UserError
from fedveil.core.faults import maybe_die
from fedveil.core.layout import AdapterLayout
from fedveil.core.memory import return_freed_memory
from fedveil.core.metrics import (MetricsRow, OwnerRow, RunSummary, Seconds, append_row, drop_rows_after, read_rows,
                                  replace_row, summarize)
from fedveil.privacy.dp.owner_level_plan import decode_sum
from fedveil.privacy.secagg import BackendSpec, backend_spec
from fedveil.privacy.secagg.base import GlobalHolder, server_sees_counts
from fedveil.server import checkpoint, committee_exchange, round_chain, signatures
from fedveil.server.availability import absent_reason, connected_nodes, owner_floor, silent_reason
from fedveil.server.global_state import ClearGlobal, global_per_node, opened_by
from fedveil.server.grid_poll import Exchange, exchange, query_messages
from fedveil.server.key_setup import setup_keys
from fedveil.server.outputs import RUN_ERROR_FILE, fmt, report_excluded
from fedveil.server.strategy import EvalOutcome, SecureAggregation, TrainOutcome
from fedveil.task.model import get_adapter, load_lora_skeleton, set_adapter


@dataclass
class Evaluation:
    loss: float | None
    per_owner: dict[str, OwnerRow]  # what each owner released of its evaluation
    exchange: Exchange


@dataclass
class Federation:
    """Everything the loop needs, set up once."""

    cfg: FedveilConfig
    grid: Grid
    out: Path
    model: torch.nn.Module  # the server never trains; it needs the model for the layout and the final adapter
    layout: AdapterLayout
    spec: BackendSpec
    strategy: SecureAggregation
    state: GlobalHolder  # ClearGlobal, or the backend's own holder (BackendSpec.held_global)
    run_config: dict
    owners: list[str]  # owner ids known from the key set-up (none without one)
    node_owner: dict[int, str] = field(default_factory=dict)  # node id -> owner id, from the key set-up
    labels: dict[int, str] = field(default_factory=dict)  # node id -> the owner id its replies named (for reports)
    seen: set[str] = field(default_factory=set)
    chain_head: str | None = None

    @property
    def config_hash(self) -> str:
        return round_chain.sha256_of(json.dumps(self.run_config, sort_keys=True).encode())


def run_federation(grid: Grid, cfg: FedveilConfig) -> RunSummary:
    """Run every round; returns the run's summary (whoever started the run writes it: server/app.py)."""
    fed = setup(grid, cfg)
    first = resume(fed)
    sampled = f" ({cfg.participants} train per round)" if cfg.participants < cfg.num_clients else ""
    progress(
        f"{cfg.num_clients} owners{sampled} x {cfg.rounds} rounds | backend={cfg.aggregation.name} dp={cfg.dp.name} | "
        f"adapter {fed.layout.size:,} values ({fed.layout.digest[:12]})"
    )
    if first == 1 and not any(r.round == 0 for r in read_rows(fed.out)):
        evaluate_start(fed)
    for server_round in range(first, cfg.rounds + 1):
        run_round(fed, server_round)
    return finish(fed)


def setup(grid: Grid, cfg: FedveilConfig) -> Federation:
    """Model and layout, the backend's server side (after any key set-up) and the starting global."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_ERROR_FILE).unlink(missing_ok=True)
    # the server never trains: from config.json alone, the adapters (layout, initial values, final adapter)
    model = load_lora_skeleton(cfg.model, seed=cfg.seed)
    layout = AdapterLayout.of(get_adapter(model))
    spec = backend_spec(cfg.aggregation.name)
    run_config = to_run_config(cfg)
    keyed = {}
    owners: dict[int, str] = {}
    if spec.key_setup is not None:
        progress(f"{cfg.aggregation.name}: key set-up (owners exchange X25519 keys; the server relays sealed boxes)")
        made = setup_keys(grid, run_config, cfg.num_clients, cfg.aggregation.key_holder, cfg.sim.round_timeout_s,
                          resume=cfg.resume, setup=spec.key_setup)
        return_freed_memory()  # the set-up's sealed contexts (one per owner) are gone: do not keep their pages
        keyed, owners = dict(public=made.public, run=made.run, signers=made.signers), made.owners
        if made.rejoined:
            progress(f"{cfg.aggregation.name}: {len(owners)} owners hold this run's context; resuming with it, no "
                     "re-keying")
        else:
            progress(f"{cfg.aggregation.name}: {len(owners)} owners keyed; the server holds the public context only")
    backend = spec.server(cfg.aggregation, layout.size, **keyed)
    run_config.update(backend.round_config())
    state = (spec.held_global(backend) if spec.held_global is not None
             else ClearGlobal(layout.flatten(get_adapter(model))))
    # FedAvg's sizes only: clients_per_round to train; its unbounded wait is never reached (connected_nodes)
    inner = FedAvg(fraction_train=cfg.participants / cfg.num_clients, min_train_nodes=cfg.participants,
                   min_evaluate_nodes=cfg.num_clients, min_available_nodes=cfg.num_clients,
                   arrayrecord_key=wire.GLOBAL, configrecord_key=wire.CONFIG)
    decode = (partial(decode_sum, gamma=cfg.dp.gamma, sample_rate=cfg.dp.sample_rate)
              if cfg.dp.name == "owner_level" else None)  # owners send integers; the mean is over q x the summed
    return Federation(cfg, grid, out, model, layout, spec, SecureAggregation(inner, backend, layout, decode), state,
                      run_config, sorted(owners.values()), dict(owners))


def resume(fed: Federation) -> int:
    """The first round to run: 1, or the one after the newest checkpoint when ``resume=true``.

    The checkpoint is a round's commit point (:func:`record_round`): rows and round-chain entries
    of later rounds (a run killed between writing them and the checkpoint) are dropped, so the
    re-run round is logged once; without any checkpoint the round-0 row is kept and not redone."""
    if not fed.cfg.resume:
        return 1
    resumed = checkpoint.latest(fed.out, fed.layout)
    last = resumed[0] if resumed else 0
    drop_rows_after(fed.out, last)
    round_chain.drop_after(fed.out / round_chain.FILENAME, last)
    if not resumed:
        return 1
    fed.state = fed.state.restored(resumed[1])
    fed.seen.update(who for r in read_rows(fed.out) if r.trained for who in r.clients)
    fed.chain_head = round_chain.head(fed.out / round_chain.FILENAME)
    progress(f"resuming after round {last} from {fed.out / 'checkpoints'}")
    return last + 1


def evaluate_start(fed: Federation) -> None:
    if fed.cfg.eval_in_train:  # its row only: round 1's train replies bring its evaluation (join_evaluation)
        return append_row(fed.out, MetricsRow(round=0, backend=fed.strategy.backend.name, seconds=Seconds(round=0.0)))
    ev = evaluate(fed, 0, nodes=evaluation_cohort(fed, 0, connected_nodes(fed.grid, fed.cfg, 0)))
    owners = sorted(ev.per_owner)
    append_row(fed.out, MetricsRow(round=0, backend=fed.strategy.backend.name, eval_loss=ev.loss, clients=owners,
                                   evaluated=owners, per_client=ev.per_owner,
                                   seconds=Seconds(round=0.0, evaluate=ev.exchange.seconds)))
    progress(f"round 0/{fed.cfg.rounds} | eval loss {fmt(ev.loss)} (starting adapter)")


def run_round(fed: Federation, server_round: int) -> None:
    start = time.perf_counter()
    nodes = connected_nodes(fed.grid, fed.cfg, server_round)
    carry = carried_evaluation(fed, server_round)
    outcome, train_ex = train(fed, server_round, nodes, carry)
    # before the round's updates join the global: a re-encrypted global handed back settles the rounds before
    joined = join_evaluation(fed, server_round - 1, train_ex) if carry else Exchange([], {}, {}, 0.0)
    if not outcome.accepted:
        stop_untrained(fed, server_round, outcome, train_ex, time.perf_counter() - start)
    fed.state.apply(outcome)
    joined = joined.plus(committee_exchange.settle(fed, server_round, outcome))  # its bytes: this row's
    fed.seen.update(outcome.accepted)
    later = fed.cfg.eval_in_train and server_round < fed.cfg.rounds and not lost_update(outcome, train_ex)
    if later:  # evaluated with round server_round + 1's train
        ev = Evaluation(None, {}, joined)
    else:
        ev = evaluate(fed, server_round, handover(fed, server_round, outcome),
                      evaluation_cohort(fed, server_round, nodes, train_ex))
        ev.exchange = ev.exchange.plus(joined)
    signatures.keep_statements(fed.out, ev.exchange.replies)  # the last round: owners' signed results
    row = round_row(fed, server_round, outcome, train_ex, ev, time.perf_counter() - start)
    record_round(fed, server_round, row, outcome)
    note = f" | max eps {row.max_epsilon:.3f}" if row.max_epsilon is not None else ""
    note += f" | {len(outcome.excluded)} excluded" if outcome.excluded else ""
    progress(f"round {server_round}/{fed.cfg.rounds} | train loss {fmt(row.train_loss)} | "
             f"eval loss {'with the next train' if later else fmt(ev.loss)} | "
             f"{len(outcome.accepted)} owners | {row.seconds.round:.1f} s{note}")
    report_excluded(outcome.excluded)


def stop_untrained(fed: Federation, server_round: int, outcome: TrainOutcome, train_ex: Exchange,
                   seconds: float) -> None:
    """No owner trained: record the round's row (no checkpoint, so a resume retries it) and stop."""
    row = round_row(fed, server_round, outcome, train_ex, Evaluation(None, {}, Exchange([], {}, {}, 0.0)), seconds)
    append_row(fed.out, row)
    reasons = sorted(set(outcome.excluded.values()), key=lambda r: r.startswith(("no reply", "not connected")))
    reasons = reasons or ["no owner answered"]
    report_excluded(outcome.excluded)
    raise UserError(f"round {server_round}: no owner trained, so the run stops ({len(outcome.excluded)} excluded; "
                    f"{reasons[0]}{f' (+{len(reasons) - 1} other reasons)' if len(reasons) > 1 else ''}); "
                    "restart with resume=true to run the round again")


def carried_evaluation(fed: Federation, server_round: int) -> dict:
    """``eval_in_train``: what round ``server_round``'s train message asks besides training: evaluate the
    global after the round before, first, and answer the holder's hand-over of it (an encrypted global:
    the owner asked re-encrypts it), as the round's evaluate message would have. Nothing where that
    round's row holds its evaluation already (a round run again after a kill that came later): an owner
    reveals a round's held-out sum once (tenseal), and the numbers are in."""
    before = [r for r in read_rows(fed.out) if r.round == server_round - 1][-1:]
    if not fed.cfg.eval_in_train or (before and before[0].evaluated):
        return {}
    if server_round == 1 or not before:  # round 0: the starting adapter, which every owner derives itself
        return {wire.EVALUATE_FIRST: True}
    return {wire.EVALUATE_FIRST: True, **fed.state.handover(server_round - 1, before[0].clients, fed.owners, False)}


def lost_update(outcome: TrainOutcome, train_ex: Exchange) -> bool:
    """Whether the round left out an owner it asked to train (silent, refused or excluded). Then
    it evaluates apart even with ``eval_in_train``: an owner whose update may be left out must next see the
    round settled by the hand-over (an encrypted global: re-encrypted), not pending without its update,
    which it refuses as a drop."""
    taken = {node for node, who in outcome.node_to_owner.items() if who in outcome.accepted}
    return bool(set(train_ex.bytes_down) - taken)


def train(fed: Federation, server_round: int, nodes: list[int], carry: dict) -> tuple[TrainOutcome, Exchange]:
    """Round ``server_round``'s training among ``nodes`` (``carry``: :func:`carried_evaluation`); an owner that
    is not connected or does not reply within ``sim.round_timeout_s`` is excluded with that reason, and the round
    goes on without it."""
    msgs = fed.strategy.configure_train(server_round, records.arrays_record(fed.state.arrays()),
                                        ConfigRecord({**fed.run_config, **carry}), fed.grid, nodes,
                                        global_per_node(fed.state, fed.node_owner, nodes))
    timeout, floor = fed.cfg.sim.round_timeout_s, owner_floor(fed.cfg)
    ex = exchange(fed.grid, list(msgs), timeout)
    fed.state.opened(server_round - 1, opened_by(fed.node_owner, ex))
    usable = [m for m in ex.replies if m.has_content() and not m.has_error()]
    if 0 < len(usable) < floor:  # the backend would reveal nothing (crypten's parties): do not ask it
        outcome = TrainOutcome(node_to_owner={m.metadata.src_node_id: records.owner_label(m) for m in ex.replies})
        outcome.excluded = {who: f"only {len(usable)} owner(s) answered, fewer than aggregation.min_owners={floor}: "
                                 "nothing aggregated" for who in outcome.node_to_owner.values()}
    else:
        outcome = fed.strategy.aggregate_train(server_round, ex.replies)
    fed.labels.update(outcome.node_to_owner)
    answered = {m.metadata.src_node_id for m in ex.replies}
    for node in sorted(set(ex.bytes_down) - answered):  # an owner that went away mid-round: the round goes on
        outcome.excluded[fed.node_owner.get(node) or fed.labels.get(node) or f"node_{node}"] = silent_reason(timeout)
    for node, who in sorted({**fed.labels, **fed.node_owner}.items()):  # known owners whose link is down
        if node not in nodes and who not in outcome.accepted and who not in outcome.excluded:
            outcome.excluded[who] = absent_reason(timeout)
    return outcome, ex


def evaluation_cohort(fed: Federation, server_round: int, nodes: list[int],
                      train_ex: Exchange | None = None) -> list[int]:
    """The nodes that evaluate round ``server_round``'s global, of ``nodes`` (those connected).

    Every owner evaluates when all train, and in the last round (the final adapter's held-out loss
    over the whole federation; with an encrypted global each owner writes its final adapter then).
    With ``clients_per_round`` the other rounds are evaluated by the owners that trained in them
    (round 0: a uniform sample of as many), so an owner left out of a round does no work in it.
    An owner that did not answer the round's train message (``train_ex``) is not asked again.
    """
    cfg = fed.cfg
    answered = {m.metadata.src_node_id for m in train_ex.replies} if train_ex is not None else set()
    silent = set(train_ex.bytes_down) - answered if train_ex is not None else set()
    if cfg.participants == cfg.num_clients or server_round == cfg.rounds:
        return [n for n in nodes if n not in silent]
    if train_ex is None:
        return random.sample(nodes, min(cfg.participants, len(nodes)))
    return [n for n in train_ex.bytes_down if n in answered]


def handover(fed: Federation, server_round: int, outcome: TrainOutcome) -> dict:
    """What round ``server_round``'s evaluate message asks of owners besides evaluating, as the holder of the
    global says (an encrypted global: one owner re-encrypts it for the server; the last round ends it)."""
    return {**fed.state.handover(server_round, outcome.accepted, fed.owners, server_round == fed.cfg.rounds),
            **signatures.sign_request(fed.cfg, server_round)}


def evaluate(fed: Federation, server_round: int, extra: dict | None = None,
             nodes: list[int] | None = None) -> Evaluation:
    config = ConfigRecord({**fed.run_config, **(extra or {})})
    msgs = fed.strategy.configure_evaluate(server_round, records.arrays_record(fed.state.arrays()), config, fed.grid,
                                           nodes, global_per_node(fed.state, fed.node_owner, nodes or []))
    ex = exchange(fed.grid, list(msgs), fed.cfg.sim.round_timeout_s)
    fed.state.opened(server_round, opened_by(fed.node_owner, ex))
    return evaluation_of(fed, server_round, ex)


def join_evaluation(fed: Federation, server_round: int, train_ex: Exchange) -> Exchange:
    """``eval_in_train``: round ``server_round``'s evaluation, from the next round's train replies, joins
    the row written at its end (``replace_row``); its bytes count in the round that carried it, as do
    those of the exchange it needed besides (returned: tenseal's ``query.evalsum``)."""
    ev = evaluation_of(fed, server_round, Exchange(train_ex.replies, {}, {}, 0.0))
    for row in [r for r in read_rows(fed.out) if r.round == server_round][-1:]:  # none: nothing to join
        row.eval_loss, row.evaluated = ev.loss, sorted(ev.per_owner)
        row.clients = row.evaluated if server_round == 0 else row.clients  # as evaluate_start writes round 0
        for who, evaluated in ev.per_owner.items():
            owner = row.per_client.setdefault(who, OwnerRow())
            owner.eval_loss, owner.eval_reveal_seconds = evaluated.eval_loss, evaluated.eval_reveal_seconds
        replace_row(fed.out, row)
    progress(f"round {server_round}/{fed.cfg.rounds} | eval loss {fmt(ev.loss)} (with the next round's train)")
    return Exchange([], ev.exchange.bytes_down, ev.exchange.bytes_up, ev.exchange.seconds)


def evaluation_of(fed: Federation, server_round: int, ex: Exchange) -> Evaluation:
    """Round ``server_round``'s evaluation from the owners' replies in ``ex``."""
    agg = fed.strategy.aggregate_evaluate(server_round, ex.replies)
    answered = [m for m in ex.replies if m.has_content() and not m.has_error()]
    fed.labels.update({m.metadata.src_node_id: records.owner_label(m) for m in answered
                       if wire.META in m.content})
    per_owner = {}
    for m in answered:
        if wire.METRICS in m.content:
            metrics = m.content.metric_records[wire.METRICS]
            per_owner[records.owner_label(m)] = OwnerRow(  # under DP: no loss, no timings
                eval_loss=float(metrics[wire.EVAL_LOSS]) if wire.EVAL_LOSS in metrics else None,
                eval_reveal_seconds=float(metrics[wire.REVEAL_SECONDS]) if wire.REVEAL_SECONDS in metrics else None)
    # what owners sent back is adopted only from the owner the hand-over asked (the holder knows whom),
    # on the node keyed as that owner
    keyed = [
        m
        for m in answered
        if fed.node_owner.get(m.metadata.src_node_id, records.owner_label(m)) == records.owner_label(m)
    ]
    refused = fed.state.adopt({records.owner_label(m): records.records_to_protected(m.content) for m in keyed})
    if refused:
        progress(f"  round {server_round}: {refused}; the round's signed updates stay pending")
    loss, ex = held_out_loss(fed, server_round, agg, ex)
    return Evaluation(loss, per_owner, ex)


def held_out_loss(fed: Federation, server_round: int, agg: EvalOutcome, ex: Exchange) -> tuple[float | None, Exchange]:
    """The round's token-weighted held-out loss: as the backend revealed it, or (the server cannot
    open the sum: tenseal) from one owner that checks the signed pairs and replies with the mean only
    (the smallest id among those summed: its own pair is in). Its exchange counts in ``ex``."""
    if agg.note:
        progress(f"  round {server_round}: held-out loss not revealed: {agg.note}")
    if agg.pending is None:
        return agg.loss, ex
    nodes = {records.owner_label(m): m.metadata.src_node_id for m in ex.replies if m.has_content()}
    who = min(agg.owners)
    msgs = query_messages(fed.run_config, server_round, fed.layout.digest, wire.QUERY_EVALSUM,
                          {who: agg.pending.blobs}, nodes)
    reveal = exchange(fed.grid, msgs, fed.cfg.sim.round_timeout_s)
    merged = ex.plus(reveal)
    reply = reveal.replies[0] if reveal.replies else None
    metrics = reply.content.metric_records.get(wire.METRICS, {}) if reply and not reply.has_error() else {}
    if wire.EVAL_LOSS not in metrics:
        why = records.error_reason(reply) if reply is not None and reply.has_error() else "no answer"
        progress(f"  round {server_round}: held-out loss not revealed: {who} refused to open the summed pairs ({why})")
        return None, merged
    return float(metrics[wire.EVAL_LOSS]), merged


def round_row(fed: Federation, server_round: int, outcome: TrainOutcome, train_ex: Exchange, ev: Evaluation,
              seconds: float) -> MetricsRow:
    """The round's line in metrics.jsonl."""
    backend = fed.strategy.backend
    counts_seen = server_sees_counts(backend, fed.cfg.dp.name != "off")  # else owners send weight 1
    eval_ex = ev.exchange
    per_owner = {}
    for node, who in outcome.node_to_owner.items():
        m = outcome.accepted.get(who, {})
        evaluated = ev.per_owner.get(who, OwnerRow())
        per_owner[who] = OwnerRow(
            bytes_down=train_ex.bytes_down.get(node, 0) + eval_ex.bytes_down.get(node, 0),
            bytes_up=train_ex.bytes_up.get(node, 0) + eval_ex.bytes_up.get(node, 0),
            bytes_update_up=train_ex.bytes_up.get(node, 0) - outcome.carried_up.get(node, 0),
            num_examples=m.get(wire.NUM_EXAMPLES) if counts_seen else None,
            train_loss=m.get(wire.TRAIN_LOSS),
            update_norm=m.get(wire.UPDATE_NORM),
            eval_loss=evaluated.eval_loss,
            eval_reveal_seconds=evaluated.eval_reveal_seconds,
            **{name: m[key] for key, name in wire.DP_FIELDS.items() if key in m},
        )
    accepted = outcome.accepted.values()
    return MetricsRow(
        round=server_round,
        backend=backend.name,
        dp=fed.cfg.dp.name,
        clients=sorted(outcome.accepted),
        excluded=outcome.excluded,
        evaluated=sorted(ev.per_owner),
        train_loss=float(outcome.metrics[wire.TRAIN_LOSS])
        if outcome.metrics and wire.TRAIN_LOSS in outcome.metrics
        else None,
        eval_loss=ev.loss,
        per_client=per_owner,
        seconds=Seconds(
            round=seconds,
            # owners send no timings under DP: None (not shown in reports and plots)
            train=max((m[wire.TRAIN_SECONDS] for m in accepted if wire.TRAIN_SECONDS in m), default=None),
            protect=max((m[wire.PROTECT_SECONDS] for m in accepted if wire.PROTECT_SECONDS in m), default=None),
            aggregate=outcome.aggregate_seconds,
            reveal=outcome.reveal_seconds
            + max((c.eval_reveal_seconds or 0.0 for c in ev.per_owner.values()), default=0.0),
            evaluate=eval_ex.seconds,
        ),
        max_epsilon=max((c.epsilon for c in per_owner.values() if c.epsilon is not None), default=None),
    )


def record_round(fed: Federation, server_round: int, row: MetricsRow, outcome: TrainOutcome) -> None:
    """Metrics row, round-chain entry, then the checkpoint: the round's commit point. A crash
    before the checkpoint re-runs the round on resume (:func:`resume` drops its row and entry);
    after it, the round is done and logged once."""
    saved = fed.state.arrays()
    append_row(fed.out, row)
    fed.chain_head = round_chain.append(fed.out / round_chain.FILENAME, {
        "round": server_round, "backend": row.backend, "config_hash": fed.config_hash,
        "layout_digest": fed.layout.digest,
        "participants": sorted(outcome.accepted), "excluded": sorted(outcome.excluded),
        "aggregated_digest": round_chain.payload_digest(outcome.combined),
        "epsilon": {who: c.epsilon for who, c in row.per_client.items() if c.epsilon is not None},
        "global_state_hash": round_chain.sha256_of(*(saved[k].tobytes() for k in sorted(saved))),
    })["hash"]
    maybe_die("before-checkpoint", server_round)
    checkpoint.save(fed.out, server_round, saved, fed.layout)
    maybe_die("after-checkpoint", server_round)


def finish(fed: Federation) -> RunSummary:
    """The final adapter (written here where the server holds the global in clear) and the run's summary."""
    cfg, out = fed.cfg, fed.out
    final = fed.state.final_adapter(out, partial(save_adapter, fed))
    signatures.claim_chain_head(out, cfg, fed.chain_head)
    summary = summarize(read_rows(out), backend=fed.strategy.backend.name, dp=cfg.dp.name, seed=cfg.seed,
                        rounds=cfg.rounds, clients=sorted(fed.seen), model_path=cfg.model.path,
                        layout_digest=fed.layout.digest, ledger_head=fed.chain_head, final_adapter=final)
    progress(f"done: eval loss {fmt(summary.initial_eval_loss)} -> {fmt(summary.final_eval_loss)} | "
             f"outputs in {out}")
    return summary


def save_adapter(fed: Federation, vector: np.ndarray, folder: Path) -> None:
    """Write ``vector`` as a PEFT adapter of the federation's model into ``folder``."""
    set_adapter(fed.model, fed.layout.unflatten(np.asarray(vector)))
    fed.model.save_pretrained(folder)
