"""Sample-level differential privacy of each owner's training: Opacus DP-SGD on LoRA.

``dp=sample_level``: every local step is a DP-SGD step (Poisson sampling with the public rate
``dp.sample_rate``, each record's gradient clipped to ``max_grad_norm`` in L2, Gaussian noise of
standard deviation ``noise_multiplier * max_grad_norm`` added to the sum). Only LoRA parameters
are trainable, so only they get gradients and noise; the frozen base model is public. One record
(a JSONL object, a .txt paragraph) is one privacy unit: under DP it is one training row
(truncated to ``data.max_length``, never split).

What epsilon means here: for each data owner, adding or removing any one of its records (training
or held-out) changes the distribution of *everything the owner releases to the coordinator*
(all updates, all rounds, all runs recorded in its epsilon ledger) by at most ``(epsilon,
delta)``. Under DP an owner releases only its DP-SGD updates (inside the backend's protection)
and values computed from public ones (its DP accounting record: sigma, q, steps, delta, epsilon,
budget; timings and bytes); no loss, count or norm of its data leaves it. It holds whatever the
aggregation backend leaks, against a coordinator that knows the whole config, and only if

- the per-example loss depends on that example alone (``fedveil.task.train.per_example_loss``),
- the owner's epsilon ledger is kept (``privacy/dp/epsilon_ledger.py``), and
- the noise and the batches are secret: they come from the OS CSPRNG, never from ``seed``
  (``privacy/dp/randomness.py``, which also says what is not covered), and
- a non-finite per-example gradient counts as zero (:func:`zero_nonfinite_examples`): clipping
  and noise cannot hide a NaN, so without it a global crafted to overflow on some records would
  make whether the update is finite tell whether such a record was sampled.

``dp=off`` trains without DP: the update a backend protects is the owner's exact delta.
"""

from __future__ import annotations

import math
import types
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional

import torch

from fedveil.core.errors import UserError
from fedveil.privacy.dp.accounting import ACCOUNTANTS
from fedveil.privacy.dp.owner_level_plan import OwnerLevelDPConfig
from fedveil.privacy.dp.randomness import secret_poisson_loader, use_secret_noise
from fedveil.task.model import checkpoint_recompute

# Per-sample gradient engines that work with our per-example loss. Opacus' "ghost" clipping needs
# its own criterion wrapper and only pays off in memory for full fine-tuning, not for LoRA.
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
# Those that work with gradient checkpointing: their forward hooks are paused while checkpointed
# layers recompute (``_recording_paused``). ``ew`` (ExpandedWeights) swaps the parameters only for
# the forward pass, so a recompute in backward sees others and torch refuses it.
CHECKPOINTING_GRAD_SAMPLE_MODES = ("hooks", "functorch")


@dataclass
class NoDPConfig:
    name: str = "off"


