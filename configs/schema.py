"""The config schema: dataclasses from each component, assembled into one tree.

Hydra composes YAML values (this folder) over these dataclasses, so an unknown key or a wrong
type fails at start with its name. The composed tree travels to the ServerApp and ClientApps
as Flower's flat run config (:func:`to_run_config`) and is rebuilt, typed and validated, on the
other side (:func:`from_run_config`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from fedveil.task.data import DataConfig
from fedveil.task.model import ModelConfig
from fedveil.task.train import TrainConfig
from fedveil.core.errors import UserError
from fedveil.privacy.dp.sgd import DP_MODES, check_checkpointing
from fedveil.privacy.planner import AutoConfig, Plan, PrivacyConfig, choose
from fedveil.privacy.policy import OwnerPolicy
from fedveil.privacy.secagg import BACKENDS

LIST_PREFIX = "json:"  # run-config values are scalars: lists and None travel as JSON strings


@dataclass
class SimulationConfig:
    """Flower Simulation Engine resources per virtual SuperNode."""

    client_cpus: float = 1.0
    client_gpus: float = 0.0
    round_timeout_s: float = 900.0
    # an existing Ray cluster to run the owners on ("auto", or the head's HOST:PORT, as `ray start
    # --head` prints it); None starts a local Ray instance for the run
    ray_address: Optional[str] = None

    def __post_init__(self) -> None:
        if self.client_cpus <= 0:
            raise UserError(f"sim.client_cpus must be > 0, got {self.client_cpus}")
        if self.ray_address is not None and self.ray_address != "auto":
            host, _, port = self.ray_address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"sim.ray_address='{self.ray_address}' is neither auto nor HOST:PORT: pass the address "
                                "`ray start --head` printed (e.g. sim.ray_address=10.0.0.5:6379), or auto")


@dataclass
class FedveilConfig:
    """One experiment. ``dp`` and ``aggregation`` hold the chosen option's own config.

    These dataclasses hold every default; the YAML tree repeats them for users to read and override,
    and pyproject's flwr app config leaves them unset: tests/configs/test_defaults.py fails on drift."""

    seed: int = 0
    rounds: int = 3
    num_clients: int = 3
    # owners sampled (uniformly, by the coordinator) to train each round, as FedAvg's fraction_train;
    # None: all. The sampled owners also evaluate their round's global (round 0: a sample of as
    # many); every owner evaluates the last round's. No DP amplification is claimed for it.
    clients_per_round: Optional[int] = None
    output_dir: str = ""  # filled in by the runner (Hydra's run directory)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    overwrite: bool = False  # delete an earlier run's outputs in output_dir first (owners' state is kept)
    # one exchange per round: round r's evaluation (and, tenseal, the re-encrypted global) rides in round
    # r+1's train message (each owner evaluates the global before training on it); only the last round
    # evaluates apart. Its eval fields join round r's row when round r+1's replies arrive (server/federation.py)
    eval_in_train: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: Any = None  # no default: from_dict refuses a config naming no dp (configs/config.yaml picks one)
    aggregation: Any = None  # likewise
    sim: SimulationConfig = field(default_factory=SimulationConfig)
    # what the federation trusts and can afford: aggregation=auto picks the backend from it, and
    # privacy.epsilon sets dp=sample_level with that target (privacy/planner.py)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # simulation only: each simulated owner's own policy, written into its state directory by the
    # runner; owners never read it from the server's messages
    owner_policy: OwnerPolicy = field(default_factory=OwnerPolicy)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UserError(f"rounds must be >= 1, got {self.rounds}")
        if self.num_clients < 1:
            raise UserError(f"num_clients must be >= 1, got {self.num_clients}")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.num_clients:
            raise UserError(f"clients_per_round must be between 1 and num_clients={self.num_clients} "
                            f"(or null for all), got {self.clients_per_round}")
        if self.data.client_dirs is not None and len(self.data.client_dirs) != self.num_clients:
            raise UserError(
                f"data.client_dirs lists {len(self.data.client_dirs)} owners but num_clients={self.num_clients}; "
                "make them agree"
            )


    @property
    def participants(self) -> int:
        """Owners that train in each round (``clients_per_round``, else all)."""
        return self.clients_per_round or self.num_clients


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore  # lazy: owners parse configs without Hydra

    cs = ConfigStore.instance()
    cs.store(name="fedveil_schema", node=FedveilConfig)
    for name, cls in DP_MODES.items():
        cs.store(group="dp", name=f"{name}_schema", node=cls)
    for name, spec in BACKENDS.items():
        cs.store(group="aggregation", name=f"{name}_schema", node=spec.config)
    cs.store(group="aggregation", name="auto_schema", node=AutoConfig)


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Construct dataclass ``cls`` from plain values, recursively; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown config key '{where}{unknown[0]}': valid keys here are {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = coerce(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


def coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, str) and value.startswith(LIST_PREFIX):
        value = json.loads(value[len(LIST_PREFIX):])
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return coerce(inner[0], value, key)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return build(hint, value, f"{key}.")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(args[0], v, key) for v in value] if args else list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise UserError(f"config key '{key}' must be {hint.__name__}, got {value!r}")
    return value


