"""The coordinator's loop: rounds of train -> aggregate -> evaluate, with outputs each round.

Like Flower's ``Strategy.start`` but it also evaluates the starting adapter (round 0), writes a
metrics row and a checkpoint after every round, resumes from the latest checkpoint, and prints
progress a person can follow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedveil.client.model import get_adapter, load_lora_model, set_adapter
from fedveil.configs.schema import FedveilConfig, to_run_config
from fedveil.core import wire
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.secagg import backend_entry
from fedveil.server import checkpoint
from fedveil.server.report import append_metrics, drop_rows_after, fmt, progress, summarize
from fedveil.server.strategy import SecureAggregation, client_label


# What each client reports of its DP accounting (its ledger stays with it).
DP_FIELDS = {"dp-noise-multiplier": "noise_multiplier", "dp-sample-rate": "sample_rate", "dp-steps": "steps",
             "dp-delta": "delta", "dp-epsilon": "epsilon", "dp-budget": "epsilon_budget"}


@dataclass
class Exchange:
    """One send-and-receive: the replies and the bytes each client moved."""

    replies: list[Message]
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]
    seconds: float


def exchange(grid: Grid, messages: list[Message], timeout: float) -> Exchange:
    down = {m.metadata.dst_node_id: wire.content_nbytes(m.content) for m in messages}
    start = time.perf_counter()
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    up = {m.metadata.src_node_id: wire.content_nbytes(m.content) for m in replies if m.has_content()}
    return Exchange(replies, down, up, time.perf_counter() - start)


def evaluate_round(strategy: SecureAggregation, grid: Grid, server_round: int, vector: np.ndarray,
                   base_config: dict, timeout: float) -> tuple[float | None, dict[str, dict], float]:
    ex = exchange(grid, list(strategy.configure_evaluate(server_round, wire.vector_record(vector),
                                                         ConfigRecord(dict(base_config)), grid)), timeout)
    agg = strategy.aggregate_evaluate(server_round, ex.replies)
    per_client = {client_label(m): {"eval_loss": float(m.content.metric_records[wire.METRICS]["eval-loss"])}
                  for m in ex.replies if m.has_content() and not m.has_error() and wire.METRICS in m.content}
    return (float(agg["eval-loss"]) if agg else None), per_client, ex.seconds


def run_federation(grid: Grid, cfg: FedveilConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend_cls = backend_entry(cfg.aggregation.name)[1]
    model = load_lora_model(cfg.model, seed=cfg.seed, device=torch.device("cpu"))  # the server never trains
    layout = AdapterLayout.of(get_adapter(model))
    vector = layout.flatten(get_adapter(model))
    backend = backend_cls(cfg.aggregation, size=layout.size)
    base = FedAvg(min_train_nodes=cfg.num_clients, min_evaluate_nodes=cfg.num_clients,
                  min_available_nodes=cfg.num_clients, arrayrecord_key=wire.GLOBAL, configrecord_key=wire.CONFIG)
    strategy = SecureAggregation(base, backend, layout)
    base_config = to_run_config(cfg)
    timeout = cfg.sim.round_timeout_s

    first, seen = 1, set()
    resumed = checkpoint.latest(out, layout) if cfg.resume else None
    if resumed:
        first, vector = resumed[0] + 1, resumed[1]
        drop_rows_after(out, resumed[0])
        progress(f"resuming after round {resumed[0]} from {out / 'checkpoints'}")
    progress(f"{cfg.num_clients} clients x {cfg.rounds} rounds | backend={backend.name} dp={cfg.dp.name} | "
             f"adapter {layout.size:,} values ({layout.digest[:12]})")

    if first == 1:
        loss, per_client, secs = evaluate_round(strategy, grid, 0, vector, base_config, timeout)
        append_metrics(out, {"round": 0, "backend": backend.name, "eval_loss": loss, "clients": sorted(per_client),
                             "per_client": per_client, "seconds": {"round": 0.0, "evaluate": secs}})
        progress(f"round 0/{cfg.rounds} | eval loss {fmt(loss)} (starting adapter)")

    for rnd in range(first, cfg.rounds + 1):
        start = time.perf_counter()
        msgs = list(strategy.configure_train(rnd, wire.vector_record(vector), ConfigRecord(dict(base_config)), grid))
        ex = exchange(grid, msgs, timeout)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, ex.replies)
        log = strategy.last_train
        if new_arrays is not None:
            vector = wire.record_vector(new_arrays)
        eval_loss, eval_clients, eval_secs = evaluate_round(strategy, grid, rnd, vector, base_config, timeout)
        per_client = {}
        for node, who in log.node_to_client.items():
            m = log.accepted.get(who, {})
            per_client[who] = {
                "bytes_down": ex.bytes_down.get(node, 0), "bytes_up": ex.bytes_up.get(node, 0),
                "num_examples": m.get(wire.WEIGHT_KEY), "train_loss": m.get("train-loss"),
                "update_norm": m.get("update-norm"), **eval_clients.get(who, {}),
                **{name: m[key] for key, name in DP_FIELDS.items() if key in m},
            }
        seen.update(log.accepted)
        accepted = log.accepted.values()
        row = {
            "round": rnd, "backend": backend.name, "dp": cfg.dp.name,
            "clients": sorted(log.accepted), "excluded": log.excluded,
            "train_loss": float(train_metrics["train-loss"]) if train_metrics else None,
            "eval_loss": eval_loss, "per_client": per_client,
            "seconds": {
                "round": time.perf_counter() - start,
                "train": max((m["train-seconds"] for m in accepted), default=0.0),
                "protect": max((m["protect-seconds"] for m in accepted), default=0.0),
                "aggregate": log.aggregate_seconds, "reveal": log.reveal_seconds, "evaluate": eval_secs,
            },
        }
        row["max_epsilon"] = max((c["epsilon"] for c in per_client.values() if "epsilon" in c), default=None)
        checkpoint.save(out, rnd, vector, layout)
        append_metrics(out, row)
        max_eps = row["max_epsilon"]
        note = f" | max eps {max_eps:.3f}" if max_eps is not None else ""
        note += f" | excluded {sorted(log.excluded)}" if log.excluded else ""
        progress(f"round {rnd}/{cfg.rounds} | train loss {fmt(row['train_loss'])} | eval loss {fmt(eval_loss)} | "
                 f"{len(log.accepted)} clients | {row['seconds']['round']:.1f} s{note}")
        for who, reason in log.excluded.items():
            progress(f"  excluded {who}: {reason}")

    set_adapter(model, layout.unflatten(vector))
    model.save_pretrained(out / "final_adapter")
    summary = summarize(out, {"backend": backend.name, "dp": cfg.dp.name, "seed": cfg.seed, "rounds": cfg.rounds,
                              "clients": sorted(seen),
                              "model_path": cfg.model.path, "layout_digest": layout.digest,
                              "final_adapter": str(out / "final_adapter")})
    progress(f"done: eval loss {fmt(summary['initial_eval_loss'])} -> {fmt(summary['final_eval_loss'])} | "
             f"outputs in {out}")
    return summary