@dataclass
class SampleLevelDPConfig:
    """DP-SGD on every owner. ``target_epsilon`` covers the owner's whole participation."""

    name: str = "sample_level"
    target_epsilon: float = 8.0
    delta: float = 1e-5  # public; every owner refuses a delta >= 1 / its number of records
    sample_rate: float = 0.05  # public Poisson rate q (never derived from an owner's data size)
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    noise_multiplier: Optional[float] = None  # None: derived from the target over the planned steps
    max_noise_multiplier: float = 100.0  # a target needing more noise is refused as unreachable
    # The runner's own plan of sigma for a fresh owner (server/prepare.py sets it; never needed): an
    # owner takes it only after checking it is exactly what it would plan itself (two epsilon
    # evaluations instead of the ~13 of planning), else plans itself. Never trusted: see run_noise.
    noise_hint: Optional[float] = None
    poisson_sampling: bool = True
    grad_sample_mode: str = "hooks"
    max_physical_batch_size: int = 0  # 0: no limit; else BatchMemoryManager splits logical batches

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise UserError(f"dp.target_epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise UserError(f"dp.delta must be in (0, 1), got {self.delta}; typical values are below 1/n (e.g. 1e-5)")
        if not 0 < self.sample_rate <= 1:
            raise UserError(f"dp.sample_rate must be in (0, 1], got {self.sample_rate}; e.g. 0.05")
        if not self.max_grad_norm > 0:
            raise UserError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise UserError(f"dp.accountant '{self.accountant}' is unknown: choose one of {list(ACCOUNTANTS)}")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise UserError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise UserError(
                f"dp.grad_sample_mode '{self.grad_sample_mode}' is unknown: choose one of {list(GRAD_SAMPLE_MODES)}"
            )
        if self.max_physical_batch_size < 0:
            raise UserError(f"dp.max_physical_batch_size must be >= 0, got {self.max_physical_batch_size}")


DP_MODES = {"off": NoDPConfig, "sample_level": SampleLevelDPConfig, "owner_level": OwnerLevelDPConfig}


def check_checkpointing(grad_sample_mode: str) -> None:
    """Refuse, in one line, a per-sample gradient engine that cannot run through checkpointed layers."""
    if grad_sample_mode not in CHECKPOINTING_GRAD_SAMPLE_MODES:
        raise UserError(
            f"dp.grad_sample_mode={grad_sample_mode} does not work with model.gradient_checkpointing=true: "
            f"use dp.grad_sample_mode={'|'.join(CHECKPOINTING_GRAD_SAMPLE_MODES)}, or turn checkpointing off"
        )


def owner_delta(cfg: SampleLevelDPConfig, num_records: int) -> float:
    """The public ``dp.delta``, refused unless below 1/n (a delta of 1/n lets one record out in clear)."""
    if not cfg.delta < 1.0 / num_records:
        raise UserError(f"dp.delta={cfg.delta:g} is not below 1/n = {1.0 / num_records:.3g} for this owner's "
                        f"{num_records} records; the owner refuses: lower dp.delta")
    return cfg.delta


def poisson_loader(examples: list, collate_fn, cfg: SampleLevelDPConfig):
    """The owner's DP batches: Poisson samples at the public ``dp.sample_rate``, drawn from the OS
    CSPRNG. Refuses ``dp.poisson_sampling=false``: the accountant assumes Poisson sampling."""
    if not cfg.poisson_sampling:
        raise UserError("dp.poisson_sampling=false: the accountant assumes Poisson sampling; the owner refuses")
    return secret_poisson_loader(examples, cfg.sample_rate, collate_fn)


@contextmanager
def private_training(model, optimizer, loader, cfg: SampleLevelDPConfig, noise_multiplier: float) -> Iterator:
    """Yield ``(model, optimizer, loader)`` wrapped for DP-SGD; remove Opacus' hooks on exit.

    The noise is Gaussian from the OS CSPRNG (``randomness.py``). ``loader`` is used as given:
    owners pass :func:`poisson_loader` (secret Poisson batches, what the accountant assumes);
    tests and benchmarks may pass a fixed loader to compare with plain SGD.
    The model must already be on its device with LoRA attached (opacus#820). With gradient
    checkpointing (``model.gradient_checkpointing``), Opacus' hooks are paused while checkpointed
    layers recompute, so each layer's input is recorded once and the per-sample gradients are those
    of the same model without checkpointing (``tests/privacy/test_dp_checkpointing.py``).
    """
    from opacus import PrivacyEngine  # lazy: opacus (seconds); configs import us
    from opacus.utils.batch_memory_manager import BatchMemoryManager  # lazy: opacus (seconds); configs import us

    recompute = checkpoint_recompute(model)
    if recompute is not None:
        check_checkpointing(cfg.grad_sample_mode)
    model.train()  # Opacus refuses a model in eval mode
    engine = PrivacyEngine(accountant=cfg.accountant)
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=cfg.max_grad_norm, poisson_sampling=False,  # sampling is the loader's (poisson_loader)
        grad_sample_mode=cfg.grad_sample_mode, loss_reduction="mean",
    )
    use_secret_noise(dp_optimizer)
    zero_nonfinite_examples(dp_optimizer)
    if recompute is not None:
        recompute.pause = partial(_recording_paused, dp_model)
    try:
        if cfg.max_physical_batch_size:
            with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=cfg.max_physical_batch_size,
                                    optimizer=dp_optimizer) as physical:
                yield dp_model, dp_optimizer, physical
        else:
            yield dp_model, dp_optimizer, dp_loader
    finally:
        if recompute is not None:
            recompute.pause = None
        dp_model._close()  # hooks off: the cached model is reused next round