def from_dict(values: Mapping[str, Any], plan: Optional[Plan] = None) -> FedveilConfig:
    """A typed, validated :class:`FedveilConfig` from a nested plain dict. ``plan``: the planner's
    decision for these values where the caller has made it (``aggregation=auto`` resolves to its pick)."""
    values = dict(values)
    # No fallback for a missing dp or aggregation: every entry point names both (configs/config.yaml's
    # defaults list, pyproject's [tool.flwr.app.config]), and a silent default here would be a second
    # home for them, once the opposite of the documented one (privacy on).
    for key, choices in (("dp", sorted(DP_MODES)), ("aggregation", [*sorted(BACKENDS), "auto"])):
        if not (values.get(key) or {}).get("name"):
            raise UserError(f"the config names no {key}: choose {key}={'|'.join(choices)} ({key}.name in a run config)")
    dp, agg = dict(values.pop("dp")), dict(values.pop("aggregation"))
    if dp.get("name") not in DP_MODES:
        raise UserError(f"dp '{dp.get('name')}' is unknown: choose one of {sorted(DP_MODES)}")
    if agg.get("name") not in (*BACKENDS, "auto"):
        raise UserError(f"aggregation '{agg.get('name')}' is unknown: choose one of {sorted(BACKENDS)} or auto")
    cfg = build(FedveilConfig, values)
    agg, dp = resolve_privacy(cfg, agg, dp, plan)
    cfg.dp = build(DP_MODES[dp["name"]], dp, "dp.")
    resolve = BACKENDS[agg["name"]].resolve
    if resolve is not None:
        agg = resolve(agg, cfg.participants, dp["name"] != "off", cfg.train.update_clip_norm, cfg.rounds,
                      malicious_owners=cfg.privacy.malicious_owners)
    cfg.aggregation = build(BACKENDS[agg["name"]].config, agg, "aggregation.")
    check_owner_level(cfg)
    if cfg.dp.name == "sample_level" and cfg.model.gradient_checkpointing:
        check_checkpointing(cfg.dp.grad_sample_mode)
    min_owners = getattr(cfg.aggregation, "min_owners", 1)
    if cfg.participants < min_owners:
        raise UserError(f"aggregation={agg['name']} reveals no aggregate of fewer than aggregation.min_owners="
                        f"{min_owners} owners, but only {cfg.participants} train per round: raise clients_per_round "
                        "(or num_clients)")
    if cfg.resume and not BACKENDS[agg["name"]].can_resume:
        raise UserError(
            f"resume=true is not supported with aggregation={agg['name']} (a restart cannot reopen what its "
            "checkpoints hold); start a new run directory"
        )
    return cfg


def resolve_privacy(cfg: FedveilConfig, agg: dict[str, Any], dp: dict[str, Any],
                    plan: Optional[Plan] = None) -> tuple[dict, dict]:
    """``aggregation=auto``: the planner's pick from ``privacy.*`` (or a one-line refusal naming the
    assumption to relax); ``privacy.epsilon``: dp=sample_level with that target (and
    ``privacy.delta``). A named backend bypasses the planner. The resolved config is what travels
    to the ServerApp and the owners, so they never plan again."""
    if agg.get("name") == "auto":
        typed = {k: v for k, v in agg.items() if k != "name" and v is not None}  # auto_schema holds every key, unset
        dp_on = dp["name"] != "off" or cfg.privacy.epsilon is not None  # privacy.epsilon turns DP on below
        plan = plan or choose(cfg.privacy, cfg.participants, resume=cfg.resume,
                              allowed=list(cfg.owner_policy.allowed_backends), dp_on=dp_on,
                              carried=cfg.eval_in_train)
        plan.refuse()
        keys = {f.name for f in dataclasses.fields(BACKENDS[plan.pick].config)} - {"name"}
        if set(typed) - keys:
            raise UserError(f"aggregation.{sorted(set(typed) - keys)[0]} is not a key of {plan.pick}, the backend "
                            f"aggregation=auto picks here (its keys: {', '.join(sorted(keys))}); drop it, or name "
                            f"the backend (aggregation={'|'.join(BACKENDS)})")
        agg = {**plan.agg_values, **typed}
    p = cfg.privacy
    if p.epsilon is not None:
        keep = dp.get("name") in ("sample_level", "owner_level")  # an owner-level target stays owner-level
        # each unit has its own budget: an owner-level target meets the owner-level cap, never the sample-level one
        key = "owner_level_max_epsilon" if dp.get("name") == "owner_level" else "max_epsilon"
        cap = getattr(cfg.owner_policy, key)
        if cap is not None and p.epsilon > cap:
            raise UserError(f"privacy.epsilon={p.epsilon:g} is above the owners' policy {key}={cap:g}: lower "
                            f"privacy.epsilon")
        dp = {**(dp if keep else {"name": "sample_level"}), "target_epsilon": p.epsilon,
              **({"delta": p.delta} if p.delta is not None else {})}
    return agg, dp


