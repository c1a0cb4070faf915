"""The aggregation defences on OpenFL's own Aggregator and Collaborator classes in process
(tiny model, real training): a poisoning site bounded by clip_updates + a median, and
differentially private aggregation whose noise and epsilon are what the plan asks for."""
import json
import re

import numpy as np
import pytest

from src.federated.checkpoint import load_pbuf_weights
from src.model.config import task_group_of
from src.privacy import epsilon_after
from src.robust_aggregation import bound_updates, combine
from tests.tiny_federation import write_tiny_plan, write_tiny_site_split
from workspace.privacy_experiment.runs import scaled_uploads
from workspace.simulate.events import FederationEvents, progress_lines

pytestmark = pytest.mark.faults
ATTACKER = "site3"
SCALE = 10.0


def tiny_federation(root, sites, rounds, aggregator=None, function=None, poison=None):
    """Run `rounds` rounds of `sites` in process; returns (workspace, clients, events, starts, aggregates)."""
    from src.federated.in_process import run_federation

    write_tiny_site_split(root, num_images=20 * len(sites), num_sites=len(sites), labels=("both",), seed=5,
                          test_fraction=0.2)
    workspace = root / "ws"
    plan = write_tiny_plan(workspace, root / "splits", rounds=rounds, sites=sites, aggregator=aggregator)
    if function:
        plan["tasks"]["train"]["aggregation_type"]["settings"].update(function)
        import yaml
        (workspace / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    aggregates = {}
    with pytest.MonkeyPatch.context() as mp, scaled_uploads(ATTACKER if poison else None, SCALE):
        mp.chdir(workspace)
        _, clients = run_federation(
            workspace, on_round_end=lambda agg, done: aggregates.__setitem__(done, agg.global_tensors()))
    events = [json.loads(x) for x in (workspace / "logs" / "events.jsonl").read_text().splitlines()]
    init, _ = load_pbuf_weights(workspace / "save" / "init.pbuf")
    starts = {0: init, **{r + 1: aggregates[r] for r in aggregates}}
    return workspace, clients, events, starts, aggregates


def uploads_of(clients, round_num, model: dict) -> dict:
    """Each site's uploaded model tensors (no metrics) of that round."""
    return {site: {n: v for n, v in c.uploads[(round_num, "train")]["tensors"].items() if n in model}
            for site, c in clients.items()}


def trained_names(uploads) -> list:
    return sorted(set.intersection(*(set(u) for u in uploads.values())))


def round_line(workspace, sites, rounds: int, round_num: int) -> tuple[dict, str]:
    """make simulate's summary and progress line of a round, from the event log."""
    log = FederationEvents(workspace / "logs" / "events.jsonl", rounds, list(sites))
    log.poll()
    summary = log.round_summary(round_num)
    return summary, progress_lines(summary, rounds)[0]


def relative_distance(a: dict, b: dict, start: dict, names) -> float:
    step = np.sqrt(sum(np.sum((b[n] - start[n]) ** 2) for n in names))
    return float(np.sqrt(sum(np.sum((a[n] - b[n]) ** 2) for n in names)) / step)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    return tiny_federation(tmp_path_factory.mktemp("poison"), ("site1", "site2", ATTACKER), rounds=2,
                           aggregator={"clip_updates": "median"}, function={"statistic": "median"},
                           poison=True)


def test_robust_aggregation_bounds_a_site_scaling_its_update_x10_in_a_federation(poisoned):
    workspace, clients, events, starts, aggregates = poisoned
    clipped = [e for e in events if e["event"] == "clipped"]
    for round_num in (0, 1):
        uploads = uploads_of(clients, round_num, starts[0])
        names = trained_names(uploads)
        start = {n: starts[round_num][n] for n in names}
        groups = {task_group_of(n) for n in names}
        # the attacker is bounded in every group it sent, every round
        assert {e["group"] for e in clipped if e["round"] == round_num and e["site"] == ATTACKER} == groups
        # the aggregate is exactly the median of the bounded uploads
        bounded, _, _ = bound_updates(uploads, start, "median", task_group_of)
        for n in names:
            expected = combine([bounded[s][n] for s in bounded], [1.0] * 3, "median")
            np.testing.assert_allclose(aggregates[round_num][n], expected, rtol=1e-5, atol=1e-6, err_msg=n)
        # ... which stays near the honest sites' mean, where plain averaging follows the attacker
        honest = {n: np.mean([uploads[s][n] for s in ("site1", "site2")], axis=0) for n in names}
        plain = {n: np.mean([uploads[s][n] for s in uploads], axis=0) for n in names}
        defended_off = relative_distance(aggregates[round_num], honest, start, names)
        plain_off = relative_distance(plain, honest, start, names)
        assert plain_off > 2.0 and defended_off < plain_off / 4, (round_num, defended_off, plain_off)
        summary, line = round_line(workspace, clients, 2, round_num)
        attacker_part = line.split(f"{ATTACKER} loss")[1].split(" | ")[0]
        assert re.search(r"clipped x0\.[01]\d", attacker_part), line  # scaled to about 1/10
    final, _ = load_pbuf_weights(workspace / "save" / "final.pbuf")
    assert all(np.isfinite(v).all() for v in final.values())


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    return tiny_federation(tmp_path_factory.mktemp("privacy"), ("site1", "site2"), rounds=1,
                           aggregator={"differential_privacy": {"noise_multiplier": 0.5, "clip_norm": 0.5}})


def test_privacy_noise_and_epsilon_of_a_federated_round_are_what_the_plan_asks(private):
    workspace, clients, events, starts, aggregates = private
    uploads = uploads_of(clients, 0, starts[0])
    names = [n for n in trained_names(uploads) if not n.endswith("moving_variance")]  # clamped at 0
    start = starts[0]
    norms = {s: np.sqrt(sum(np.sum((u[n] - start[n]) ** 2) for n in trained_names(uploads)))
             for s, u in uploads.items()}
    assert min(norms.values()) > 0.5  # both updates were clipped: the noise dominates a small step
    clean = {n: np.mean([start[n] + min(1.0, 0.5 / norms[s]) * (uploads[s][n] - start[n]) for s in uploads],
                        axis=0) for n in names}
    residual = np.concatenate([(aggregates[0][n] - clean[n]).ravel() for n in names])
    assert residual.size > 10_000
    assert np.std(residual) == pytest.approx(0.5 * 0.5 / 2, rel=0.05)  # noise_multiplier * clip_norm / sites
    assert abs(np.mean(residual)) < 0.01
    (privacy,) = [e for e in events if e["event"] == "privacy"]
    assert privacy["round"] == 0 and privacy["epsilon"] == pytest.approx(epsilon_after(1, 0.5, 1e-5))
    assert privacy["update_norms"] == pytest.approx(norms, rel=1e-4)
    summary, line = round_line(workspace, clients, 1, 0)
    assert summary["privacy"]["epsilon"] == privacy["epsilon"]
    assert f"| epsilon {privacy['epsilon']:.2f} (delta 1e-05)" in line


def test_privacy_refuses_a_plan_whose_rounds_pass_the_target_epsilon(tmp_path, monkeypatch):
    from openfl.federated import Plan

    write_tiny_site_split(tmp_path, num_images=12, num_sites=1, labels=("both",), seed=5, test_fraction=0.2)
    write_tiny_plan(tmp_path / "ws", tmp_path / "splits", rounds=7, sites=("site1",), aggregator={
        "differential_privacy": {"noise_multiplier": 1.0, "clip_norm": 1.0, "target_epsilon": 4.0}})
    monkeypatch.chdir(tmp_path / "ws")
    plan = Plan.parse(plan_config_path=tmp_path / "ws/plan/plan.yaml", cols_config_path=tmp_path / "ws/plan/cols.yaml",
                      data_config_path=tmp_path / "ws/plan/data.yaml")
    with pytest.raises(ValueError, match=r"7 rounds at noise_multiplier 1 reach epsilon 15.18.*>= 3.0"):
        plan.get_aggregator()
