"""``fedveil plan [overrides] [--json]``: what a run would protect, against whom, at what cost.

Before any run: each backend against the threats stated under ``privacy.*`` (covered, or why not),
its exact payload bytes per owner per round and the rough seconds it adds, the planned DP noise σ
and ε, and the pick with its reason. The same overrides as ``fedveil.experiments.run``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedveil.configs.schema import FedveilConfig, from_dict, register_schemas
from fedveil.core.console import quiet_libraries
from fedveil.core.errors import UserError
from fedveil.core.metrics import (BYTES_DOWN_FIGURE, BYTES_UP_FIGURE, EPSILON_FIGURE, PHASES, Figure, MetricsRow,
                                  seconds_figure, trained_rows)
from fedveil.privacy.dp import owner_level_plan
from fedveil.privacy.dp.accounting import epsilon_of, plan_noise
from fedveil.privacy.planner import (candidate_config, choose, download_form, download_forms, estimate,
                                     rough_phase_seconds)
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.base import Cost
from fedveil.task.model import get_adapter, load_lora_skeleton
from fedveil.task.tiny import byte_level_tokenizer, tiny_config


def compose(overrides: list[str]) -> dict:
    from fedveil.experiments.run import CONFIG_MODULE, hydra_error_line  # lazy: run imports this module

    register_schemas()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(hydra_error_line(exc)) from None


def adapter_values(model_cfg, seed: int) -> int:
    """Adapter values of the configured model, from its config alone (meta device, no weights)."""
    if model_cfg.path:
        return sum(v.size for v in get_adapter(load_lora_skeleton(model_cfg, seed)).values())
    tok = byte_level_tokenizer()
    config = tiny_config(model_cfg.tiny, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        model = load_lora_skeleton(replace(model_cfg, path=tmp), seed)
        return sum(v.size for v in get_adapter(model).values())


def dp_plan(cfg, values: int = 0) -> dict | None:
    """σ and ε an owner would plan for the whole run (``dp.sample_rate``, rounds x local steps).

    With ``clients_per_round`` the plan is the same: the coordinator picks who trains, so no
    privacy amplification by that sampling is claimed; an owner left out of a round spends nothing."""
    dp = cfg.dp
    if dp.name == "off":
        return None
    if dp.name == "owner_level":  # rounds are its steps; gamma and mu as the runner plans them (values: the adapter's)
        planned = replace(dp)
        domain = backend_spec(cfg.aggregation.name).integer_domain(cfg.aggregation)
        owner_level_plan.resolve(planned, values, cfg.participants, cfg.rounds, domain)
        # where owners share the key (tenseal), each sees other owners' single updates: its own epsilon there
        shared_key = not backend_spec(cfg.aggregation.name).guarantees.owner_collusion
        return {"mode": dp.name, "target_epsilon": dp.target_epsilon, "delta": dp.delta, "sample_rate": dp.sample_rate,
                "steps": cfg.rounds, "accountant": "skellam-rdp", "noise_multiplier": planned.sigma,
                "gamma": planned.gamma, "mu": planned.mu, "epsilon": owner_level_plan.run_epsilon(planned, values,
                                                                                                 cfg.rounds),
                "min_honest_owners": planned.min_honest_owners,
                "epsilon_other_owners": (owner_level_plan.epsilon_against_owners(planned, values, cfg.rounds)
                                         if shared_key else None)}
    steps = cfg.rounds * cfg.train.local_steps
    sigma = dp.noise_multiplier
    if sigma is None:
        sigma = plan_noise(dp.target_epsilon, dp.delta, dp.sample_rate, steps, dp.accountant,
                           max_noise=dp.max_noise_multiplier)
    return {"mode": dp.name, "target_epsilon": dp.target_epsilon, "delta": dp.delta, "sample_rate": dp.sample_rate,
            "steps": steps, "accountant": dp.accountant, "noise_multiplier": sigma,
            "epsilon": epsilon_of([(sigma, dp.sample_rate, steps)], dp.delta, dp.accountant)}


def make_plan(overrides: list[str]) -> dict:
    """The plan as plain data (what ``--json`` prints). ``pick`` is None where nothing covers."""
    return plan_of(compose(overrides))


def plan_of(values: dict) -> dict:
    """The plan of a composed config (what the runner prints first and keeps in summary.json)."""
    return planned_run(values)[1]


def planned_run(values: dict) -> tuple[FedveilConfig | None, dict]:
    """The planner, run once for a composed config: the run's config (``aggregation=auto`` resolved
    to the plan's pick; None where the planner refuses) and the plan as data.

    ``run``: the cost of the backend the run uses, with its own config (e.g. crypten's
    ``aggregation.parties``), by phase: what :func:`planned_vs_measured` compares with the run."""
    requested = (values.get("aggregation") or {}).get("name", "plain")
    # parse everything but the pick (the planner below says why, refusal included)
    stand_in = "crypten" if (values.get("dp") or {}).get("name") == "owner_level" else "plain"  # it runs only there
    cfg = from_dict({**values, "aggregation": {"name": stand_in}} if requested == "auto" else values)
    n = adapter_values(cfg.model, cfg.seed)
    dp_on = cfg.dp.name != "off"  # privacy.epsilon already set dp (from_dict): without DP the pairs travel
    carried = cfg.eval_in_train  # each round's evaluation in the next round's train message: one global down
    plan = choose(cfg.privacy, cfg.participants, values=n, resume=cfg.resume,
                  allowed=list(cfg.owner_policy.allowed_backends), dp_on=dp_on, carried=carried)
    if requested == "auto":
        pick, reason = plan.pick, plan.reason
        run_cfg = from_dict(values, plan=plan) if pick else None  # auto resolved to this plan's pick
    else:
        verdict = next(v for v in plan.verdicts if v.backend == requested)
        pick, run_cfg = requested, cfg
        reason = (
            f"aggregation={requested} was named, so the planner is bypassed"
            + ("" if verdict.covered else f"; it does NOT cover the stated threats ({'; '.join(verdict.why_not)})")
            + (f"; the planner would pick {plan.pick}" if plan.pick and plan.pick != requested else "")
        )
    run = None
    if run_cfg is not None:
        run_agg = run_cfg.aggregation
        run = {**estimate(run_agg.name, run_agg, n, cfg.participants, dp_on=dp_on, carried=carried).as_dict(),
               "phase_seconds": rough_phase_seconds(run_agg.name, n, cfg.participants)}
    form, checked = download_form(cfg.privacy)
    forms = {}
    # plain's download a round in this mode and with its evaluation apart (two globals: issue 23's basis)
    plain = {"same_mode": estimate("plain", candidate_config("plain", cfg.privacy), n, cfg.participants, dp_on=dp_on,
                                   carried=carried).global_down,
             "apart": estimate("plain", candidate_config("plain", cfg.privacy), n, cfg.participants,
                               dp_on=dp_on).global_down}
    for v in plan.verdicts:
        agg = (run_cfg.aggregation if run_cfg is not None and run_cfg.aggregation.name == v.backend
               else candidate_config(v.backend, cfg.privacy, cfg.participants))
        priced = download_forms(v.backend, agg, n, cfg.participants, dp_on=dp_on, carried=carried)
        if priced:  # tenseal: what each way of downloading a round costs, and the form the run resolves
            runs = getattr(agg, "download", "auto")
            forms[v.backend] = {"for_threats": form, "range_checked": checked, "plain_down": plain,
                                "runs": form if runs == "auto" else runs,
                                **{name: c.as_dict() for name, c in priced.items()}}
    return run_cfg, {
        "owners": cfg.num_clients, "clients_per_round": cfg.participants, "rounds": cfg.rounds,
        "local_steps": cfg.train.local_steps,
        "adapter_values": n, "model": cfg.model.path or f"tiny {cfg.model.tiny.arch}",
        "privacy": {k: getattr(cfg.privacy, k) for k in cfg.privacy.__dataclass_fields__},
        "requested": requested,
        "evaluation": "carried" if carried else "apart",
        "backends": [{"backend": v.backend, "covered": v.covered, "why_not": v.why_not, **v.cost.as_dict(),
                      "last_round_down": v.cost.down_in(cfg.rounds, cfg.rounds),
                      "last_round_per_owner": v.cost.last_per_owner(cfg.rounds)}
                     for v in plan.verdicts],
        "download_forms": forms,
        "dp": dp_plan(cfg, n),
        "pick": pick, "reason": reason, "run": run,
        "seconds_note": "rough: the backend's protect + aggregate + reveal from privacy/calibration.json; "
                        "training, evaluation and network time excluded",
        "bytes_note": "exact payload bytes (protect() output, global adapter); Flower's config/metric records "
                      "add a few KB per message",
    }


def planned_vs_measured(plan: dict, rows: list[MetricsRow], max_epsilon: float | None) -> dict[str, Figure]:
    """Per figure: the plan's value, the run's measured value (metrics.jsonl) and measured/planned.

    Bytes are means over owners and trained rounds (measured includes Flower's config and metric
    records, which the plan leaves out); up is the update (the train reply), down everything an owner
    downloads (the one evalsum message of a round included); seconds per phase are means over trained rounds (the plan
    is rough and covers only the backend's phases: no figure for train and evaluate); epsilon is
    the largest any owner reported against the ε every owner planned."""
    run = plan.get("run")
    trained = trained_rows(rows)
    if not run or not trained:
        return {}

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    owners = [c for r in trained for c in r.per_client.values()]
    # without DP under tenseal one owner a round also downloads the round's held-out pairs (evalsum): the
    # measured mean over owners spreads it over the round's owners, and so does the plan (a plan from
    # before the held-out pair has no evalsum_down: 0). Carried (eval_in_train), round 1 and the last
    # round differ from a steady one (Cost.down_in), and the last round brings two evalsums.
    cost, rounds = Cost.of(run), plan.get("rounds") or max(r.round for r in trained)
    planned_down = mean([cost.down_in(r.round, rounds)
                         + cost.evaluations_in(r.round, rounds) * cost.evalsum_down / len(r.per_client)
                         for r in trained for _ in r.per_client])
    figures = {
        BYTES_UP_FIGURE: (run["update_up"], mean([c.bytes_update_up for c in owners])),
        BYTES_DOWN_FIGURE: (planned_down, mean([c.bytes_down for c in owners])),
    }
    for phase in PHASES:
        planned = run["phase_seconds"].get(phase)
        if phase == "round":
            planned = None  # training dominates a round and is not modelled
        figures[seconds_figure(phase)] = (planned, mean([r.seconds.of(phase) for r in trained]))
    dp = plan.get("dp")
    figures[EPSILON_FIGURE] = (dp["epsilon"] if dp else None, max_epsilon)
    return {name: Figure(p, m, (m / p) if p and m is not None else None) for name, (p, m) in figures.items()}


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def render(p: dict) -> str:
    pr = p["privacy"]
    sampled = p.get("clients_per_round", p["owners"])
    owners = f"{p['owners']} owners" + (f" ({sampled} sampled to train per round)" if sampled < p["owners"] else "")
    lines = [f"fedveil plan: {owners} x {p['rounds']} rounds x {p['local_steps']} local steps | "
             f"adapter {p['adapter_values']:,} values ({p['model']})",
             "stated: " + " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in pr.items()),
             f"{'backend':8s} {'covers':6s} {'up/owner':>10s} {'down/owner':>11s} {'per party in':>12s} "
             f"{'+s/round':>8s}  why not"]
    for b in p["backends"]:
        party = human(b["party_in"]) if b["parties"] else "-"
        up = b["update_up"] + b.get("eval_up", 0)  # without DP the held-out pair rides up too
        lines.append(f"{b['backend']:8s} {'yes' if b['covered'] else 'no':6s} {human(up):>10s} "
                     f"{human(b['global_down']):>11s} {party:>12s} {b['seconds']:8.2f}  {'; '.join(b['why_not'])}")
    for name, f in p.get("download_forms", {}).items():
        lines += download_lines(name, f, p.get("evaluation", "apart"))
    dp = p["dp"]
    if dp:
        lines.append(f"DP: {dp['mode']}, target epsilon {dp['target_epsilon']:g} at delta {dp['delta']:g}, "
                     f"q {dp['sample_rate']:g}, {dp['steps']} steps -> noise sigma {dp['noise_multiplier']:.3f}, "
                     f"epsilon {dp['epsilon']:.3f} ({dp['accountant']})")
        if dp.get("epsilon_other_owners") is not None:
            lines.append(f"DP against other owners: epsilon {dp['epsilon_other_owners']:.3f} (owners share the key, "
                         f"so each can decrypt one owner's update, which carries that owner's noise share alone: "
                         f"1/sqrt(t) of the noise, t = {dp['min_honest_owners']}); against the coordinator "
                         f"{dp['epsilon']:.3f}")
        if sampled < p["owners"]:
            lines.append(f"DP with owner sampling: no amplification is claimed (the coordinator picks who trains); "
                         f"sigma is planned as if every owner trained every round, and an owner spends epsilon only in "
                         f"the rounds it trains, so it ends at or below {dp['epsilon']:.3f}")
    else:
        lines.append("DP: off (set privacy.epsilon=E, or dp=sample_level, for DP-SGD on every owner)")
    lines.append(f"pick: {p['reason']}" if p["pick"] else "pick: none")
    if p.get("evaluation") == "carried":
        limit = pr.get("max_bytes_per_round")
        over = [b["backend"] for b in p["backends"] if limit is not None and b["last_round_per_owner"] > limit]
        lines.append("last round (its evaluation apart): down/owner "
                     + ", ".join(f"{b['backend']} {human(b['last_round_down'])}" for b in p["backends"])
                     + (f"; over privacy.max_bytes_per_round={limit:,} in the last round: {', '.join(over)}"
                        if over else ""))
        lines.append("(bytes: exact payloads per round, priced with eval_in_train=true: down = the train message, "
                     "which carries the round before's evaluation, in a steady-state round; "
                     "+s/round: rough backend overhead, training excluded)")
    else:
        lines.append("(bytes: exact payloads per round, priced with eval_in_train=false: down = train + evaluate "
                     "messages in a steady-state round; +s/round: rough backend overhead, training excluded)")
    return "\n".join(lines)


def download_lines(name: str, f: dict, mode: str) -> list[str]:
    """A backend's download forms per owner per round (mean over owners, max, outside the committee, a member) as
    ratios to plain's download in the same mode, and in brackets to plain's with its evaluation apart (two
    globals a round: where issue 23's targets are set); then the floor every committee design meets."""
    same, apart = f["plain_down"]["same_mode"], f["plain_down"]["apart"]

    def x(v: float | None) -> str:
        return "-" if v is None else f"x{v / same:.2f}" + ("" if same == apart else f" [x{v / apart:.2f}]")

    basis = f"plain's {human(same)}" + ("" if same == apart else f" ({mode}); [vs {human(apart)}, plain's evaluation "
                                                                 "apart]")
    lines = [f"{name} download per owner per round vs {basis}; for the stated threats: {f['for_threats']}"
             f"{' (each update range-checked)' if f['range_checked'] else ''}; "
             f"the run's form (aggregation.download): {f['runs']}",
             f"  {'form':14s} {'mean':>17s} {'max':>17s} {'outside':>17s} {'member':>17s}"]
    for form in ("every", "committee", "sum"):
        c = f[form]
        label = f"committee of {c['committee']}" if c["committee"] else form
        member = c["committee_down"] if c["committee"] else None
        lines.append(f"  {label:14s} {x(c['mean_down']):>17s} {x(c['max_down']):>17s} {x(c['global_down']):>17s} "
                     f"{x(member):>17s}")
    c = f["committee"]
    if c["committee"]:
        n, k = c["owners"], c["committee"]
        # what a member downloads per other update (carried: less the sum that c owners a round computed themselves)
        per = (c["committee_down"] - c["global_down"] - c.get("member_kept", 0)) / max(n - 1, 1)
        lines.append(f"  floor: {k} members each download the other {n - 1} updates ({x(per)} each, less the sums "
                     "they computed), so the mean "
                     f"over {n} owners is at least outside + {k} x {n - 1}/{n} x that = {x(c['global_down'])} + "
                     f"{x(k * (n - 1) / n * per)}, whatever the design")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedveil plan", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, as for fedveil.experiments.run")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        plan = make_plan(args.overrides)
    except UserError as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    if plan["pick"] is None:
        print(f"fedveil: error: {plan['reason']}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
