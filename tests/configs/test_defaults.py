"""Config defaults live in one place: the schema's dataclasses (configs/schema.py and the components'
configs it assembles). Every entry point builds them: the Hydra runner, `flwr run` (pyproject's
[tool.flwr.app.config]) and from_dict. The YAML tree repeats their values so users can read what to
override, and pyproject declares the keys `flwr run` may set; both are checked against the dataclasses
here, so changing a default in one place and not the other fails."""

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import fedveil.configs
from fedveil.configs.schema import FedveilConfig, from_dict, from_run_config, register_schemas
from fedveil.core.errors import UserError
from fedveil.privacy.dp.sgd import DP_MODES
from fedveil.privacy.planner import AutoConfig
from fedveil.privacy.secagg import BACKENDS
from fedveil.task.data import DataConfig
from fedveil.task.model import ModelConfig

CONFIG_DIR = Path(fedveil.configs.__file__).parent
ROOT = Path(__file__).resolve().parents[2]
OVERRIDES_TABLE = ROOT / "docs" / "experiments.md"  # its "default" column is the users' view of the same values
SCHEMAS = {  # (group, option) -> the dataclass the option's values fill
    **{("model", p.stem): ModelConfig for p in (CONFIG_DIR / "model").glob("*.yaml")},
    **{("data", p.stem): DataConfig for p in (CONFIG_DIR / "data").glob("*.yaml")},
    **{("dp", name): cls for name, cls in DP_MODES.items()},
    **{("aggregation", name): spec.config for name, spec in BACKENDS.items()},
    ("aggregation", "auto"): AutoConfig,
}
# What a non-default option of a shared schema is for: the only values it may set apart from the
# dataclass defaults (which are the default option's). A new such value is added here, on purpose.
OPTION_VALUES = {
    ("model", "local"): {"name": "local", "tiny": None, "device": "auto"},
    ("model", "tiny_llama"): {"name": "tiny_llama", "tiny.arch": "llama"},
    ("data", "files"): {"name": "files", "max_length": 256},
    ("data", "node"): {"name": "node"},
}
NOT_VALUES = ("defaults", "hydra")  # Hydra's own keys in a YAML file, not config values


