"""The coordinator tries to break an owner's DP: predict its noise, weaken its DP, read its losses.

Each test plays a coordinator that knows the whole experiment config (seed included) and shows
the attack fails; where a control shows what the attack achieved before (Opacus' default,
config-seeded generators), it says so.
"""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from fedveil.client.owner import EVALUATIONS_FILE, Owner, OwnerIdentity
from fedveil.configs.schema import from_dict
from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.privacy.dp.randomness import secret_gaussian, secret_poisson_loader
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, poisson_loader, private_training
from fedveil.privacy.policy import OwnerPolicy, PolicyViolation, write_policy
from fedveil.task.data import collate
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import ModelConfig, get_adapter, load_lora_model, set_adapter
from fedveil.task.train import make_optimizer, train_steps, TrainConfig

pytestmark = pytest.mark.adversary
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), 1, 120, seed=0)[0]


def test_secret_noise_is_gaussian_and_not_reproducible_from_any_seed():
    torch.manual_seed(0)
    np.random.seed(0)
    first = secret_gaussian((200_000,), 2.0)
    torch.manual_seed(0)
    np.random.seed(0)
    second = secret_gaussian((200_000,), 2.0)
    assert not np.allclose(first[:100], second[:100])  # same seeds, different noise
    assert abs(float(np.corrcoef(first, second)[0, 1])) < 0.02
    # still N(0, 2^2): Kolmogorov-Smirnov and moments
    assert stats.kstest(first, stats.norm(scale=2.0).cdf).pvalue > 1e-7  # fails 1 run in 10^7 by chance
    assert abs(first.mean()) < 0.03 and abs(first.std() - 2.0) < 0.02


def test_secret_poisson_batches_differ_between_runs_and_have_rate_q():
    records = [{"id": torch.tensor([i])} for i in range(2000)]

    def batches():
        torch.manual_seed(0)  # a coordinator's replay seeds every generator it knows of
        loader = secret_poisson_loader(records, 0.05, collate_fn=lambda b: [int(r["id"]) for r in b])
        return [tuple(b) for _, b in zip(range(5), loader)]

    a, b = batches(), batches()
    assert a != b
    sizes = [len(x) for x in a + b]
    assert stats.binomtest(sum(sizes), 2000 * len(sizes), 0.05).pvalue > 1e-7


def dp_round(model_path, demo_dir, start, sampler_seed_from_config: bool):
    """One owner's 3 DP-SGD steps from ``start``; returns the adapter delta."""
    from fedveil.task.data import DataConfig, load_owner_data
    from fedveil.task.model import load_tokenizer

    model = load_lora_model(ModelConfig(path=str(model_path)), seed=0)
    set_adapter(model, start)
    tok = load_tokenizer(model_path)
    data = load_owner_data(demo_dir, tok, DataConfig(), seed=0, one_row_per_record=True)
    cfg = SampleLevelDPConfig(sample_rate=0.1)
    torch.manual_seed(1 * 1_000_003 + 1)  # what the old owner code did: seed from (config seed, round)
    optimizer = make_optimizer(model, TrainConfig())
    if sampler_seed_from_config:  # control: Opacus' defaults, generators seeded from the config
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader
        from functools import partial

        loader = DataLoader(data.train, batch_size=10, collate_fn=partial(collate, pad_id=tok.pad_token_id),
                            generator=torch.Generator().manual_seed(7))
        m, o, dl = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True)
        train_steps(m, dl, o, 3, CPU)
        m._close()
    else:
        loader = poisson_loader(data.train, lambda b: collate(b, tok.pad_token_id), cfg)
        with private_training(model, optimizer, loader, cfg, 1.0) as (m, o, dl):
            train_steps(m, dl, o, 3, CPU)
    after = get_adapter(model)
    return np.concatenate([(after[k] - start[k]).ravel() for k in start])


def test_a_replay_from_the_config_does_not_reproduce_an_owners_update(tiny_gpt2, demo_dir):
    start = get_adapter(load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=0))
    # the attack, against config-seeded generators: a replay reproduces the update bit for bit,
    # so the coordinator could subtract the noise
    replayed = [dp_round(tiny_gpt2, demo_dir, start, sampler_seed_from_config=True) for _ in range(2)]
    np.testing.assert_array_equal(replayed[0], replayed[1])
    # fedveil's owners: same model, data, config and seeds, yet different noise and batches
    ours = [dp_round(tiny_gpt2, demo_dir, start, sampler_seed_from_config=False) for _ in range(2)]
    assert np.abs(ours[0] - ours[1]).max() > 1e-4