def nonfinite_examples(grad_samples: list[torch.Tensor]) -> torch.Tensor:
    """Which examples (rows) hold a non-finite value in any of ``grad_samples``: a bool mask.

    Tested in each gradient's own dtype (fp32, fp16, bf16): a cast to a narrower one could
    overflow a finite value into inf, and a cast is not needed to find one."""
    if not grad_samples:
        return torch.zeros(0, dtype=torch.bool)
    bad = torch.zeros(grad_samples[0].shape[0], dtype=torch.bool, device=grad_samples[0].device)
    for g in grad_samples:
        rows = torch.isfinite(g).reshape(g.shape[0], math.prod(g.shape[1:]))  # -1 fails on 0 rows
        bad |= ~rows.all(dim=1).to(bad.device)
    return bad


def zero_nonfinite_examples(dp_optimizer) -> None:
    """Make an Opacus ``DPOptimizer`` zero every per-example gradient row of an example whose
    gradient holds a NaN or inf in any parameter, before it clips.

    A zero row is a gradient of norm 0 <= ``max_grad_norm``, so the step stays a clipped, noised
    DP-SGD step and its sensitivity is unchanged; the sum, the noise and the update are finite.
    Whether an example overflowed depends on that example alone (the per-example loss does), so
    the zeroing is a per-example function and the accounting holds as it is. It runs on every
    physical batch (BatchMemoryManager's skipped steps clip and accumulate too) and on the empty
    batch of :func:`fedveil.task.train.noise_only_step`.
    """
    clip_and_accumulate = dp_optimizer.clip_and_accumulate

    def zeroing(self) -> None:
        params = [p for p in self.params if getattr(p, "grad_sample", None) is not None]
        bad = nonfinite_examples([self._get_flat_grad_sample(p) for p in params])
        for p in params:
            p.grad_sample = _zero_rows(p.grad_sample, bad)
        clip_and_accumulate()

    dp_optimizer.clip_and_accumulate = types.MethodType(zeroing, dp_optimizer)


def _zero_rows(grad_sample, bad: torch.Tensor):
    """``grad_sample`` (a tensor, or Opacus' list of one tensor per accumulated batch: its length
    counts the accumulated batches, so it stays a list) with the rows in ``bad`` set to 0."""
    if isinstance(grad_sample, list):
        out, start = [], 0
        for g in grad_sample:
            out.append(_zero_rows(g, bad[start : start + g.shape[0]]))
            start += g.shape[0]
        return out
    # always the same work, whether or not a row is bad: the owner's time must not tell
    mask = bad.to(grad_sample.device).reshape(-1, *([1] * (grad_sample.dim() - 1)))
    return torch.where(mask, torch.zeros((), dtype=grad_sample.dtype, device=grad_sample.device), grad_sample)


@contextmanager
def _recording_paused(dp_model) -> Iterator[None]:
    """Opacus' hooks off while a checkpointed layer recomputes its forward in backward: its input was
    recorded in the forward pass, and a second record would be paired with the wrong backward (and
    leak). Only the forward runs in between, on the backward's thread, so no backward hook is missed."""
    was = dp_model.hooks_enabled
    dp_model.hooks_enabled = False
    try:
        yield
    finally:
        dp_model.hooks_enabled = was
