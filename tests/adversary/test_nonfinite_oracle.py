"""Attack: a coordinator sends a finite global crafted to overflow on records holding a trigger token,
and reads from whether the owner's update is finite whether the owner holds such a record.

Clipping and noise cannot hide a NaN: without the owner's zeroing of non-finite per-example
gradients, one sampled trigger record makes the released DP-SGD update NaN, and the update on D
stays finite (the control below shows the oracle works). With the zeroing, the update is finite on
D and on D' = D + one trigger record, round after round, and the owner takes the same steps.
The crafted global stays within |v| <= 100, so a bound on |global| alone does not stop it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crafted import overflowing_global  # tests/adversary/crafted.py
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.dp import sgd
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, poisson_loader, private_training
from fedveil.privacy.inputs import check_global
from fedveil.task.data import Example, collate, tokenize
from fedveil.task.demo_data import demo_records
from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, load_tokenizer, set_adapter
from fedveil.task.train import TrainConfig, make_optimizer, per_example_loss, train_steps

pytestmark = pytest.mark.adversary

CPU = torch.device("cpu")
BOUND = 100.0  # a modest policy bound on |global|: the crafted global passes it
SIGMA = 1.0  # the owner's noise multiplier (about epsilon 8 over a short run at these rates)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def owner(request):
    """An fp16 owner model (LoRA in fp32), its tokenizer, the crafted global, and D and D'."""
    path = request.getfixturevalue(f"tiny_{request.param}")
    model = load_lora_model(ModelConfig(path=str(path), dtype="fp16"), seed=0)
    tokenizer = load_tokenizer(path)
    crafted = overflowing_global(path, seed=0)
    records = demo_records(0, 10, seed=0)
    def rows(recs):
        return tokenize([Example(r["prompt"], r["completion"]) for r in recs], tokenizer, 64, True)

    return model, tokenizer, crafted, rows(records), rows(records + [crafted.record()])


def released_update(owner, rows, steps: int = 2, poisson: bool = False):
    """One DP-SGD round from the crafted global: the released delta and the training record."""
    model, tokenizer, crafted, _, _ = owner
    layout = AdapterLayout.of(get_adapter(model))
    glob = check_global(crafted.vector, layout.size, BOUND)  # the owner's input check lets it in
    set_adapter(model, layout.unflatten(glob))
    collate_fn = partial(collate, pad_id=tokenizer.pad_token_id)
    cfg = SampleLevelDPConfig(sample_rate=0.95)
    # full batches make the trigger record certain to be sampled; poisson: the owner's own loader
    loader = (
        poisson_loader(rows, collate_fn, cfg)
        if poisson
        else DataLoader(rows, batch_size=len(rows), collate_fn=collate_fn)
    )
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
    with private_training(model, optimizer, loader, cfg, SIGMA) as (m, o, batches):
        result = train_steps(m, batches, o, steps, CPU)
    return layout.flatten(get_adapter(model)) - glob, result


def test_the_crafted_global_is_finite_within_a_modest_bound_and_overflows_only_on_the_trigger(owner):
    model, tokenizer, crafted, d, d_prime = owner
    assert crafted.vector.dtype == np.float32 and np.isfinite(crafted.vector).all()
    assert crafted.max_abs <= BOUND and crafted.margin > 1.2
    layout = AdapterLayout.of(get_adapter(model))
    set_adapter(model, layout.unflatten(crafted.vector))
    with torch.no_grad():
        losses = per_example_loss(model, collate(d_prime, tokenizer.pad_token_id), CPU)
    assert len(d_prime) == len(d) + 1
    assert (~torch.isfinite(losses)).nonzero().flatten().tolist() == [len(d)]  # the trigger record only


def test_control_without_the_zeroing_the_updates_finiteness_tells_d_from_d_prime(owner, monkeypatch):
    monkeypatch.setattr(sgd, "zero_nonfinite_examples", lambda optimizer: None)  # the mechanism, removed
    _, _, _, d, d_prime = owner
    on_d, trained_d = released_update(owner, d)
    on_d_prime, trained_d_prime = released_update(owner, d_prime)
    assert np.isfinite(on_d).all() and trained_d.nonfinite == 0
    assert not np.isfinite(on_d_prime).any()  # the oracle: all NaN (then every record overflows in step 2)


@pytest.mark.slow
def test_with_the_zeroing_the_update_is_finite_on_d_and_d_prime_every_round(owner):
    _, _, _, d, d_prime = owner
    for server_round in range(2):
        on_d, trained_d = released_update(owner, d)
        on_d_prime, trained_d_prime = released_update(owner, d_prime)
        assert np.isfinite(on_d).all() and np.isfinite(on_d_prime).all(), server_round
        assert trained_d_prime.nonfinite == 2  # the trigger was in both steps' batches, and zeroed
        assert trained_d.steps == trained_d_prime.steps == 2  # what the DP record releases: equal
        assert np.abs(on_d_prime).max() > 0  # a real, noised step was taken
    # the owner's own Poisson batches (secret, q = 0.95): finite whether or not the trigger is drawn
    tripped = 0
    for _ in range(4):
        on_d_prime, trained = released_update(owner, d_prime, poisson=True)
        assert np.isfinite(on_d_prime).all()
        tripped += trained.nonfinite
    assert tripped > 0  # drawn in at least one of 8 steps (missed with probability 0.05**8 = 4e-11)
