"""sim.ray_address: the simulation runs its owners on an existing Ray cluster instead of starting one.

The run through a Ray head started beforehand is in ``test_end_to_end.py``
(``test_non_dp_runs_with_one_seed_repeat_also_on_an_existing_ray_head``: a plain run on that head repeats
the local one exactly).
"""

import pytest

from fedveil.configs.schema import SimulationConfig
from fedveil.core.errors import UserError


@pytest.mark.parametrize("address", ["10.0.0.5", "host:port", ":6379", "host:70000"])
def test_a_ray_address_is_auto_or_host_and_port(address):
    with pytest.raises(UserError, match=f"sim.ray_address='{address}' is neither auto nor HOST:PORT"):
        SimulationConfig(ray_address=address)
    assert SimulationConfig(ray_address="auto").ray_address == "auto"
    assert SimulationConfig(ray_address="10.0.0.5:6379").ray_address == "10.0.0.5:6379"
