"""DP-SGD through gradient checkpointing: the per-sample gradients are those without it.

A checkpointed layer runs its forward again during backward; Opacus' hooks are paused for that
recompute (``Recompute`` in task/model.py, bound by ``private_training``), so each LoRA layer's
input is recorded once and paired with its own backward.
"""

import numpy as np
import pytest
import torch

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.privacy.dp import epsilon_ledger
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, private_training
from fedveil.task.data import DataConfig, load_owner_data
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, load_tokenizer
from fedveil.task.train import (
    TrainConfig,
    make_optimizer,
    noise_only_step,
    per_example_loss,
    shuffled_loader,
    train_steps,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), 1, 124, seed=0)[0]


def batch_of(path, demo_dir, size=6):
    tok = load_tokenizer(path)
    data = load_owner_data(demo_dir, tok, DataConfig(), seed=0)
    return tok, data, next(iter(shuffled_loader(data.train, size, tok.pad_token_id, 3)))


def per_sample_gradients(path, batch, loader, checkpointing: bool, mode: str) -> dict[str, torch.Tensor]:
    model = load_lora_model(ModelConfig(path=str(path), gradient_checkpointing=checkpointing), seed=0)
    cfg = SampleLevelDPConfig(grad_sample_mode=mode)
    with private_training(model, make_optimizer(model, TrainConfig()), loader, cfg, 1.0) as (m, _, _):
        per_example_loss(m, batch, CPU).mean().backward()
        grads = {n: p.grad_sample for n, p in model.named_parameters() if p.requires_grad}
        assert all(isinstance(g, torch.Tensor) for g in grads.values()), "a LoRA layer got no per-sample gradient"
        return {n: g.clone() for n, g in grads.items()}


@pytest.mark.parametrize("arch, mode", [("gpt2", "hooks"), ("llama", "hooks"), ("llama", "functorch")])
def test_per_sample_gradients_with_checkpointing_equal_those_without(arch, mode, request, demo_dir):
    path = request.getfixturevalue(f"tiny_{arch}")
    tok, data, batch = batch_of(path, demo_dir)
    loader = shuffled_loader(data.train, 6, tok.pad_token_id, 0)
    plain = per_sample_gradients(path, batch, loader, False, mode)
    checkpointed = per_sample_gradients(path, batch, loader, True, mode)
    assert plain.keys() == checkpointed.keys() and len(plain) >= 8  # A and B of every adapted layer
    for name, g in plain.items():
        assert g.shape[0] == batch["input_ids"].shape[0]
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=0)
    assert max(float(g.abs().max()) for g in plain.values()) > 1e-3  # not vacuously zero


def test_without_dp_checkpointing_gives_the_same_gradients(tiny_llama, demo_dir):
    _, _, batch = batch_of(tiny_llama, demo_dir)
    grads = []
    for checkpointing in (False, True):
        model = load_lora_model(ModelConfig(path=str(tiny_llama), gradient_checkpointing=checkpointing), seed=0)
        model.train()
        per_example_loss(model, batch, CPU).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert model.is_activation_checkpointing
    assert max(float(g.abs().max()) for g in grads[0].values()) > 1e-3  # (lora_A's are 0 while lora_B is)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=0)


def test_expanded_weights_mode_gives_the_hooks_per_sample_gradients(tiny_gpt2, demo_dir):
    """``ew`` (without checkpointing) reads the batch size from the model's first positional argument."""
    tok, data, batch = batch_of(tiny_gpt2, demo_dir)
    loader = shuffled_loader(data.train, 6, tok.pad_token_id, 0)
    hooks = per_sample_gradients(tiny_gpt2, batch, loader, False, "hooks")
    ew = per_sample_gradients(tiny_gpt2, batch, loader, False, "ew")
    for name, g in hooks.items():
        torch.testing.assert_close(ew[name], g, atol=1e-6, rtol=0)


