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
from fedveil.privacy.dp.sgd import owner_delta, sample_rate


def prepare(cfg: FedveilConfig, report_data: bool = True, check_dp: bool = True) -> FedveilConfig:
    """Fill in ``output_dir``, ``model.path`` and demo ``data.client_dirs``; check the data."""
    out = Path(cfg.output_dir or Path("outputs") / "flwr" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(out)
    if not cfg.model.path:
        progress(f"building tiny {cfg.model.tiny.arch} model -> {out / 'base_model'}")
        cfg.model.path = str(build_tiny_model(cfg.model.tiny, out / "base_model", seed=cfg.seed))
    cfg.model.path = str(check_model_dir(cfg.model.path))
    if cfg.data.name == "node":
        return cfg  # deployment: owners' data stays on their SuperNodes; they check it themselves
    if cfg.data.name == "demo" and not cfg.data.client_dirs:
        cfg.data.client_dirs = write_demo_data(out / "data", cfg.num_clients, cfg.data.demo_examples, cfg.seed)
        progress(f"demo data for {cfg.num_clients} owners -> {out / 'data'}")
    tokenizer = load_tokenizer(cfg.model.path)
    sizes = set()
    for k, source in enumerate(cfg.data.client_dirs or []):
        data = load_owner_data(source, tokenizer, cfg.data, cfg.seed)
        sizes.add(len(data.train))
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
    if dp.name != "sample_level" or dp.noise_multiplier is not None:
        return
    plan_noise(dp.target_epsilon, owner_delta(dp, num_examples), sample_rate(cfg.train.batch_size, num_examples),
               cfg.rounds * cfg.train.local_steps, dp.accountant, max_noise=dp.max_noise_multiplier)
