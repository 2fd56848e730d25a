"""Make a config runnable: build what it asks to be built and check every input up front.

Used by the Hydra runner (before the Simulation Engine starts, so mistakes fail fast) and by the
ServerApp (so ``flwr run .`` works from the pyproject defaults alone). Idempotent. The ServerApp
skips the DP pre-check: owners check their own plan (and refuse clearly), and Opacus' PRV
accountant, which uses BLAS, was seen spinning for minutes in the ServerApp's thread once the
Simulation Engine had started.
"""

from __future__ import annotations

import time
from pathlib import Path

from fedveil.task.data import load_owner_data
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import check_model_dir, load_tokenizer
from fedveil.task.tiny import build_tiny_model
from fedveil.configs.schema import FedveilConfig
from fedveil.core.console import progress
from fedveil.privacy.dp.accounting import plan_noise
from fedveil.privacy.dp.sgd import owner_delta
from fedveil.privacy.policy import FILENAME as POLICY_FILE
from fedveil.privacy.policy import write_policy
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.identity import pin_roster


def prepare(cfg: FedveilConfig, report_data: bool = True, check_dp: bool = True,
            write_policies: bool = False) -> FedveilConfig:
    """Fill in ``output_dir``, ``model.path`` and demo ``data.client_dirs``; check the data.

    ``write_policies`` (the simulation runner, which plays every owner): check the config against
    ``owner_policy`` up front and write it into each simulated owner's state directory, where the
    owners read it; for a backend with a key set-up (tenseal) also make each simulated owner's keys
    and pin one roster of them in every state directory (``roster.json``). The ServerApp never
    writes an owner's policy or roster."""
    out = Path(cfg.output_dir or Path("outputs") / "flwr" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    if not cfg.model.path:
        progress(f"building tiny {cfg.model.tiny.arch} model -> {out / 'base_model'}")
        cfg.model.path = str(build_tiny_model(cfg.model.tiny, out / "base_model", seed=cfg.seed))
    cfg.model.path = str(check_model_dir(cfg.model.path))
    if write_policies:
        cfg.owner_policy.check(cfg, cfg.owner_policy.model_digest)  # the owners check the real model digest
        owners = {f"client_{k}": out / "clients" / f"client_{k}" for k in range(cfg.num_clients)}
        for state in owners.values():
            write_policy(state / POLICY_FILE, cfg.owner_policy)
        if backend_spec(cfg.aggregation.name).key_setup is not None:  # as a deployment would distribute it
            pin_roster(owners, getattr(cfg.aggregation, "key_holder", "") or min(owners))
    if cfg.data.name == "node":
        return cfg  # deployment: owners' data stays on their SuperNodes; they check it themselves
    if cfg.data.name == "demo" and not cfg.data.client_dirs:
        cfg.data.client_dirs = write_demo_data(out / "data", cfg.num_clients, cfg.data.demo_examples, cfg.seed)
        progress(f"demo data for {cfg.num_clients} owners -> {out / 'data'}")
    tokenizer = load_tokenizer(cfg.model.path)
    sizes = set()
    for k, source in enumerate(cfg.data.client_dirs or []):
        data = load_owner_data(source, tokenizer, cfg.data, cfg.seed, one_row_per_record=cfg.dp.name != "off")
        sizes.add(len(data.train) + len(data.eval))
        if report_data:
            progress(f"client_{k}: {len(data.train)} train / {len(data.eval)} held-out examples from {source}")
    for size in sorted(sizes) if check_dp else ():
        check_dp_plan(cfg, size)
    return cfg


def check_dp_plan(cfg: FedveilConfig, num_examples: int) -> None:
    """Refuse at start a DP target that no allowed noise level reaches in the planned steps.

    (Owners check again against their own ledgers; this catches a bad config before any work.)
    """
    dp = cfg.dp
    if dp.name != "sample_level":
        return
    if dp.noise_multiplier is not None:
        owner_delta(dp, num_examples)
        return
    plan_noise(dp.target_epsilon, owner_delta(dp, num_examples), dp.sample_rate,
               cfg.rounds * cfg.train.local_steps, dp.accountant, max_noise=dp.max_noise_multiplier)