def check_owner_level(cfg: FedveilConfig) -> None:
    """``dp=owner_level`` runs only where its noise is distributed: under crypten, whose parties' floor
    (``aggregation.min_owners``) enforces the owners' ``dp.min_honest_owners``, and under tenseal's BFV,
    whose owners count the signed contributions of each sum before they decrypt it. With ``plain`` the
    coordinator sees each update, which would need the full noise on each (local DP): that is what
    ``dp=sample_level`` is for."""
    if cfg.dp.name != "owner_level":
        return
    spec = BACKENDS[cfg.aggregation.name]
    if spec.integers is None:
        raise UserError(f"dp=owner_level needs aggregation=crypten (or tenseal with BFV), got aggregation="
                        f"{cfg.aggregation.name} (the coordinator would see each update with 1/t of the noise; for DP "
                        "against it use dp=sample_level)")
    if spec.integer_domain(cfg.aggregation) is None:  # tenseal's CKKS
        raise UserError(f"dp=owner_level under aggregation={cfg.aggregation.name} needs its integer domain: set "
                        "aggregation.scheme=bfv (CKKS sums approximately)")
    if getattr(cfg.aggregation, "download", None) == "sum":  # tenseal: owners count the signed contributions
        raise UserError("dp=owner_level under aggregation=tenseal needs signed contributions to count in each sum, "
                        "and aggregation.download=sum has none: set aggregation.download=committee (or every)")
    floor = getattr(cfg.aggregation, "min_owners", None)  # crypten's parties' floor (tenseal's owners count)
    if floor is not None and floor < cfg.dp.min_honest_owners:
        raise UserError(f"aggregation.min_owners={cfg.aggregation.min_owners} is below dp.min_honest_owners="
                        f"{cfg.dp.min_honest_owners}: a round could reveal fewer shares than carry the full noise; "
                        "raise aggregation.min_owners")


def to_dict(cfg: FedveilConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_run_config(cfg: FedveilConfig) -> dict[str, bool | int | float | str]:
    """Flatten for Flower's run config: dotted keys, scalars only; lists and None travel as JSON
    (``json:[...]``, ``json:null``); "" is dropped (Flower 1.42's ``ConfigRecord.count_bytes``
    rejects empty strings) and comes back as the field default, so only fields defaulting to ""
    may hold it."""
    from flwr.common.config import flatten_dict  # lazy: flwr (~1 s), only for run configs

    def encode(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: encode(v) for k, v in node.items() if v != ""}
        if node is None or isinstance(node, (list, tuple)):
            return LIST_PREFIX + json.dumps(node if node is None else list(node))
        return node

    return flatten_dict(encode(to_dict(cfg)))


def from_run_config(run_config: Mapping[str, Any]) -> FedveilConfig:
    from flwr.common.config import unflatten_dict  # lazy: flwr (~1 s), only for run configs

    # "" stands for "unset" (pyproject's [tool.flwr.app.config] cannot hold None)
    return from_dict(unflatten_dict({k: v for k, v in run_config.items() if v != ""}))


def run_key(cfg: FedveilConfig) -> str:
    """Identifies a run in the owner's epsilon ledger, key set-up and signed result (its output dir and config).
    ``resume`` is not part of it: a restarted run is the same run (the same keys, the same noise plan);
    nor is ``model.path``: a deployed owner trains its own copy of the base model (its worker's
    ``--model-path``; the layout digest binds the model), while its key set-up sees the coordinator's."""
    shared = dataclasses.asdict(cfg)
    shared.pop("resume")
    shared["model"].pop("path")
    blob = json.dumps(shared, sort_keys=True, default=str)
    return f"{cfg.output_dir}#{zlib.crc32(blob.encode()):08x}"
