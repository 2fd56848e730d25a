"""The local training loop and held-out evaluation of one data owner."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from fedveil.client.data import IGNORE_INDEX, collate
from fedveil.core.errors import UserError


@dataclass
class TrainConfig:
    """Local optimisation per round: ``local_steps`` optimizer steps of ``batch_size`` examples."""

    local_steps: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        for key in ("local_steps", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    loss: float  # mean training loss over the steps taken
    steps: int
    seconds: float


def shuffled_loader(examples: list, batch_size: int, pad_id: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        examples, batch_size=min(batch_size, len(examples)), shuffle=True, drop_last=False,
        collate_fn=partial(collate, pad_id=pad_id), generator=generator,
    )


def cycle(loader: Iterable) -> Iterable:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:  # a Poisson-sampled loader can be empty for one pass; try again
            continue


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def batch_loss(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    batch = {k: v.to(device) for k, v in batch.items()}
    return model(**batch).loss


def train_steps(model, loader: Iterable, optimizer, steps: int, device: torch.device) -> TrainResult:
    """Run ``steps`` optimizer steps over ``loader`` (cycled); returns the mean loss."""
    model.train()
    start, total = time.perf_counter(), 0.0
    batches = iter(cycle(loader))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, next(batches), device)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return TrainResult(loss=total / steps, steps=steps, seconds=time.perf_counter() - start)


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
