"""The coordinator's loop: rounds of train -> aggregate -> evaluate, with outputs each round.

Like Flower's ``Strategy.start`` but it also evaluates the starting adapter (round 0), writes a
metrics row and a checkpoint after every round, resumes from the latest checkpoint, and prints
progress a person can follow.
"""

from __future__ import annotations

import json
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
from fedveil.core.errors import UserError
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.secagg import server_backend
from fedveil.server import checkpoint, round_ledger
from fedveil.server.global_state import ClearGlobal, SealedGlobal
from fedveil.server.key_setup import setup_keys
from fedveil.server.report import append_metrics, drop_rows_after, fmt, progress, summarize
from fedveil.server.strategy import SecureAggregation, client_label


# What each client reports of its DP accounting (its ledger stays with it).
DP_FIELDS = {"dp-noise-multiplier": "noise_multiplier", "dp-sample-rate": "sample_rate", "dp-steps": "steps",
             "dp-delta": "delta", "dp-epsilon": "epsilon", "dp-budget": "epsilon_budget"}


def payload_digest(combined) -> str | None:
    """SHA-256 over what the backend aggregated (clear arrays or ciphertext bytes), in name order."""
    if combined is None:
        return None
    parts = [combined.arrays[k].tobytes() for k in sorted(combined.arrays)]
    parts += [combined.blobs[k] for k in sorted(combined.blobs)]
    return round_ledger.sha256_of(*parts)


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


def evaluate_round(strategy: SecureAggregation, grid: Grid, server_round: int, state, base_config: dict,
                   timeout: float, extra: dict | None = None) -> tuple[float | None, dict[str, dict], Exchange]:
    config = ConfigRecord({**base_config, **(extra or {})})
    ex = exchange(grid, list(strategy.configure_evaluate(server_round, state.record(), config, grid)), timeout)
    agg = strategy.aggregate_evaluate(server_round, ex.replies)
    per_client = {}
    for m in ex.replies:
        if m.has_content() and not m.has_error() and wire.METRICS in m.content:
            metrics = m.content.metric_records[wire.METRICS]
            per_client[client_label(m)] = {"eval_loss": float(metrics["eval-loss"]),
                                           "eval_reveal_seconds": float(metrics.get("reveal-seconds", 0.0))}
    state.after_evaluate(ex.replies)
    return (float(agg["eval-loss"]) if agg else None), per_client, ex


def start_state(cfg: FedveilConfig, grid: Grid, layout: AdapterLayout, initial: np.ndarray, base_config: dict, out: Path):
    """The backend the server uses and its starting global state (keys are set up here)."""
    if cfg.aggregation.name == "tenseal":
        progress("tenseal: key set-up (owners exchange X25519 keys; the server relays sealed boxes)")
        public, owners = setup_keys(grid, base_config, cfg.num_clients, cfg.aggregation.key_holder,
                                    cfg.sim.round_timeout_s)
        progress(f"tenseal: {len(owners)} owners keyed; the server holds the public context only")
        return server_backend(cfg.aggregation, layout.size, public=public), SealedGlobal(), sorted(owners.values())
    if cfg.aggregation.name == "crypten":
        from fedveil.privacy.secagg.crypten_party import call

        addresses = cfg.aggregation.party_addresses or []
        if len(addresses) != cfg.aggregation.parties:
            raise UserError("aggregation.party_addresses must list every aggregator party (HOST:PORT each)")
        keys = [call(a, "PublicKey", b"", timeout=30).hex() for a in addresses]
        base_config[wire.PARTY_KEYS] = ",".join(keys)
        progress(f"crypten: {len(keys)} aggregator parties reachable; owners seal one share to each")
    return server_backend(cfg.aggregation, layout.size), ClearGlobal(initial), []


