"""The run key binds an owner's ledger entries and tenseal context to one run, as every owner sees it."""

import dataclasses

from fedveil.client.owner import run_key
from fedveil.configs.schema import from_dict


def test_a_run_key_ignores_resume_and_the_owners_own_model_copy_but_not_the_config():
    # a model given by path (the tiny model has none): checked by ModelConfig, so the key must not rebuild it
    cfg = from_dict({"output_dir": "runs/a", "aggregation": {"name": "plain"}, "dp": {"name": "off"},
                     "model": {"name": "local", "path": "/srv/models/coordinators", "tiny": None}})
    key = run_key(cfg)
    # a restarted run, and a deployed owner training its own copy (worker --model-path): the same run
    assert run_key(dataclasses.replace(cfg, resume=True)) == key
    assert run_key(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path="/srv/models/mine"))) == key
    # another seed, round count or output directory: another run
    for other in (dataclasses.replace(cfg, seed=cfg.seed + 1), dataclasses.replace(cfg, rounds=cfg.rounds + 1),
                  dataclasses.replace(cfg, output_dir="runs/b")):
        assert run_key(other) != key
