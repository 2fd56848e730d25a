"""The planner: one threat table in code, the pick per stated threat, exact byte estimates, `fedveil plan`."""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from nacl.public import PrivateKey
from omegaconf import OmegaConf

from fedveil.configs.schema import from_dict, from_run_config, register_schemas, to_run_config
from fedveil.core.errors import UserError
from fedveil.core.payload import RoundContext
from fedveil.experiments.plan import make_plan
from fedveil.privacy import planner
from fedveil.privacy.planner import PrivacyConfig, Refusal, candidate_config, choose, estimate, threat_table_markdown
from fedveil.privacy.secagg import BACKENDS, COORDINATOR_THREATS
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.identity import OwnerKeys
from fedveil.privacy.secagg.plain import PlainBackend
from fedveil.privacy.secagg.tenseal import cost as tenseal_cost
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, SignedBase, to_arrays

ROOT = Path(__file__).resolve().parents[2]
TINY_VALUES = 16_384  # the tiny GPT-2's adapter (r=8 on c_attn, c_proj, c_fc; 2 layers)


# --- the threat table: each row's pick ----------------------------------------------------------

@pytest.mark.parametrize("stated, owners, pick", [
    (dict(coordinator="trusted"), 3, "plain"),
    (dict(coordinator="curious"), 3, "tenseal"),
    (dict(coordinator="malicious"), 3, "tenseal"),
    (dict(coordinator="curious", aggregator_parties=3), 3, "crypten"),
    (dict(coordinator="trusted", owner_collusion=True, aggregator_parties=3), 3, "crypten"),
    (dict(coordinator="curious", owner_collusion=True, aggregator_parties=4), 5, "crypten"),
    # crypten, as built, does not survive a malicious coordinator (party keys are relayed by it)
    (dict(coordinator="malicious", aggregator_parties=3), 3, "tenseal"),
    # crypten reveals no aggregate of fewer than 3 owners: with 2, parties do not help
    (dict(coordinator="curious", aggregator_parties=3), 2, "tenseal"),
])
def test_the_pick_for_each_row_of_the_threat_table(stated, owners, pick):
    plan = choose(PrivacyConfig(**stated), owners, dp_on=True)
    assert plan.pick == pick, plan.reason
    assert plan.reason.startswith(f"{pick}: the cheapest backend covering")
    assert plan.agg_values["name"] == pick
    if pick == "crypten":
        assert plan.agg_values["parties"] == stated["aggregator_parties"]


@pytest.mark.parametrize("stated, relax", [
    (dict(coordinator="curious", owner_collusion=True), "privacy.owner_collusion=false (-> tenseal) or "
                                                        "privacy.aggregator_parties=3 (-> crypten)"),
    (dict(coordinator="trusted", owner_collusion=True), "privacy.owner_collusion=false (-> plain)"),
    (dict(coordinator="malicious", owner_collusion=True, aggregator_parties=3),
     "privacy.owner_collusion=false (-> tenseal) or privacy.coordinator=curious (-> crypten)"),
])
def test_collusion_without_a_covering_backend_is_refused_in_one_line_naming_what_to_relax(stated, relax):
    plan = choose(PrivacyConfig(**stated), 3, dp_on=True)
    assert plan.pick is None
    with pytest.raises(Refusal) as err:
        plan.refuse()
    line = str(err.value)
    assert "\n" not in line and line.startswith("no aggregation backend covers") and relax in line


def test_every_backend_declares_its_guarantees_and_they_match_its_behaviour():
    for name, spec in BACKENDS.items():
        g = spec.guarantees
        assert g is not None, name
        assert set(g.coordinator) <= set(COORDINATOR_THREATS) and "trusted" in g.coordinator
        for threat in [*[c for c in COORDINATOR_THREATS if c not in g.coordinator],
                       *(["owner_collusion"] if not g.owner_collusion else [])]:
            assert g.reason(threat), f"{name} gives no reason for not covering {threat}"
    # a backend whose server sees single updates cannot claim anything beyond a trusted coordinator
    assert PlainBackend.server_sees_updates and BACKENDS["plain"].guarantees.coordinator == ("trusted",)


