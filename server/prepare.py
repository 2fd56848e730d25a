"""Make a config runnable: build what it asks to be built and check every input up front.

Used by the Hydra runner (before the Simulation Engine starts, so mistakes fail fast) and by the
ServerApp (so ``flwr run .`` works from the pyproject defaults alone). Idempotent. The ServerApp
skips the DP pre-check: owners check their own plan (and refuse clearly), and Opacus' PRV
accountant, which uses BLAS, was seen spinning for minutes in the ServerApp's thread once the
Simulation Engine had started.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from fedveil.core.disk import owner_id, owner_state_dir
from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.task.data import data_files, load_owner_data
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import (check_model_dir, check_tokenizer_files, get_adapter, load_lora_skeleton,
                                load_tokenizer, resolve_device)
from fedveil.task.tiny import build_tiny_model
from fedveil.configs.schema import FedveilConfig
from fedveil.core.console import progress
from fedveil.privacy.dp import owner_level_plan
from fedveil.privacy.dp.accounting import plan_noise
from fedveil.privacy.dp.sgd import owner_delta
from fedveil.privacy.policy import FILENAME as POLICY_FILE
from fedveil.privacy.policy import write_policy
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.identity import pin_roster
from fedveil.server.checkpoint import check_resumable


def prepare(cfg: FedveilConfig, report_data: bool = True, check_dp: bool = True,
            write_policies: bool = False) -> FedveilConfig:
    """Fill in ``output_dir``, ``model.path`` and demo ``data.client_dirs``; check the data (and, with
    ``resume=true``, that ``output_dir`` holds a run to resume).

    ``write_policies`` (the simulation runner, which plays every owner): check the config against
    ``owner_policy`` up front and write it into each simulated owner's state directory, where the
    owners read it; also make each simulated owner's keys and pin one roster of them in every state
    directory (``roster.json``: tenseal's key set-up and every owner's signed result use it). The ServerApp never
    writes an owner's policy or roster."""
    out = Path(cfg.output_dir or Path("outputs") / "flwr" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    if cfg.resume:  # before anything is written there
        check_resumable(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    if not cfg.model.path:
        progress(f"building tiny {cfg.model.tiny.arch} model -> {out / 'base_model'}")
        cfg.model.path = str(build_tiny_model(cfg.model.tiny, out / "base_model", seed=cfg.seed))
    cfg.model.path = str(check_model_dir(cfg.model.path))
    if cfg.dp.name == "owner_level":  # its public gamma and mu, once, for every owner (each checks them)
        size = sum(v.size for v in get_adapter(load_lora_skeleton(cfg.model, seed=cfg.seed)).values())
        spec = backend_spec(cfg.aggregation.name)
        domain = spec.integer_domain(cfg.aggregation)
        bound = owner_level_plan.resolve(cfg.dp, size, cfg.participants, cfg.rounds, domain)
        cfg.aggregation.norm_bound = bound
        if spec.integer_values is not None:  # tenseal: its owners' integers at step 1, the global's bound
            spec.integer_values(cfg.aggregation, bound, cfg.dp.gamma, cfg.dp.sample_rate, cfg.rounds)
    if write_policies:
        cfg.owner_policy.check(cfg, cfg.owner_policy.model_digest)  # the owners check the real model digest
        owners = {owner_id(k): owner_state_dir(out, k) for k in range(cfg.num_clients)}
        for state in owners.values():
            write_policy(state / POLICY_FILE, cfg.owner_policy)
        # as a deployment would distribute it: tenseal keys the federation under it, and every backend's
        # owners sign the final adapter under it (privacy/provenance.py)
        pin_roster(owners, getattr(cfg.aggregation, "key_holder", "") or min(owners))
    if cfg.data.name == "node":
        return cfg  # deployment: owners' data stays on their SuperNodes; they check it themselves
    if cfg.data.name == "demo" and not cfg.data.client_dirs:
        cfg.data.client_dirs = write_demo_data(out / "data", cfg.num_clients, cfg.data.demo_examples, cfg.seed)
        progress(f"demo data for {cfg.num_clients} owners -> {out / 'data'}")
    tokenizer = load_tokenizer(cfg.model.path)
    owners = []
    for k, source in enumerate(cfg.data.client_dirs or []):
        data = load_owner_data(source, tokenizer, cfg.data, cfg.seed, one_row_per_record=cfg.dp.name != "off")
        owners.append({"owner": owner_id(k), "train": len(data.train), "held_out": len(data.eval),
                       "source": str(source)})
    if report_data:
        report_owner_data(owners, out)
    for size in sorted({o["train"] + o["held_out"] for o in owners}) if check_dp else ():
        planned = check_dp_plan(cfg, size)
        if planned is not None:  # offered to the owners as dp.noise_hint: each checks it before use (run_noise)
            cfg.dp.noise_hint = planned
    return cfg


OWNER_DATA_FILE = "owners_data.jsonl"  # the runner's per-owner data counts (simulation: it plays every owner)
CONSOLE_OWNERS = 10  # up to this many owners get a console line each; more get one summary line


def report_owner_data(owners: list[dict], out: Path) -> None:
    """Each owner's example counts into ``<out>/owners_data.jsonl``; on the console a line per owner
    for a few owners, one summary line for many."""
    atomic_write_bytes(out / OWNER_DATA_FILE, "".join(json.dumps(o, sort_keys=True) + "\n" for o in owners).encode())
    if len(owners) <= CONSOLE_OWNERS:
        for o in owners:
            progress(f"{o['owner']}: {o['train']} train / {o['held_out']} held-out examples from {o['source']}")
        return
    train = [o["train"] for o in owners]
    progress(f"{len(owners)} owners: {min(train)} / {statistics.median(train):g} / {max(train)} train examples "
             f"(min / median / max), {sum(o['held_out'] for o in owners)} held-out in all; per owner: "
             f"{out / OWNER_DATA_FILE}")


def check_inputs(cfg: FedveilConfig) -> None:
    """The cheap checks of what a run reads, for every job of a sweep before the first starts:
    the model directory and its tokenizer files, each owner's data path. (``prepare`` reads them.)"""
    if cfg.model.path:
        check_tokenizer_files(cfg.model.path)
    if cfg.data.name != "node":
        for source in cfg.data.client_dirs or []:
            data_files(source)


def check_devices(cfg: FedveilConfig) -> None:
    """Simulation: the owners train on this machine, so a device it lacks is refused here, once,
    rather than by every owner in every round. (On a Ray cluster, ``sim.ray_address``, they train
    on its nodes: nothing to check here.)"""
    if cfg.sim.ray_address:
        return
    resolve_device(cfg.model.device)
    if cfg.sim.client_gpus > 0 and not torch.cuda.is_available():
        raise UserError(f"sim.client_gpus={cfg.sim.client_gpus:g} but no CUDA device is visible, so no simulated owner "
                        "could ever be scheduled: set sim.client_gpus=0")


def check_dp_plan(cfg: FedveilConfig, num_examples: int) -> float | None:
    """Refuse at start a DP target that no allowed noise level reaches in the planned steps; the
    planned noise multiplier (None: DP off, or the noise is given).

    (Owners check again against their own ledgers; this catches a bad config before any work.)
    """
    dp = cfg.dp
    if dp.name != "sample_level":
        return None
    if dp.noise_multiplier is not None:
        owner_delta(dp, num_examples)
        return None
    return plan_noise(dp.target_epsilon, owner_delta(dp, num_examples), dp.sample_rate,
                      cfg.rounds * cfg.train.local_steps, dp.accountant, max_noise=dp.max_noise_multiplier)
