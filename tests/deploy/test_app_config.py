"""The app's `flwr run` defaults (pyproject's [tool.flwr.app.config]) are the private ones, and every
key deploy/demo.sh passes is declared there (Flower refuses a --run-config key it does not declare)."""

import re
import tomllib
from pathlib import Path

from flwr.common.config import fuse_dicts, parse_config_args

from fedveil.configs.schema import from_run_config
from fedveil.privacy.dp.sgd import SampleLevelDPConfig

ROOT = Path(__file__).resolve().parents[2]


def app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_flwr_run_defaults_to_dp_and_secure_aggregation():
    cfg = from_run_config(app_config())
    assert cfg.dp == SampleLevelDPConfig() and cfg.aggregation.name == "tenseal"  # unset dp.* keys: the yaml's values


def test_every_key_the_demo_passes_is_declared_and_dp_can_still_be_turned_off():
    script = (ROOT / "deploy" / "demo.sh").read_text()
    passed = {key for line in script.splitlines() if line.strip().startswith(("base_config=", "dp_config="))
              for key in re.findall(r"(?:^|[\s\"])([a-z_]+(?:\.[a-z_]+)*)=", line.split("=", 1)[1])}
    assert {"dp.name", "dp.target_epsilon", "dp.delta", "dp.sample_rate", "aggregation.name"} <= passed
    assert passed <= set(app_config()), sorted(passed - set(app_config()))
    demo = parse_config_args(["aggregation.name='crypten' dp.name='sample_level' dp.target_epsilon=8.0 dp.delta=1e-5 "
                              "dp.sample_rate=0.05"])
    cfg = from_run_config(fuse_dicts(app_config(), demo))
    assert (cfg.dp.target_epsilon, cfg.dp.delta, cfg.dp.sample_rate, cfg.aggregation.name) == (
        8.0,
        1e-5,
        0.05,
        "crypten",
    )
    off = from_run_config(fuse_dicts(app_config(), parse_config_args(["dp.name='off' aggregation.name='plain'"])))
    assert off.dp.name == "off"  # the unset dp.* defaults do not get in its way