def test_steps_and_empty_batches_under_checkpointing_leave_no_recorded_activations(tiny_llama, demo_dir):
    """Every forward's record is consumed by its backward, across logical steps split into physical
    batches, and an empty Poisson batch (the noise-only step) still moves every LoRA weight."""
    tok, data, _ = batch_of(tiny_llama, demo_dir)
    model = load_lora_model(ModelConfig(path=str(tiny_llama), gradient_checkpointing=True), seed=0)
    start = get_adapter(model)
    cfg = SampleLevelDPConfig(max_physical_batch_size=4)
    loader = shuffled_loader(data.train, 16, tok.pad_token_id, 0)
    with private_training(model, make_optimizer(model, TrainConfig()), loader, cfg, 1.0) as (m, o, dl):
        assert train_steps(m, dl, o, 2, CPU).steps == 2  # 2 logical steps of 4 physical batches each
        noise_only_step(model, o)
        assert train_steps(m, dl, o, 1, CPU).steps == 1
        counters = [p._forward_counter for p in model.parameters() if p.requires_grad]
    recorded = [len(mod.activations) for mod in model.modules() if hasattr(mod, "activations")]
    assert len(recorded) >= 8 and recorded == [0] * len(recorded)  # Opacus saw every LoRA layer, kept nothing
    assert counters == [0] * len(counters)
    after = get_adapter(model)
    assert all(not np.array_equal(start[k], after[k]) for k in start)


def test_a_dp_round_with_checkpointing_trains_and_is_charged_as_without(tmp_path, tiny_gpt2, demo_dir):
    from fedveil.client.owner import Owner, OwnerIdentity
    from fedveil.configs.schema import from_dict

    def one_round(name, checkpointing):
        cfg = from_dict({"seed": 1, "rounds": 2, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                         "model": {"path": str(tiny_gpt2), "gradient_checkpointing": checkpointing},
                         "train": {"local_steps": 2}, "aggregation": {"name": "plain"},
                         "dp": {"name": "sample_level", "target_epsilon": 4.0, "accountant": "rdp",
                                "max_physical_batch_size": 2}})
        state = tmp_path / name
        owner = Owner(cfg, OwnerIdentity("client_0", str(demo_dir), str(state)), {wire.ROUND: 1})
        protected, metrics = owner.train_round(owner.initial)
        assert (owner.model.checkpoint_recompute is not None) == checkpointing
        return protected.arrays["delta"], metrics, epsilon_ledger.load(state).spent_epsilon

    delta_off, metrics_off, spent_off = one_round("off", False)
    delta_on, metrics_on, spent_on = one_round("on", True)
    assert np.count_nonzero(delta_on) == delta_on.size  # every LoRA weight moved
    assert metrics_on[wire.DP_STEPS] == 2
    assert metrics_on[wire.DP_NOISE] == metrics_off[wire.DP_NOISE]
    assert 0 < spent_on == spent_off == metrics_on[wire.DP_EPSILON]


def test_a_mode_that_cannot_recompute_is_refused_in_one_line(tiny_gpt2, demo_dir):
    from fedveil.configs.schema import from_dict

    values = {"model": {"path": str(tiny_gpt2), "gradient_checkpointing": True}, "aggregation": {"name": "plain"}}
    for mode in ("hooks", "functorch"):
        assert from_dict(
            {**values, "dp": {"name": "sample_level", "grad_sample_mode": mode}}
        ).model.gradient_checkpointing
    refusal = ("dp.grad_sample_mode=ew does not work with model.gradient_checkpointing=true: "
               "use dp.grad_sample_mode=hooks|functorch")
    with pytest.raises(UserError, match=refusal) as refused:
        from_dict({**values, "dp": {"name": "sample_level", "grad_sample_mode": "ew"}})
    assert "\n" not in str(refused.value)
    # called directly, private_training refuses before Opacus touches the model
    tok, data, _ = batch_of(tiny_gpt2, demo_dir)
    model = load_lora_model(ModelConfig(path=str(tiny_gpt2), gradient_checkpointing=True), seed=0)
    with pytest.raises(UserError, match=refusal):
        with private_training(model, make_optimizer(model, TrainConfig()), shuffled_loader(data.train, 4, 0, 0),
                              SampleLevelDPConfig(grad_sample_mode="ew"), 1.0):
            pass
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