def test_an_empty_poisson_batch_is_still_a_noisy_step(tiny_gpt2, demo_dir):
    """Membership shows in empty batches: with one example more, fewer batches are empty. A step
    skipped on an empty batch would release that exactly (an unchanged adapter); the owner takes
    the noisy step all the same, and an empty first batch of a fresh process works."""
    from fedveil.task.data import DataConfig, load_owner_data
    from fedveil.task.model import load_tokenizer

    model = load_lora_model(ModelConfig(path=str(tiny_gpt2)), seed=0)
    start = get_adapter(model)
    tok = load_tokenizer(tiny_gpt2)
    data = load_owner_data(demo_dir, tok, DataConfig(), seed=0, one_row_per_record=True)
    cfg = SampleLevelDPConfig(sample_rate=1e-12)  # every batch empty, the first one included
    loader = poisson_loader(data.train, lambda b: collate(b, tok.pad_token_id), cfg)
    with private_training(model, make_optimizer(model, TrainConfig()), loader, cfg, 1.0) as (m, o, dl):
        result = train_steps(m, dl, o, 3, CPU)
    assert result.steps == 3
    after = get_adapter(model)
    moved = np.concatenate([(after[k] - start[k]).ravel() for k in start])
    assert np.count_nonzero(moved) == moved.size  # every LoRA weight got noise: nothing tells an empty batch


def make_owner(tmp_path, model_path, demo_dir, policy: OwnerPolicy | None, **overrides):
    values = {"seed": 1, "rounds": 2, "num_clients": 1, "output_dir": str(tmp_path / "run"),
              "model": {"path": str(model_path)}, "train": {"local_steps": 2}, "aggregation": {"name": "plain"},
              "dp": {"name": "sample_level", "target_epsilon": 4.0, "accountant": "rdp"}}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            values.setdefault(section, {})[name] = value
        else:
            values[section] = value
    state = tmp_path / "state"
    if policy is not None:
        write_policy(state / "policy.json", policy)
    cfg = from_dict(values)
    return Owner(cfg, OwnerIdentity("client_0", str(demo_dir), str(state)), {wire.ROUND: 1})


STRICT = OwnerPolicy(require_dp=True, max_epsilon=4.0, max_delta=1e-5, max_sample_rate=0.1,
                     allowed_backends=["plain", "crypten"], max_rounds=5, max_local_steps=10, min_noise_multiplier=0.3)


@pytest.mark.parametrize("overrides, rule", [
    ({"dp": {"name": "off"}}, "require_dp=true"),
    ({"dp.target_epsilon": 8.0}, "max_epsilon=4"),
    ({"dp.poisson_sampling": False}, "Poisson sampling"),
    ({"dp.delta": 1e-4}, "max_delta=1e-05"),
    ({"dp.sample_rate": 0.5}, "max_sample_rate=0.1"),
    ({"dp.noise_multiplier": 0.1}, "min_noise_multiplier=0.3"),
    ({"aggregation": {"name": "tenseal"}}, "allowed_backends"),
    ({"rounds": 50}, "max_rounds=5"),
    ({"train.local_steps": 100}, "max_local_steps=10"),
])
def test_a_weaker_instruction_is_refused_and_the_ledger_is_untouched(tmp_path, tiny_gpt2, demo_dir, overrides, rule):
    owner = make_owner(tmp_path, tiny_gpt2, demo_dir, STRICT)
    owner.train_round(owner.initial)  # a legitimate DP round: the ledger exists
    ledger = (tmp_path / "state" / "privacy_ledger.json").read_bytes()
    if "dp" in overrides and isinstance(overrides["dp"], dict):
        overrides = {"dp": {**overrides["dp"]}}
    with pytest.raises(PolicyViolation, match=rule):
        make_owner(tmp_path, tiny_gpt2, demo_dir, None, **overrides).train_round(owner.initial)
    assert (tmp_path / "state" / "privacy_ledger.json").read_bytes() == ledger


