"""Non-finite per-example gradients count as zero under DP-SGD; without DP a non-finite step is skipped.

The attack this defends against (a global crafted to overflow on some records) is played in
``tests/adversary/test_nonfinite_oracle.py``; here the mechanism's numbers, on a linear model.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedveil.task.data import collate
from fedveil.privacy.dp.sgd import (
    GRAD_SAMPLE_MODES,
    SampleLevelDPConfig,
    _zero_rows,
    nonfinite_examples,
    private_training,
)
from fedveil.task.train import TrainResult, gradients_finite, noise_only_step, train_steps

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_mask_finds_every_non_finite_row_in_the_gradients_own_dtype(dtype):
    biggest = torch.finfo(dtype).max  # finite: a cast to a narrower dtype would make it inf
    a = torch.tensor([[1.0, biggest], [NAN, 0.0], [0.0, 0.0], [-biggest, 2.0]], dtype=dtype)
    b = torch.tensor([[[0.0]], [[0.0]], [[-INF]], [[1.0]]], dtype=dtype)  # another parameter's rows
    assert nonfinite_examples([a, b]).tolist() == [False, True, True, False]
    assert nonfinite_examples([a[:0], b[:0]]).shape == (0,)  # an empty Poisson batch
    assert nonfinite_examples([torch.tensor([INF, 1.0], dtype=dtype)]).tolist() == [True, False]  # a scalar parameter


def initial_weight(dtype) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).to(dtype).weight.detach().float()


def linear_step(x: torch.Tensor, dtype, sigma=0.0, physical=0) -> torch.Tensor:
    """One DP-SGD step (SGD, lr 1, clip 1) of a fixed linear model on the batch ``x``; its new weight."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(dtype)
    loader = DataLoader(TensorDataset(x.to(dtype), torch.ones(len(x), 2, dtype=dtype)), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = SampleLevelDPConfig(max_grad_norm=1.0, max_physical_batch_size=physical)
    with private_training(model, optimizer, loader, cfg, sigma) as (m, o, batches):
        for xb, yb in batches:
            o.zero_grad()
            ((m(xb) - yb) ** 2).sum(dim=1).mean().backward()
            o.step()
    return model.weight.detach().float()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [NAN, INF])
def test_an_example_with_a_non_finite_gradient_adds_exactly_zero_to_a_clipped_step(dtype, bad):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * 3  # norms > 1: every row is clipped
    poisoned = x.clone()
    poisoned[2, 0] = bad
    with_bad = linear_step(poisoned, dtype)
    assert torch.isfinite(with_bad).all()
    # the sum of the three finite examples' clipped gradients alone: the bad one adds nothing (the
    # divisor is the loader's expected batch size, 4 here and 3 for the three examples)
    start = initial_weight(dtype)
    three = linear_step(x[[0, 1, 3]], dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    assert torch.allclose((start - with_bad) * 4, (start - three) * 3, atol=tolerance)


def test_the_step_stays_noised_and_so_does_a_physically_split_one():
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    x[5, 1] = NAN
    noised = [linear_step(x, torch.float32, sigma=1.0) for _ in range(2)]
    assert all(torch.isfinite(w).all() for w in noised) and not torch.equal(*noised)  # noise drawn, finite
    # BatchMemoryManager: physical batches of 2, so the NaN example sits in a skipped, accumulated
    # step; the result is that of the logical batches unsplit
    split = linear_step(x, torch.float32, physical=2)
    assert torch.isfinite(split).all()
    assert torch.allclose(split, linear_step(x, torch.float32), atol=1e-6)


def test_an_empty_poisson_batch_is_still_a_finite_noised_step():
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    loader = DataLoader(TensorDataset(torch.zeros(4, 3), torch.zeros(4, 2)), batch_size=4)
    with private_training(model, torch.optim.SGD(model.parameters(), lr=1.0), loader, SampleLevelDPConfig(), 1.0) as (
        m,
        o,
        _,
    ):
        noise_only_step(m, o)
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight.detach(), before)


class NanOnToken(torch.nn.Module):
    """A tiny causal LM whose output is NaN at every position of a row holding token 7."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        poisoned = (input_ids == 7).any(dim=1, keepdim=True).unsqueeze(-1)
        h = h * torch.where(poisoned, NAN, 1.0)  # a constant factor: clean rows' gradients stay finite
        return type("Out", (), {"logits": self.head(h)})()


def token_batches(rows: list[list[int]]) -> DataLoader:
    """One batch of all ``rows`` (token ids), as the owner's loader collates them."""
    examples = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows]
    return DataLoader(examples, batch_size=len(rows), collate_fn=partial(collate, pad_id=0))


def test_without_dp_a_non_finite_step_is_skipped_and_counted_and_the_loss_stays_finite():
    torch.manual_seed(0)
    model = NanOnToken()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train_steps(model, token_batches([[1, 2, 3], [7, 2, 3]]), optimizer, 3, torch.device("cpu"))
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))  # every step skipped, none poisoned
    assert isinstance(result, TrainResult) and result.steps == 3 and result.nonfinite == 3
    assert np.isfinite(result.loss) and result.loss > 0  # the finite example's loss
    clean = train_steps(model, token_batches([[1, 2, 3], [4, 2, 3]]), optimizer, 2, torch.device("cpu"))
    assert clean.nonfinite == 0 and gradients_finite(model)
    assert not all(torch.equal(p, s) for p, s in zip(model.parameters(), start))


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_under_dp_the_step_is_taken_with_the_bad_example_zeroed(mode):
    torch.manual_seed(0)
    model = NanOnToken()
    start = [p.detach().clone() for p in model.parameters()]
    loader = token_batches([[1, 2, 3], [7, 2, 3]])
    cfg = SampleLevelDPConfig(grad_sample_mode=mode)
    with private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, cfg, 0.0) as (m, o, dl):
        result = train_steps(m, dl, o, 2, torch.device("cpu"))
    assert result.steps == 2 and result.nonfinite == 2 and np.isfinite(result.loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(p, s) for p, s in zip(model.parameters(), start))  # the clean row trained


def test_accumulated_per_sample_gradients_stay_a_list_with_each_batchs_rows_zeroed():
    # Opacus keeps one tensor per accumulated backward pass: the list's length is its divisor
    first, second = torch.ones(2, 3), torch.ones(3, 3)
    bad = torch.tensor([False, True, False, False, True])
    out = _zero_rows([first, second], bad)
    assert isinstance(out, list) and [g.shape[0] for g in out] == [2, 3]
    assert out[0][:, 0].tolist() == [1.0, 0.0] and out[1][:, 0].tolist() == [1.0, 1.0, 0.0]
