"""Sample-level differential privacy of each owner's training: Opacus DP-SGD on LoRA.

``dp=sample_level``: every local step is a DP-SGD step (Poisson sampling with rate ``q``, each
example's gradient clipped to ``max_grad_norm`` in L2, Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` added to the sum). Only LoRA parameters are trainable, so
only they get gradients and noise; the frozen base model is public.

What epsilon means here: for each data owner, adding or removing any one of its training
examples changes the distribution of *everything the owner ever releases* (all updates, all
rounds, all runs recorded in its ledger) by at most ``(epsilon, delta)``. It holds whatever the
aggregation backend leaks, and it holds only if

- the per-example loss depends on that example alone (``fedveil.task.train.per_example_loss``),
- the owner's epsilon ledger is kept (``privacy/dp/epsilon_ledger.py``), and
- sampling and noise come from torch's PRNG: Opacus' ``secure_mode`` (a CSPRNG) is not enabled,
  as torchcsprng is not maintained for torch 2.13; against an adversary that can predict torch's
  Mersenne Twister the guarantee is weaker.

``dp=off`` trains without DP: the update a backend protects is the owner's exact delta.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from fedveil.core.errors import UserError
from fedveil.privacy.dp.accounting import ACCOUNTANTS

# Per-sample gradient engines that work with our per-example loss. Opacus' "ghost" clipping needs
# its own criterion wrapper and only pays off in memory for full fine-tuning, not for LoRA.
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")


@dataclass
class NoDPConfig:
    name: str = "off"


@dataclass
class SampleLevelDPConfig:
    """DP-SGD on every owner. ``target_epsilon`` covers the owner's whole participation."""

    name: str = "sample_level"
    target_epsilon: float = 8.0
    delta: Optional[float] = None  # None: min(1e-5, 0.1 / n_k), below 1/n_k for every owner
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    noise_multiplier: Optional[float] = None  # None: derived from the target over the planned steps
    max_noise_multiplier: float = 100.0  # a target needing more noise is refused as unreachable
    poisson_sampling: bool = True
    grad_sample_mode: str = "hooks"
    max_physical_batch_size: int = 0  # 0: no limit; else BatchMemoryManager splits logical batches

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise UserError(f"dp.target_epsilon must be > 0, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise UserError(f"dp.delta must be in (0, 1), got {self.delta}; typical values are below 1/n (e.g. 1e-5)")
        if not self.max_grad_norm > 0:
            raise UserError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise UserError(f"dp.accountant '{self.accountant}' is unknown: choose one of {list(ACCOUNTANTS)}")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise UserError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise UserError(f"dp.grad_sample_mode '{self.grad_sample_mode}' is unknown: choose one of {list(GRAD_SAMPLE_MODES)}")
        if self.max_physical_batch_size < 0:
            raise UserError(f"dp.max_physical_batch_size must be >= 0, got {self.max_physical_batch_size}")


DP_MODES = {"off": NoDPConfig, "sample_level": SampleLevelDPConfig}


def owner_delta(cfg: SampleLevelDPConfig, num_examples: int) -> float:
    return cfg.delta if cfg.delta is not None else min(1e-5, 0.1 / num_examples)


def sample_rate(batch_size: int, num_examples: int) -> float:
    """Poisson rate as Opacus derives it from a loader: 1 / number of batches per epoch."""
    return 1.0 / math.ceil(num_examples / min(batch_size, num_examples))


@contextmanager
def private_training(model, optimizer, loader, cfg: SampleLevelDPConfig, noise_multiplier: float) -> Iterator:
    """Yield ``(model, optimizer, loader)`` wrapped for DP-SGD; remove Opacus' hooks on exit.

    The model must already be on its device with LoRA attached (opacus#820).
    """
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    model.train()  # Opacus refuses a model in eval mode
    engine = PrivacyEngine(accountant=cfg.accountant)
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=cfg.max_grad_norm, poisson_sampling=cfg.poisson_sampling,
        grad_sample_mode=cfg.grad_sample_mode, loss_reduction="mean",
    )
    try:
        if cfg.max_physical_batch_size:
            with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=cfg.max_physical_batch_size,
                                    optimizer=dp_optimizer) as physical:
                yield dp_model, dp_optimizer, physical
        else:
            yield dp_model, dp_optimizer, dp_loader
    finally:
        dp_model._close()  # hooks off: the cached model is reused next round