def test_a_model_the_owner_did_not_pin_is_refused(tmp_path, tiny_gpt2, tiny_llama, demo_dir):
    pinned = make_owner(tmp_path, tiny_gpt2, demo_dir, None).layout.digest
    write_policy(tmp_path / "state" / "policy.json", OwnerPolicy(model_digest=pinned))
    make_owner(tmp_path, tiny_gpt2, demo_dir, None)  # the pinned model is fine
    with pytest.raises(PolicyViolation, match="model_digest"):
        make_owner(tmp_path, tiny_llama, demo_dir, None)


def test_under_dp_no_loss_count_or_norm_leaves_the_owner(tmp_path, tiny_gpt2, demo_dir):
    owner = make_owner(tmp_path, tiny_gpt2, demo_dir, OwnerPolicy(require_dp=True))
    protected, metrics = owner.train_round(owner.initial)
    allowed = {wire.NUM_EXAMPLES, wire.TRAIN_STEPS, *wire.DP_FIELDS}  # no timings either
    assert set(metrics) <= allowed and metrics[wire.NUM_EXAMPLES] == 1
    assert protected.arrays["weight"].tolist() == [1.0]  # a public weight, not the owner's count
    evaluated = owner.evaluate(owner.initial)
    assert evaluated == {wire.NUM_EXAMPLES: 1}
    # the owner keeps its losses itself
    kept = [json.loads(line) for line in (tmp_path / "state" / EVALUATIONS_FILE).read_text().splitlines()]
    assert {"train_loss", "eval_loss"} <= {k for row in kept for k in row}
    # the sample rate is the public config value, whatever the owner's data size
    assert metrics[wire.DP_SAMPLE_RATE] == 0.05 and metrics[wire.DP_DELTA] == 1e-5


def test_delta_of_one_over_n_is_refused(tmp_path, tiny_gpt2, demo_dir):
    owner = make_owner(tmp_path, tiny_gpt2, demo_dir, None, **{"dp.delta": 0.01})
    with pytest.raises(UserError, match="not below 1/n"):
        owner.train_round(owner.initial)
    assert not (tmp_path / "state" / "privacy_ledger.json").exists()


def test_owners_replayed_with_one_config_repeat_without_dp_and_differ_with_it(tmp_path, tiny_gpt2, demo_dir):
    """The owner path end to end (Owner.train_round: its config-seeded init, loader, DP-SGD,
    protection): a coordinator replaying a run's config and seed reproduces a non-DP update bit for
    bit, and never a DP one (the noise and batches are the owner's own)."""
    def delta(name, **dp):
        owner = make_owner(tmp_path / name, tiny_gpt2, demo_dir, None, **dp)
        return owner.train_round(owner.initial)[0].arrays["delta"]

    off = [delta(f"off{i}", dp={"name": "off"}) for i in range(2)]
    np.testing.assert_array_equal(off[0], off[1])
    private = [delta(f"dp{i}") for i in range(2)]
    assert np.abs(private[0] - private[1]).max() > 1e-4


def test_a_noise_hint_is_used_only_when_it_is_the_owners_own_plan(monkeypatch):
    """The coordinator offers ``dp.noise_hint`` (its plan) to spare owners the planning search. Less
    noise than the owner's plan, or more, is ignored: the owner plans itself and keeps its target."""
    from fedveil.privacy.dp import accounting, epsilon_ledger
    from fedveil.privacy.dp.accounting import epsilon_of, plan_noise

    steps, q, delta = 60, 0.05, 1e-5
    own = plan_noise(8.0, delta, q, steps, "rdp")

    def noise(hint, search=True):
        cfg = SampleLevelDPConfig(target_epsilon=8.0, delta=delta, sample_rate=q, accountant="rdp", noise_hint=hint)
        ledger = epsilon_ledger.Ledger(budget_epsilon=8.0, delta=delta, accountant="rdp")
        if not search:  # a hint that is the plan is taken without the planning search
            monkeypatch.setattr(epsilon_ledger, "plan_noise", lambda *a, **k: pytest.fail("planned anyway"))
        try:
            return epsilon_ledger.run_noise(ledger, "run", cfg, q, steps)
        finally:
            monkeypatch.setattr(epsilon_ledger, "plan_noise", accounting.plan_noise)

    assert noise(own, search=False) == own
    for wrong in (own * 0.9, own * 0.999 - 1e-6, own * 1.5, -1.0, 1e9):
        got = noise(wrong)
        assert got == pytest.approx(own) and epsilon_of([(got, q, steps)], delta, "rdp") <= 8.0, wrong
