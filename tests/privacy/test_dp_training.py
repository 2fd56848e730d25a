"""Opacus DP-SGD on LoRA models: the adapters learn, and with no noise and no clipping DP-SGD is SGD."""

import numpy as np
import pytest
import torch

from fedveil.task.data import DataConfig, load_owner_data
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, load_tokenizer
from fedveil.task.train import TrainConfig, make_optimizer, shuffled_loader, train_steps
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, private_training

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    # 124 examples -> 112 train = 7 full batches of 16 (Opacus scales by n * q, here exactly 16)
    return write_demo_data(tmp_path_factory.mktemp("demo"), 1, 124, seed=0)[0]


def setup(path, demo_dir):
    model = load_lora_model(ModelConfig(path=str(path)), seed=0)
    tok = load_tokenizer(path)
    data = load_owner_data(demo_dir, tok, DataConfig(), seed=0)
    return model, tok, data


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_weights_change_under_dp(arch, request, demo_dir):
    model, tok, data = setup(request.getfixturevalue(f"tiny_{arch}"), demo_dir)
    before = get_adapter(model)
    cfg = SampleLevelDPConfig(max_grad_norm=1.0)
    opt = make_optimizer(model, TrainConfig())
    with private_training(model, opt, shuffled_loader(data.train, 16, tok.pad_token_id, 0), cfg, 1.0) as (m, o, dl):
        result = train_steps(m, dl, o, 5, CPU)
    after = get_adapter(model)
    assert result.steps == 5
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) == len(before)  # every LoRA tensor moved (A and B, every layer)
    # the hooks are gone: the same model trains again without Opacus
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_zero_noise_and_huge_clip_equals_non_dp(tiny_gpt2, demo_dir):
    torch.manual_seed(0)
    model, tok, data = setup(tiny_gpt2, demo_dir)
    start = get_adapter(model)
    # plain SGD: Adam's division by sqrt(v) would amplify float rounding where gradients are ~0
    def sgd():
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)

    train_steps(model, shuffled_loader(data.train, 16, tok.pad_token_id, 7), sgd(), 4, CPU)
    plain = get_adapter(model)

    from fedveil.task.model import set_adapter

    set_adapter(model, start)
    cfg = SampleLevelDPConfig(max_grad_norm=1e6)
    loader = shuffled_loader(data.train, 16, tok.pad_token_id, 7)
    with private_training(model, sgd(), loader, cfg, 0.0) as (m, o, dl):
        train_steps(m, dl, o, 4, CPU)
    dp = get_adapter(model)
    assert max(np.abs(dp[k] - start[k]).max() for k in start) > 1e-3  # it did train
    for k in start:
        np.testing.assert_allclose(dp[k], plain[k], atol=1e-6, rtol=0)


def test_physical_batch_limit_gives_the_same_number_of_logical_steps(tiny_gpt2, demo_dir):
    model, tok, data = setup(tiny_gpt2, demo_dir)
    cfg = SampleLevelDPConfig(max_physical_batch_size=4)
    with private_training(
        model, make_optimizer(model, TrainConfig()), shuffled_loader(data.train, 16, tok.pad_token_id, 0), cfg, 1.0
    ) as (m, o, dl):
        result = train_steps(m, dl, o, 3, CPU)
    assert result.steps == 3