def run_federation(grid: Grid, cfg: FedveilConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_lora_model(cfg.model, seed=cfg.seed, device=torch.device("cpu"))  # the server never trains
    layout = AdapterLayout.of(get_adapter(model))
    base_config = to_run_config(cfg)
    timeout = cfg.sim.round_timeout_s
    backend, state, owners = start_state(cfg, grid, layout, layout.flatten(get_adapter(model)), base_config, out)
    base = FedAvg(min_train_nodes=cfg.num_clients, min_evaluate_nodes=cfg.num_clients,
                  min_available_nodes=cfg.num_clients, arrayrecord_key=wire.GLOBAL, configrecord_key=wire.CONFIG)
    strategy = SecureAggregation(base, backend, layout)

    first, seen, head = 1, set(), None
    config_hash = round_ledger.sha256_of(json.dumps(base_config, sort_keys=True).encode())
    resumed = checkpoint.latest(out, layout) if cfg.resume else None
    if resumed:
        first, state = resumed[0] + 1, type(state).restore(resumed[1])
        drop_rows_after(out, resumed[0])
        progress(f"resuming after round {resumed[0]} from {out / 'checkpoints'}")
    progress(f"{cfg.num_clients} clients x {cfg.rounds} rounds | backend={backend.name} dp={cfg.dp.name} | "
             f"adapter {layout.size:,} values ({layout.digest[:12]})")

    if first == 1:
        loss, per_client, ex = evaluate_round(strategy, grid, 0, state, base_config, timeout)
        append_metrics(out, {"round": 0, "backend": backend.name, "eval_loss": loss, "clients": sorted(per_client),
                             "per_client": per_client, "seconds": {"round": 0.0, "evaluate": ex.seconds}})
        progress(f"round 0/{cfg.rounds} | eval loss {fmt(loss)} (starting adapter)")

    for rnd in range(first, cfg.rounds + 1):
        start = time.perf_counter()
        msgs = list(strategy.configure_train(rnd, state.record(), ConfigRecord(dict(base_config)), grid))
        ex = exchange(grid, msgs, timeout)
        new_arrays, train_metrics = strategy.aggregate_train(rnd, ex.replies)
        log = strategy.last_train
        state.after_train(new_arrays, log.combined)
        seen.update(log.accepted)
        extra = {}
        if state.sealed:  # one owner re-encrypts the new global for the server to hold; the last round ends it
            extra[wire.REENCRYPT_KEY] = min(log.accepted or owners or [""])
            extra[wire.FINAL_KEY] = rnd == cfg.rounds
        eval_loss, eval_clients, eval_ex = evaluate_round(strategy, grid, rnd, state, base_config, timeout, extra)
        per_client = {}
        for node, who in log.node_to_client.items():
            m = log.accepted.get(who, {})
            per_client[who] = {
                "bytes_down": ex.bytes_down.get(node, 0) + eval_ex.bytes_down.get(node, 0),
                "bytes_up": ex.bytes_up.get(node, 0) + eval_ex.bytes_up.get(node, 0),
                "bytes_update_up": ex.bytes_up.get(node, 0),
                "num_examples": m.get(wire.WEIGHT_KEY) if backend.server_sees_updates else None, "train_loss": m.get("train-loss"),
                **({"update_norm": m["update-norm"]} if "update-norm" in m else {}),
                **eval_clients.get(who, {}),
                **{name: m[key] for key, name in DP_FIELDS.items() if key in m},
            }
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
                "aggregate": log.aggregate_seconds,
                "reveal": log.reveal_seconds + max((c.get("eval_reveal_seconds", 0.0) for c in eval_clients.values()), default=0.0),
                "evaluate": eval_ex.seconds,
            },
        }
        row["max_epsilon"] = max((c["epsilon"] for c in per_client.values() if "epsilon" in c), default=None)
        saved = state.checkpoint()
        checkpoint.save(out, rnd, saved, layout)
        append_metrics(out, row)
        head = round_ledger.append(out / round_ledger.FILENAME, {
            "round": rnd, "backend": backend.name, "config_hash": config_hash, "layout_digest": layout.digest,
            "participants": sorted(log.accepted), "excluded": sorted(log.excluded),
            "aggregated_digest": payload_digest(log.combined),
            "epsilon": {who: c["epsilon"] for who, c in per_client.items() if "epsilon" in c},
            "global_state_hash": round_ledger.sha256_of(*(saved[k].tobytes() for k in sorted(saved))),
        })["hash"]
        max_eps = row["max_epsilon"]
        note = f" | max eps {max_eps:.3f}" if max_eps is not None else ""
        note += f" | excluded {sorted(log.excluded)}" if log.excluded else ""
        progress(f"round {rnd}/{cfg.rounds} | train loss {fmt(row['train_loss'])} | eval loss {fmt(eval_loss)} | "
                 f"{len(log.accepted)} clients | {row['seconds']['round']:.1f} s{note}")
        for who, reason in log.excluded.items():
            progress(f"  excluded {who}: {reason}")

    extra_summary = {}
    if state.sealed:
        extra_summary["final_adapter"] = "written by each data owner into its state directory (clients/<id>/final_adapter/)"
    else:
        set_adapter(model, layout.unflatten(state.vector))
        model.save_pretrained(out / "final_adapter")
        extra_summary["final_adapter"] = str(out / "final_adapter")
    summary = summarize(out, {"backend": backend.name, "dp": cfg.dp.name, "seed": cfg.seed, "rounds": cfg.rounds,
                              "clients": sorted(seen), "model_path": cfg.model.path, "layout_digest": layout.digest,
                              "ledger_head": head, **extra_summary})
    progress(f"done: eval loss {fmt(summary['initial_eval_loss'])} -> {fmt(summary['final_eval_loss'])} | "
             f"outputs in {out}")
    return summary
