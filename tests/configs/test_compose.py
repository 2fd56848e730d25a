"""Every YAML in configs/ composes into a valid, typed config that survives Flower's run config."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import fedveil.configs
from fedveil.configs.schema import FedveilConfig, from_dict, from_run_config, register_schemas, to_run_config
from fedveil.core.errors import UserError

CONFIG_DIR = Path(fedveil.configs.__file__).parent
GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in CONFIG_DIR.glob("*/*.yaml"))


def composed(overrides):
    register_schemas()
    with initialize_config_module("fedveil.configs", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def test_every_group_option_is_found():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"model", "data", "dp", "aggregation", "experiment"} <= groups


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_each_option_composes_and_round_trips(group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option == "local":
        overrides.append("model.path=/models/any")
    if group == "data" and option == "files":
        overrides.append("data.client_dirs=[/a,/b,/c]")
    if group == "dp" and option == "owner_level":  # not under plain, the default (check_owner_level)
        overrides.append("aggregation=crypten")
    cfg = from_dict(composed(overrides))
    assert isinstance(cfg, FedveilConfig)
    assert from_run_config(to_run_config(cfg)) == cfg
    assert all(isinstance(v, (bool, int, float, str)) for v in to_run_config(cfg).values())


def test_experiment_overrides_the_base_values():
    cfg = from_dict(composed(["experiment=smoke"]))
    assert (cfg.rounds, cfg.num_clients, cfg.train.local_steps) == (2, 2, 5)


def test_defaults_protect_and_plain_dp_off_remain_overrides():
    cfg = from_dict(composed([]))  # privacy on: DP-SGD, and the planner's pick against a curious coordinator
    assert (cfg.rounds, cfg.num_clients, cfg.model.name) == (3, 3, "tiny")
    assert (cfg.privacy.coordinator, cfg.aggregation.name, cfg.dp.name, cfg.dp.target_epsilon) ==\
        ("curious", "tenseal", "sample_level", 8.0)
    cfg = from_dict(composed(["aggregation=plain", "dp=off"]))
    assert (cfg.aggregation.name, cfg.dp.name) == ("plain", "off")


@pytest.mark.parametrize("values, match", [
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"num_clients": 3, "clients_per_round": 4}, "clients_per_round must be between 1 and num_clients=3"),
    ({"num_clients": 3, "clients_per_round": 2, "aggregation": {"name": "crypten"}},
     "reveals no aggregate of fewer than aggregation.min_owners=3 owners, but only 2 train per round"),
    ({"train": {"lr": -1.0}}, "train.lr must be > 0"),
    ({"model": {"path": "/m", "lora": {"r": 0}}}, "model.lora.r must be >= 1"),
    ({"model": {"path": "/m", "bogus": 1}}, "unknown config key 'model.bogus'"),
    ({"rounds": "three"}, "config key 'rounds' must be int"),
    ({"aggregation": {"name": "magic"}}, "aggregation 'magic' is unknown"),
    ({"num_clients": 2, "data": {"name": "files", "client_dirs": ["/a"]}}, "lists 1 owners but num_clients=2"),
    ({"aggregation": {"name": "tenseal", "coeff_mod_bit_sizes": [60, 60]}}, "below 128-bit security"),
])
def test_bad_values_fail_with_the_key(values, match):
    with pytest.raises(UserError, match=match):
        from_dict({"dp": {"name": "off"}, "aggregation": {"name": "plain"}, **values})


def test_the_cohort_sets_max_owners_and_bfv_parameters_under_auto_and_tenseal():
    for named in ([], ["aggregation=tenseal"]):
        small = from_dict(composed(["num_clients=100", "clients_per_round=10", *named])).aggregation
        assert (small.name, small.max_owners, small.plain_modulus_bits) == ("tenseal", 10, 46)
        large = from_dict(composed(["num_clients=1000", "clients_per_round=100", *named])).aggregation
        assert (large.max_owners, large.poly_modulus_degree, large.plain_modulus_bits) == (100, 4096, 45)
    assert from_dict(composed(["num_clients=100"])).aggregation.plain_modulus_bits == 45  # no clients_per_round: all


def test_under_auto_the_picked_backends_keys_can_be_typed_and_others_are_refused_naming_the_pick():
    cfg = from_dict(composed(["aggregation.scheme=ckks", "aggregation.max_weight=2"]))
    assert (cfg.aggregation.name, cfg.aggregation.scheme, cfg.aggregation.max_weight) == ("tenseal", "ckks", 2.0)
    assert from_run_config(to_run_config(cfg)) == cfg
    crypten = from_dict(composed(["privacy.coordinator=curious", "privacy.aggregator_parties=3",
                                  "privacy.owner_collusion=true", "aggregation.parties=4"])).aggregation
    assert (crypten.name, crypten.parties) == ("crypten", 4)
    with pytest.raises(UserError, match="aggregation.parties is not a key of tenseal, the backend aggregation=auto "
                                        "picks here"):
        from_dict(composed(["aggregation.parties=3"]))


@pytest.mark.parametrize("overrides, fix", [
    (["aggregation=tenseal", "aggregation.plain_modulus_bits=46", "num_clients=100"],
     "aggregation.plain_modulus_bits=null"),
    (["aggregation.plain_modulus_bits=46", "num_clients=100"], "aggregation.plain_modulus_bits=null"),
    (["aggregation=tenseal", "aggregation.max_owners=3", "num_clients=4"], "aggregation.max_owners=null"),
    (["aggregation.global_bound=0"], "aggregation.global_bound=null"),  # "(or null: resolved by the run)"
    (["num_clients=1000", "aggregation.poly_modulus_degree=4096",
      "aggregation.plain_modulus_bits=40"], "aggregation.plain_modulus_bits=null"),
])
def test_the_fix_an_aggregation_error_names_can_be_typed_back(overrides, fix):
    key = fix.split("=")[0]
    with pytest.raises(UserError, match="null") as exc:
        from_dict(composed(overrides))
    assert key in str(exc.value)
    kept = [o for o in overrides if not o.startswith(key + "=")]
    assert from_dict(composed([*kept, fix])).aggregation.name == "tenseal"