def declared(cls: type) -> dict:
    """The defaults a dataclass declares (before any ``__post_init__`` resolves them for a cohort)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = declared(type(value)) if dataclasses.is_dataclass(value) else value
    return out


def leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def default_at(defaults: dict, dotted: str):
    node = defaults
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def yaml_values(path: Path) -> dict:
    return leaves({k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in NOT_VALUES})


def drift(values: dict, defaults: dict, allowed: dict) -> list[str]:
    out = []
    for key, value in values.items():
        try:
            default = default_at(defaults, key)
        except KeyError:
            out.append(f"{key}: not a key of the schema")
            continue
        if value != default and allowed.get(key, object()) != value:
            out.append(f"{key}: yaml {value!r}, dataclass {default!r}")
    return out


def composed(overrides):
    register_schemas()
    with initialize_config_module("fedveil.configs", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_every_group_option_has_a_schema_except_experiments():
    options = {(p.parent.name, p.stem) for p in CONFIG_DIR.glob("*/*.yaml")}
    # an experiment is a named set of overrides (configs/experiment/), so none of its values is a default
    assert {o for o in options if o[0] != "experiment"} == set(SCHEMAS)


@pytest.mark.parametrize("group, option", sorted(SCHEMAS))
def test_each_group_options_yaml_values_are_its_dataclass_defaults(group, option):
    defaults = declared(SCHEMAS[group, option])
    values = yaml_values(CONFIG_DIR / group / f"{option}.yaml")
    assert drift(values, defaults, OPTION_VALUES.get((group, option), {})) == []
    for key, value in OPTION_VALUES.get((group, option), {}).items():
        assert values.get(key, "absent") == value, key  # the allow-list stays exact


def test_config_yaml_values_are_the_dataclass_defaults():
    values = yaml_values(CONFIG_DIR / "config.yaml")
    assert {"seed", "rounds", "num_clients", "train.lr", "privacy.coordinator", "sim.client_cpus"} <= set(values)
    assert drift(values, declared(FedveilConfig), {}) == []


def test_the_default_options_are_the_dataclasses_and_privacy_is_on():
    picked = {k: v for d in yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["defaults"]
              if isinstance(d, dict) for k, v in d.items()}
    assert (picked["model"], picked["data"]) == (ModelConfig().name, DataConfig().name)
    assert (picked["dp"], picked["aggregation"]) == ("sample_level", "auto")


def test_a_change_to_one_place_is_caught():
    defaults = declared(FedveilConfig)
    values = yaml_values(CONFIG_DIR / "config.yaml")
    assert drift({**values, "train.lr": 0.01}, defaults, {}) == ["train.lr: yaml 0.01, dataclass 0.003"]
    assert drift({**values, "train.lr_typo": 1}, defaults, {}) == ["train.lr_typo: not a key of the schema"]


def test_flwr_run_builds_the_config_the_runner_builds_with_no_overrides():
    # "" is unset: the dataclass default; every other value must agree with the YAML tree's default
    assert from_run_config(app_config()) == from_dict(composed([]))


def test_every_key_pyproject_declares_is_a_schema_key():
    keys = set(leaves(declared(FedveilConfig)))
    keys |= {f"dp.{f.name}" for cls in DP_MODES.values() for f in dataclasses.fields(cls)}
    keys |= {f"aggregation.{f.name}" for spec in BACKENDS.values() for f in dataclasses.fields(spec.config)}
    assert set(app_config()) - keys == set()  # a mistyped key set to "" would be dropped silently


@pytest.mark.parametrize("missing", ["dp", "aggregation"])
def test_a_config_naming_no_dp_or_aggregation_is_refused_not_defaulted(missing):
    values = {"dp": {"name": "off"}, "aggregation": {"name": "plain"}}
    del values[missing]
    with pytest.raises(UserError, match=f"the config names no {missing}: choose {missing}="):
        from_dict(values)
    assert from_dict({"dp": {"name": "off"}, "aggregation": {"name": "plain"}}).dp.name == "off"



def documented_defaults() -> dict:
    """key -> the default docs/experiments.md's overrides table shows, where it shows one literal
    (a backticked value, or "unset") per key; prose defaults ("chosen for the cohort") are skipped."""
    table = OVERRIDES_TABLE.read_text().split("## Experiment overrides")[1].split("\n\n")[1]
    out = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        keys = [k.split("=")[0] for k in re.findall(r"`([^`]+)`", cells[0])]
        parts = [p.strip() for p in cells[2].split(", ")]
        parts = parts * len(keys) if parts == ["unset"] else parts
        if len(parts) != len(keys):
            continue
        for key, part in zip(keys, parts):
            if part == "unset":
                out[key] = None
            elif shown := re.match(r"^`([^`]+)`", part):
                value = yaml.safe_load(shown.group(1))
                is_float = isinstance(value, str) and re.fullmatch(r"[0-9.]+e-?[0-9]+", value)  # YAML 1.1: 3e-3 is text
                out[key] = float(value) if is_float else value
    return out


def test_the_docs_default_column_shows_the_dataclass_defaults():
    defaults = leaves(declared(FedveilConfig))
    for cls in [*DP_MODES.values(), *(spec.config for spec in BACKENDS.values())]:
        group = "dp" if cls in DP_MODES.values() else "aggregation"
        defaults.update({f"{group}.{k}": v for k, v in declared(cls).items() if f"{group}.{k}" not in defaults})
    picked = {k: v for d in yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["defaults"]
              if isinstance(d, dict) for k, v in d.items()}
    shown = documented_defaults()
    assert {"seed", "train.lr", "dp.delta", "aggregation.parties", "privacy.coordinator", "model"} <= set(shown)
    wrong = {key: (value, picked.get(key, defaults.get(key, "no such key"))) for key, value in shown.items()
             if not key.startswith("hydra.") and value != picked.get(key, defaults.get(key, "no such key"))}
    assert wrong == {}, "docs/experiments.md shows (default, but the schema's is): " + repr(wrong)