def test_bad_privacy_values_are_one_line():
    for kwargs, match in [(dict(coordinator="evil"), "privacy.coordinator must be one of"),
                          (dict(aggregator_parties=1), "privacy.aggregator_parties must be 0"),
                          (dict(epsilon=0), "privacy.epsilon must be > 0"),
                          (dict(delta=1e-5), "privacy.delta is set without privacy.epsilon"),
                          (dict(max_bytes_per_round=0), "privacy.max_bytes_per_round must be > 0")]:
        with pytest.raises(UserError, match=re.escape(match)):
            PrivacyConfig(**kwargs)


def test_limits_rule_backends_out_and_the_refusal_says_which():
    cost = estimate("tenseal", BACKENDS["tenseal"].config(), TINY_VALUES, 3, dp_on=True)
    plan = choose(PrivacyConfig(coordinator="curious", max_bytes_per_round=cost.per_owner - 1), 3, values=TINY_VALUES,
                  dp_on=True)
    assert plan.pick is None and "privacy.max_bytes_per_round=null (-> tenseal)" in plan.reason
    tenseal = next(v for v in plan.verdicts if v.backend == "tenseal")
    assert tenseal.why_not == [f"moves {cost.per_owner:,} bytes per owner per round, over "
                               f"privacy.max_bytes_per_round={cost.per_owner - 1:,}"]
    assert choose(PrivacyConfig(coordinator="curious", max_bytes_per_round=cost.per_owner), 3,
                  values=TINY_VALUES, dp_on=True).pick == "tenseal"


# --- the config: aggregation=auto and privacy.epsilon ------------------------------------------

