"""Secret randomness for DP-SGD: Gaussian noise and Poisson sampling from the OS CSPRNG.

DP-SGD protects a training record only if the coordinator cannot predict the noise or the
batches. Opacus draws both from torch's generators, which fedveil used to seed from the
experiment config; whoever knew the config (the coordinator) could replay every noise tensor and
subtract it. Here nothing is seeded:

- **Noise**: every Gaussian value is made from fresh bytes of ``os.urandom`` (the kernel's
  CSPRNG; on Linux ``getrandom``, ChaCha20-based) by the Box-Muller transform in float64, then
  cast to the gradient's dtype. Nothing about it derives from ``seed`` or any value the
  coordinator sends; two owners, or two runs with the same config, draw independent noise.
- **Poisson sampling**: each record joins a step's batch independently with probability ``q``,
  decided by fresh ``os.urandom`` bytes per step.

``seed`` still reproduces everything that is not a privacy mechanism (model init, data splits,
demo data, non-DP shuffling), so ``dp=off`` runs stay identical run to run and ``dp=sample_level``
runs do not. Not covered: Opacus' ``secure_mode`` floating-point mitigation (sums of 2n draws
against the attacks on float Gaussian samplers, arXiv 2107.10138) is not applied: torchcsprng,
which it needs, is unmaintained for torch 2.13.
"""

from __future__ import annotations

import os
import types
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_TWO_POW_53 = float(1 << 53)


def secret_uniform(n: int) -> np.ndarray:
    """``n`` float64 values uniform in (0, 1], from 53 random bits each (os.urandom)."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) + 1.0) / _TWO_POW_53


def secret_gaussian(shape: tuple[int, ...], std: float) -> np.ndarray:
    """Gaussian values of mean 0 and standard deviation ``std`` (Box-Muller over os.urandom)."""
    n = int(np.prod(shape)) if len(shape) else 1
    half = (n + 1) // 2
    radius = np.sqrt(-2.0 * np.log(secret_uniform(half)))
    angle = 2.0 * np.pi * secret_uniform(half)
    values = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
    return (values * std).reshape(shape)


def secret_noise_like(reference: torch.Tensor, std: float) -> torch.Tensor:
    import torch  # lazy: torch takes seconds; the owner-level mechanism draws uniforms here without it

    if std == 0:
        return torch.zeros_like(reference)
    noise = torch.from_numpy(secret_gaussian(tuple(reference.shape), std))
    return noise.to(device=reference.device, dtype=reference.dtype)


def use_secret_noise(dp_optimizer) -> None:
    """Make an Opacus ``DPOptimizer`` add CSPRNG noise instead of drawing from torch's generator."""
    from opacus.optimizers.optimizer import (  # lazy: opacus (seconds); configs import us
        _check_processed_flag, _mark_as_processed)

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + secret_noise_like(p.summed_grad, std)).view_as(p)
            _mark_as_processed(p.summed_grad)

    dp_optimizer.add_noise = types.MethodType(add_noise, dp_optimizer)


def secret_poisson_loader(dataset, sample_rate: float, collate_fn):
    """An Opacus ``DPDataLoader`` over ``dataset`` whose Poisson batches come from os.urandom."""
    from opacus.data_loader import DPDataLoader  # lazy: opacus (seconds); configs import us
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler  # lazy: opacus (seconds); configs import us

    class SecretPoissonSampler(UniformWithReplacementSampler):
        def __iter__(self):
            for _ in range(self.steps):
                yield np.flatnonzero(secret_uniform(self.num_samples) <= self.sample_rate).tolist()

    loader = DPDataLoader(dataset, sample_rate=sample_rate, collate_fn=collate_fn)
    loader.batch_sampler.__class__ = SecretPoissonSampler  # same state; only the source of randomness differs
    # An empty Poisson batch collates to ``EMPTY_BATCH``. Opacus' own stand-in builds zero tensors
    # from the dtypes of ``dataset[0]``, which fails for dict examples when the first batch is empty.
    loader.collate_fn = partial(_collate_or_empty, collate_fn)
    return loader


EMPTY_BATCH: dict = {}


def _collate_or_empty(collate_fn, batch: list):
    return collate_fn(batch) if batch else EMPTY_BATCH
