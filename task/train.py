"""The local training loop and held-out evaluation of one data owner."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Optional

import torch
from torch.utils.data import DataLoader

from fedveil.task.data import IGNORE_INDEX, collate
from fedveil.core.errors import UserError


@dataclass
class TrainConfig:
    """Local optimisation per round: ``local_steps`` optimizer steps of ``batch_size`` examples."""

    local_steps: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 32
    update_clip_norm: Optional[float] = None  # L2 bound on each round's adapter delta (None: off)

    def __post_init__(self) -> None:
        for key in ("local_steps", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.update_clip_norm is not None and not self.update_clip_norm > 0:
            raise UserError(f"train.update_clip_norm must be > 0 (or null for off), got {self.update_clip_norm}")


@dataclass
class TrainResult:
    """What local training did; it stays with the owner (the release gate decides what leaves)."""

    loss: float  # mean over batches of each one's mean finite per-example loss (0.0 if none): always finite
    steps: int
    seconds: float
    nonfinite: int = 0  # examples whose loss was NaN or inf (a global crafted to overflow, or a bug)


def shuffled_loader(examples: list, batch_size: int, pad_id: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        examples, batch_size=min(batch_size, len(examples)), shuffle=True, drop_last=False,
        collate_fn=partial(collate, pad_id=pad_id), generator=generator,
    )


def cycle(loader: Iterable) -> Iterable:
    """Pass over ``loader`` again and again (each pass reshuffles or resamples)."""
    while True:
        yield from loader


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def per_example_loss(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean token loss of each example, shape ``(batch,)``.

    Each entry depends on its own example only. (The usual token-mean over the whole batch
    would scale every example's gradient by the batch's total token count, letting one example
    change the others' contributions, which breaks DP-SGD's per-example sensitivity.)
    """
    batch = {k: v.to(device) for k, v in batch.items()}
    # input_ids positional: Opacus' ``ew`` engine takes the batch size from the first argument
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), target, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counts = (target != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / counts


def noise_only_step(model, optimizer) -> None:
    """The DP-SGD step of an empty Poisson batch: no per-example gradient, the noise all the same.

    Skipping the step would release whether the batch was empty, and that depends on who is in
    the data (an owner with one example more empties fewer batches). A DP optimizer (Opacus) gets
    per-example gradients with zero rows, so it clips and sums nothing and adds its noise; a plain
    optimizer never sees an empty batch (its loader is not Poisson), and nothing happens.
    """
    if not is_private(optimizer):
        return
    optimizer.zero_grad(set_to_none=True)
    for p in trainable_parameters(model):
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()


def train_steps(model, loader: Iterable, optimizer, steps: int, device: torch.device,
                on_progress: Optional[Callable[[int, int], None]] = None, every_s: float = 10.0) -> TrainResult:
    """Take ``steps`` optimizer steps over ``loader`` (cycled); returns the mean loss.

    Under Opacus' BatchMemoryManager a logical step spans several physical batches: only steps
    the optimizer did not skip count. An empty Poisson batch is still a full DP-SGD step (see
    :func:`noise_only_step`).

    Non-finite values never reach the weights. Under DP the optimizer zeroes each example whose
    per-example gradient is non-finite before it clips
    (:func:`fedveil.privacy.dp.sgd.zero_nonfinite_examples`): the step is still taken, so the
    update is finite and depends on such an example only as on one with a zero gradient.
    Without DP a step whose gradient is non-finite is skipped (as mixed-precision loss scaling
    does) and still counts, so the update stays finite too; but then whether and how much the
    owner trained depends on its records, which is no leak only because without DP the
    coordinator may see the owner's exact update anyway (docs/privacy.md, threat model). Under DP a step
    is never skipped on what the gradient holds: that would be a data-dependent release.
    The loss reported leaves out examples whose loss was non-finite; ``nonfinite`` counts them,
    for the owner's own console.
    ``on_progress(done, steps)`` is called at most every ``every_s`` seconds, so only
    training long enough to need it shows on the console.
    """
    model.train()
    private = is_private(optimizer)
    start, total, finite_seen, nonfinite, taken = time.perf_counter(), 0.0, 0, 0, 0
    last_report = start
    batches = iter(cycle(loader))
    while taken < steps:
        batch = next(batches)
        if not batch or batch["input_ids"].shape[0] == 0:
            noise_only_step(model, optimizer)
            taken += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        losses = per_example_loss(model, batch, device)
        losses.mean().backward()
        if private or gradients_finite(model):
            optimizer.step()
        finite = torch.isfinite(losses.detach())
        if bool(finite.any()):
            total, finite_seen = total + float(losses.detach()[finite].mean()), finite_seen + 1
        nonfinite += int((~finite).sum())
        if not getattr(optimizer, "_is_last_step_skipped", False):
            taken += 1
        if on_progress is not None and time.perf_counter() - last_report >= every_s:
            on_progress(taken, steps)
            last_report = time.perf_counter()
    return TrainResult(loss=total / max(finite_seen, 1), steps=taken,
                       seconds=time.perf_counter() - start, nonfinite=nonfinite)


def is_private(optimizer) -> bool:
    """Whether ``optimizer`` is a DP-SGD one (Opacus' DPOptimizer: it adds noise)."""
    return hasattr(optimizer, "add_noise")


def gradients_finite(model) -> bool:
    """Whether every trainable parameter's gradient is finite (a missing one counts as finite)."""
    return all(bool(torch.isfinite(p.grad).all()) for p in trainable_parameters(model) if p.grad is not None)


@torch.no_grad()
def evaluate(model, examples: list, batch_size: int, pad_id: int, device: torch.device) -> tuple[float, int]:
    """Token-weighted mean loss on ``examples`` and the number of predicted tokens."""
    model.eval()
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        target = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        loss_sum += float(losses)
        tokens += int((target != IGNORE_INDEX).sum())
    return (loss_sum / tokens if tokens else math.nan), tokens