def composed(overrides):
    register_schemas()
    with initialize_config_module("fedveil.configs", version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def test_auto_resolves_before_the_run_and_named_backends_bypass_the_planner():
    cfg = from_dict(composed(["aggregation=auto", "privacy.coordinator=curious", "privacy.aggregator_parties=3",
                              "privacy.epsilon=4"]))
    assert (cfg.aggregation.name, cfg.aggregation.parties) == ("crypten", 3)
    assert (cfg.dp.name, cfg.dp.target_epsilon, cfg.dp.delta) == ("sample_level", 4.0, 1e-5)
    assert from_run_config(to_run_config(cfg)) == cfg  # what the ServerApp and owners rebuild: no re-planning
    named = from_dict(composed(["aggregation=plain", "privacy.coordinator=malicious", "dp=off"]))
    assert named.aggregation.name == "plain" and named.dp.name == "off"
    with pytest.raises(Refusal, match="relax privacy.owner_collusion=false"):
        from_dict(composed(["aggregation=auto", "privacy.owner_collusion=true"]))
    with pytest.raises(UserError, match="above the owners' policy max_epsilon=2"):
        from_dict(composed(["privacy.epsilon=4", "owner_policy.max_epsilon=2"]))
    policy = from_dict(composed(["aggregation=auto", "privacy.coordinator=curious", "privacy.aggregator_parties=3",
                                 "owner_policy.allowed_backends=[tenseal]"]))
    assert policy.aggregation.name == "tenseal"
    # a restart keeps tenseal's keys (owners hold them), so resume=true no longer rules it out
    resumed = from_dict(composed(["aggregation=auto", "privacy.coordinator=malicious", "resume=true"]))
    assert resumed.aggregation.name == "tenseal" and resumed.resume
    assert from_dict(composed(["aggregation=tenseal", "resume=true"])).resume


# --- the cost model against what the backends really produce ----------------------------------

def measured_update_bytes(name: str, values: int, parties: int = 3, agg=None) -> int:
    """Bytes of one owner's protected update, from the backend's own protect()."""
    delta = np.random.default_rng(0).normal(0, 1e-2, values).astype(np.float32)
    if name == "plain":
        return PlainBackend(None, values).protect(delta, 1.0).nbytes
    if name == "tenseal":
        agg = agg or TensealConfig()
        ctx = make_context(agg)
        with tempfile.TemporaryDirectory() as state_dir:  # an owner signs its update: its keys
            backend = TensealOwner(agg, values, public=public_bytes(ctx), secret=secret_bytes(ctx),
                                   keys=OwnerKeys("client_0", state_dir), run="run")
            return backend.protect(delta, 12.0, RoundContext(1, "f" * 64, "client_0")).nbytes
    keys = [bytes(PrivateKey.generate().public_key) for _ in range(parties)]
    with tempfile.TemporaryDirectory() as state_dir:  # an owner signs its share bundle: its keys
        backend = CryptenBackend(CryptenConfig(parties=parties), values, party_keys=keys,
                                 keys=OwnerKeys("client_0", state_dir))
        return backend.protect(delta, 12.0, RoundContext(1, "f" * 64, "client_0")).nbytes


MID_VALUES = 262_144  # bench_secagg's mid model (hidden 512, 4 layers): its adapter size


@pytest.mark.parametrize("values", [TINY_VALUES, MID_VALUES], ids=["tiny", "mid"])
@pytest.mark.parametrize("name", ["plain", "tenseal", "tenseal-ckks", "crypten"])
def test_byte_estimate_equals_protect_output_on_the_tiny_and_mid_adapters(name, values):
    name, scheme = (name.split("-") + [None])[:2]
    agg = BACKENDS[name].config(**({"scheme": scheme} if scheme else {}))
    estimated = estimate(name, agg, values, 3, dp_on=True).update_up
    measured = measured_update_bytes(name, values, getattr(agg, "parties", 3), agg)
    assert abs(estimated - measured) <= 0.02 * measured, (estimated, measured)
    assert estimated == measured  # the layouts are deterministic: exact, in fact
    assert BACKENDS[name].update_bytes(agg, values) == estimated


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_tenseal_global_down_is_the_encrypted_global_the_server_sends(tmp_path, scheme):
    """A round sends its signed updates (evaluate); the signed base only to an owner that keeps no global."""
    values, owners = 5000, 3
    cfg = TensealConfig(scheme=scheme)
    ctx = make_context(cfg)
    sides = {f"client_{i}": TensealOwner(cfg, values, public=public_bytes(ctx), secret=secret_bytes(ctx),
                                         keys=OwnerKeys(f"client_{i}", str(tmp_path / str(i))), run="run")
             for i in range(owners)}
    delta = np.random.default_rng(0).normal(0, 1e-2, values)
    payloads = {o: b.protect(delta, 1.0, RoundContext(1, "L", o)) for o, b in sides.items()}
    updates = TensealServer(cfg, values, public=public_bytes(ctx)).combine(payloads, RoundContext(1, "L"))
    pending = [updates.payload.blobs[ROUND_UPDATES]]
    blob, signature = sides["client_0"].encrypt_global(delta, 1)
    base = SignedBase(blob, 1, "client_0", signature)

    def nbytes(arrays):
        return sum(a.nbytes for a in arrays.values())

    c = estimate("tenseal", cfg, values, owners, dp_on=True)
    assert c.global_down_first == c.global_down == nbytes(to_arrays(None, pending))  # the owner keeps the base
    assert tenseal_cost.base_bytes(cfg, values, planner.calibration()) == nbytes(to_arrays(base, []))  # else this too
    assert c.reencrypt_up == len(blob) + len(signature)
    plain = estimate("plain", BACKENDS["plain"].config(), TINY_VALUES, 3, dp_on=True)
    assert plain.global_down == 8 * TINY_VALUES


def test_privacy_never_imports_flower():
    code = ("import sys, fedveil.privacy.planner, fedveil.privacy.secagg; "
            "assert not [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')], 'flwr imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- docs/privacy.md ---------------------------------------------------------------------------

def test_readme_threat_table_is_the_declared_guarantees():
    """The threat table moved from README to docs/privacy.md (README links it); the test name stays."""
    readme = (ROOT / "docs" / "privacy.md").read_text()
    block = re.search(r"<!-- threat-table: generated.*?-->\n(.*?)\n<!-- /threat-table -->", readme, re.S)
    assert block, "docs/privacy.md lacks the generated threat table"
    assert block.group(1).strip() == threat_table_markdown(), (
        "docs/privacy.md's threat table differs from the Guarantees: paste planner.threat_table_markdown()")
    for name, spec in BACKENDS.items():  # every backend has its row, caveats included
        row = next(line for line in block.group(1).splitlines() if line.startswith(f"| `{name}` |"))
        assert all(c in row for c in spec.guarantees.caveats)


def test_the_cost_table_in_docs_is_the_backends_declared_costs():
    """docs/backends.md's cost table is planner.cost_table_markdown(), at the tiny adapter's size."""
    from fedveil.experiments.plan import adapter_values  # lazy: loads the model skeleton
    from fedveil.task.model import ModelConfig

    assert adapter_values(ModelConfig(), 0) == planner.COST_TABLE_VALUES
    page = (ROOT / "docs" / "backends.md").read_text()
    block = re.search(r"<!-- cost-table: generated.*?-->\n(.*?)\n<!-- /cost-table -->", page, re.S)
    assert block, "docs/backends.md lacks the generated cost table"
    table = planner.cost_table_markdown()
    assert block.group(1).strip() == table, "docs/backends.md's cost table differs: paste planner.cost_table_markdown()"
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines()[2:]}
    assert set(b for b, _ in rows) == {f"`{name}`" for name in BACKENDS}
    # issue 23's targets, as the table states them: outside the committee and the sum within 2.2x plain carried,
    # the mean within 4x plain apart
    assert rows[("`tenseal`", "`committee` of 2, outside it")].endswith("| x2.17 (x1.08) |")
    assert rows[("`tenseal`", "`sum`")].endswith("| x2.08 (x1.04) |")
    assert rows[("`tenseal`", "`committee` of 2, mean over owners")].endswith("| x6.10 (x3.05) |")


# --- fedveil plan -------------------------------------------------------------------------------

def fedveil(*args):
    return subprocess.run([sys.executable, "-m", "fedveil.server.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_fedveil_plan_json_parses_and_names_the_pick():
    proc = fedveil("plan", "aggregation=auto", "privacy.coordinator=curious", "privacy.epsilon=4", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["pick"] == "tenseal" and plan["reason"].startswith("tenseal:")
    assert plan["adapter_values"] == TINY_VALUES
    rows = {b["backend"]: b for b in plan["backends"]}
    assert set(rows) == set(BACKENDS) and rows["tenseal"]["covered"] and not rows["plain"]["covered"]
    assert rows["tenseal"]["update_up"] == estimate("tenseal", BACKENDS["tenseal"].config(), TINY_VALUES, 3,
                                                    dp_on=True).update_up
    assert plan["dp"]["epsilon"] <= 4.0 and plan["dp"]["noise_multiplier"] > 0 and plan["dp"]["steps"] == 60


def test_fedveil_plan_refusal_and_bad_input_are_one_line_exit_2():
    proc = fedveil("plan", "aggregation=auto", "privacy.owner_collusion=true")
    assert proc.returncode == 2 and "plain" in proc.stdout  # the table still shows why each backend is out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedveil: error: no aggregation backend covers")
    bad = fedveil("plan", "privacy.coordinator=evil")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "privacy.coordinator must be one of" in lines[0]
    assert "Traceback" not in bad.stderr


RECORDS = 8_000  # Flower's config and metric records per owner per round, which the plan leaves out (a few KB)


@pytest.mark.slow
def test_an_auto_run_moves_the_planned_bytes(tmp_path):
    """aggregation=auto with a curious coordinator and a DP target runs tenseal + DP-SGD end to end,
    and metrics.jsonl's bytes match the cost model within 2 % (Flower's records add the rest), each
    round's evaluation carried in the next round's train (the default): round 1 downloads no global."""
    proc = subprocess.run([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={tmp_path}/run",
                           "experiment=smoke", "num_clients=3", "aggregation=auto", "privacy.coordinator=curious",
                           "privacy.epsilon=8", "aggregation.download=every"],  # the form estimate() prices
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "planner (aggregation=auto): tenseal: the cheapest backend" in proc.stdout
    cost = estimate("tenseal", BACKENDS["tenseal"].config(), TINY_VALUES, 3, dp_on=True, carried=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["backend"] for r in rows] == ["tenseal", "tenseal"] and all(r["dp"] == "sample_level" for r in rows)
    for r in rows:
        planned_down = cost.down_in(r["round"], 2)  # 0, then round 1's updates + the last round's evaluate message
        for c in r["per_client"].values():
            assert abs(c["bytes_update_up"] - cost.update_up) <= 0.02 * cost.update_up
            assert planned_down <= c["bytes_down"] <= 1.02 * planned_down + RECORDS, (r["round"], c["bytes_down"])
            assert c["epsilon"] <= 8.0
    # the run kept its plan, and the same comparison per figure, in summary.json
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["plan"]["run"]["carried"] is True
    figures = summary["planned_vs_measured"]
    assert 1.0 <= figures["bytes_up_per_owner_per_round"]["ratio"] <= 1.02
    assert 1.0 <= figures["bytes_down_per_owner_per_round"]["ratio"] <= 1.02
    assert 0.99 <= figures["epsilon"]["ratio"] <= 1.0  # planned sigma reaches the target; nothing overspent


def test_calibration_fit_recovers_fixed_and_per_value_seconds_and_the_planner_uses_both(monkeypatch):
    truth = {"protect": (0.05, 1e-6), "aggregate": (0.01, 2e-7), "reveal": (0.02, 4e-7)}
    points = [(v, 3, {k: (a + b * v) * (3 if k == "aggregate" else 1) for k, (a, b) in truth.items()})
              for v in (16_384, 262_144)]
    fixed, per_value = planner.fit_phase_seconds(points)
    assert fixed == {"protect": 0.05, "aggregate_per_owner": 0.01, "reveal": 0.02}
    assert per_value == {"protect": 1e-6, "aggregate_per_owner": 2e-7, "reveal": 4e-7}
    with pytest.raises(ValueError, match="two or more adapter sizes"):
        planner.fit_phase_seconds(points[:1])
    monkeypatch.setattr(planner, "calibration", lambda: {"fixed_seconds": {"tenseal": fixed},
                                                         "seconds_per_value": {"tenseal": per_value}})
    phases = planner.rough_phase_seconds("tenseal", 100_000, 4)
    assert phases == pytest.approx({"protect": 0.15, "aggregate": 4 * 0.03, "reveal": 0.06})


@pytest.mark.parametrize("cohort", [100, 1000, 2000], ids=["45-bit", "42-bit", "ring-8192"])
def test_the_byte_estimate_follows_the_parameters_chosen_for_the_cohort(cohort):
    agg = TensealConfig(max_owners=cohort)
    assert (agg.poly_modulus_degree, agg.plain_modulus_bits) == {100: (4096, 45), 1000: (4096, 42),
                                                                 2000: (8192, 59)}[cohort]
    assert BACKENDS["tenseal"].update_bytes(agg, TINY_VALUES) == measured_update_bytes("tenseal", TINY_VALUES, agg=agg)
    assert candidate_config("tenseal", PrivacyConfig(), cohort) == agg  # what the planner prices


def test_the_byte_limit_checks_a_steady_round_and_the_plan_says_when_the_last_round_exceeds_it():
    """Carried (the default) a steady plain round moves the update, the pair and one global; the last round
    adds its evaluate message and a second pair: over a limit that a steady round fits, and the plan says so."""
    limit = 150_000
    plan = make_plan(["aggregation=plain", "dp=off", "model.tiny.arch=gpt2", f"privacy.max_bytes_per_round={limit}"])
    plain = next(b for b in plan["backends"] if b["backend"] == "plain")
    assert plan["evaluation"] == "carried" and plain["carried"] is True
    assert plain["per_owner"] == 65_544 + 16 + 65_536 <= limit < plain["last_round_per_owner"] == 196_632 + 16
    assert all("max_bytes" not in w for w in plain["why_not"])  # a steady round fits
    from fedveil.experiments.plan import render  # lazy: as the test below
    last = next(x for x in render(plan).splitlines() if x.startswith("last round"))
    assert last.startswith("last round (its evaluation apart): down/owner plain 131.07 KB")
    assert last.split("; over privacy.max_bytes_per_round=150,000 in the last round: ")[1].split(", ")[0] == "plain"
    apart = make_plan(["aggregation=plain", "dp=off", "eval_in_train=false", f"privacy.max_bytes_per_round={limit}"])
    assert next(b for b in apart["backends"] if b["backend"] == "plain")["per_owner"] == 65_544 + 16 + 131_072 > limit


@pytest.mark.parametrize("named", [[], ["aggregation=tenseal"]], ids=["auto", "tenseal"])
def test_a_plan_for_1000_owners_with_100_per_round_uses_the_defaults(named):
    plan = make_plan(["num_clients=1000", "clients_per_round=100", *named])
    assert plan["pick"] == "tenseal" and plan["clients_per_round"] == 100
    # the run's form (download=auto -> committee, malicious owners stated): the nonce commitment beside each update
    from fedveil.privacy.secagg.tenseal.cost import COMMIT_BYTES
    assert plan["run"]["update_up"] == BACKENDS["tenseal"].update_bytes(TensealConfig(max_owners=100),
                                                                        TINY_VALUES) + COMMIT_BYTES


def test_a_cohort_no_bfv_set_holds_is_priced_as_ckks_and_the_run_names_the_limit():
    plan = choose(PrivacyConfig(coordinator="curious"), 600_000, dp_on=True)
    assert plan.pick == "tenseal" and candidate_config("tenseal", PrivacyConfig(), 600_000).scheme == "ckks"
    with pytest.raises(UserError, match="at most 370,727 owners.*aggregation.scheme=ckks"):
        from_dict({"num_clients": 600_000, "aggregation": {"name": "tenseal"}, "dp": {"name": "off"}})
    assert from_dict({"num_clients": 600_000, "aggregation": {"name": "tenseal", "scheme": "ckks"},
                      "dp": {"name": "off"}}).aggregation


@pytest.mark.slow
@pytest.mark.parametrize("carried", [True, False], ids=["eval_in_train", "apart"])
def test_a_tenseal_run_without_dp_moves_the_planned_bytes_held_out_pairs_included(tmp_path, carried):
    """Without DP each owner's evaluation reply carries its signed held-out pair and one owner a round gets the
    evalsum message: a round's bytes up and down, over all owners, match the cost model within 2 %, as the DP
    run's do (Flower's records add the rest), and so do summary.json's figures. Carried (the default), round
    1 brings round 0's evaluation and no re-encrypted global, the last round two of each."""
    proc = subprocess.run([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={tmp_path}/run",
                           "experiment=smoke", "num_clients=3", "aggregation=tenseal", "dp=off",
                           f"eval_in_train={str(carried).lower()}",
                           "aggregation.download=every"],  # the form estimate() prices (committee and sum:
                          # tests/faults/test_tenseal_committee_loop.py, against tenseal/cost.py:variant)
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cost = estimate("tenseal", BACKENDS["tenseal"].config(), TINY_VALUES, 3, dp_on=False, carried=carried)
    assert (cost.eval_up, cost.evalsum_up) == (120, 8) and cost.evalsum_down > 3 * 120
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    assert [r["backend"] for r in rows] == ["tenseal", "tenseal"] and all(r["dp"] == "off" for r in rows)
    for r in rows:
        assert r["eval_loss"] is not None  # the revealing owner answered: the pairs travelled
        owners, n = r["per_client"].values(), r["round"]
        evaluations = cost.evaluations_in(n, 2)
        planned_up = (3 * (cost.update_up + evaluations * cost.eval_up) + cost.reencrypts_in(n, 2) * cost.reencrypt_up
                      + evaluations * cost.evalsum_up)
        planned_down = 3 * cost.down_in(n, 2) + evaluations * cost.evalsum_down
        up, down = sum(c["bytes_up"] for c in owners), sum(c["bytes_down"] for c in owners)
        assert planned_up <= up <= 1.02 * planned_up, (up, planned_up)
        assert planned_down <= down <= 1.02 * planned_down + 3 * RECORDS, (n, down, planned_down)
    figures = json.loads((tmp_path / "run" / "summary.json").read_text())["planned_vs_measured"]
    assert 1.0 <= figures["bytes_up_per_owner_per_round"]["ratio"] <= 1.02
    assert 1.0 <= figures["bytes_down_per_owner_per_round"]["ratio"] <= 1.02


def test_fedveil_plan_shows_tenseals_download_forms_against_plains_for_100_owners():
    # issue 23's acceptance figures, as the plan prints them (exact bytes: tests/privacy/test_backend_cost.py)
    from fedveil.experiments.plan import make_plan, render  # lazy: composes Hydra

    # dp=off: no noise planned; eval_in_train=false: two messages a round, plain's 131 KB (issue 23's basis)
    plan = make_plan(["num_clients=100", "privacy.malicious_owners=false", "dp=off", "eval_in_train=false"])
    forms = plan["download_forms"]["tenseal"]
    assert forms["runs"] == "sum" and forms["committee"]["committee"] == 2 and forms["for_threats"] == "sum"
    assert forms["plain_down"] == {"same_mode": 131_072, "apart": 131_072}
    lines = render(plan).splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("tenseal download per owner per round"))
    assert lines[at] == ("tenseal download per owner per round vs plain's 131.07 KB; for the stated threats: sum; "
                         "the run's form (aggregation.download): sum")
    assert lines[at + 2].split() == ["every", "x100.32", "x100.32", "x100.32", "-"]
    assert lines[at + 3].split() == ["committee", "of", "2", "x3.05", "x99.48", "x1.08", "x99.48"]
    assert lines[at + 4].split() == ["sum", "x1.04", "x1.04", "x1.04", "-"]
    assert "priced with eval_in_train=false" in render(plan)
    # the default carries each evaluation in the next train message: plain downloads one global a round, tenseal
    # one round's part (an owner keeps the global it opened): ratios against plain carried, and [against apart]
    lines = render(make_plan(["num_clients=100", "privacy.malicious_owners=false", "dp=off"])).splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("tenseal download per owner per round"))
    assert "vs plain's 65.54 KB (carried); [vs 131.07 KB, plain's evaluation apart]" in lines[at]
    assert lines[at + 3].split() == ["committee", "of", "2", "x6.10", "[x3.05]", "x201.04", "[x100.52]", "x2.17",
                                     "[x1.08]", "x201.04", "[x100.52]"]
    assert lines[at + 4].split() == ["sum"] + ["x2.08", "[x1.04]"] * 3 + ["-"]
    assert lines[at + 5] == ("  floor: 2 members each download the other 99 updates (x1.99 [x0.99] each, less the sums "
                             "they computed), so the mean "
                             "over 100 owners is at least outside + 2 x 99/100 x that = x2.17 [x1.08] + x3.94 [x1.97], "
                             "whatever the design")
    assert any("priced with eval_in_train=true" in x for x in lines)
    last = next(x for x in lines if x.startswith("last round (its evaluation apart): down/owner plain 131.07 KB"))
    assert "over privacy.max_bytes_per_round" not in last


def test_issue_23s_download_targets_hold_at_100_owners_tiny_dp_committee_of_2():
    """Outside the committee and the sum alone within 2.2x plain's download (carried, the default: one global a
    round); the mean over owners, malicious owners stated, within 4x plain's two-message round (where the issue
    set it: with the carried evaluation no design meets 4x, see the floor the plan prints)."""
    plan = make_plan(["num_clients=100"])
    assert plan["dp"] is not None and plan["evaluation"] == "carried"
    forms = plan["download_forms"]["tenseal"]
    same, apart = forms["plain_down"]["same_mode"], forms["plain_down"]["apart"]
    assert (same, apart) == (65_536, 131_072) and forms["for_threats"] == "committee" and forms["range_checked"]
    committee, alone = forms["committee"], forms["sum"]
    assert committee["committee"] == 2 and committee["owners"] == 100
    assert committee["global_down"] <= 2.2 * same and alone["global_down"] <= 2.2 * same
    assert committee["mean_down"] <= 4 * apart
    assert committee["mean_down"] > 4 * same  # carried, the floor: 2 members x 99 updates of ~2 globals each