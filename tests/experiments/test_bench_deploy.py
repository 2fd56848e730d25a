"""bench_deploy runs the same model in simulation and in deployment: the deploy demo's environment."""

import pytest

from fedveil.experiments.bench_deploy import deploy_model_env, steady
from fedveil.experiments.bench_secagg import MODELS


def test_the_deployment_builds_the_model_the_simulation_overrides_name():
    assert deploy_model_env(MODELS["tiny"]) == {}  # demo.sh's own tiny model
    assert deploy_model_env(MODELS["mid"]) == {"TINY_SHAPE": "512 4 8"}  # data.max_length=128: the owners' own
    assert deploy_model_env(["model.tiny.layers=6"]) == {"TINY_SHAPE": "64 6 4"}
    with pytest.raises(SystemExit, match="data.max_length=64 is not what the deployed owners use"):
        deploy_model_env(["data.max_length=64"])


def test_the_first_round_is_left_out_of_the_mean_when_there_are_more():
    assert steady([9.0, 1.0, 3.0]) == 2.0 and steady([4.0]) == 4.0
