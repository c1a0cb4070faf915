"""The federation as shipped, end to end: plan/plan.yaml and configs/default.yaml with no
setting overridden (the default model, the shipped pretrained backbone, task-balanced
backbone weights, the plan's batch and repeat policies, the final validation round),
run by `make simulate`'s orchestration over real `fx` processes with certificates.
Only the data (a small split of the built-in generator's images, the default split's
three label sets) and the number of rounds are smaller.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from src.data.splits import DEFAULT_LABELS
from src.federated.checkpoint import load_pbuf_weights
from src.model.config import task_group_of
from src.settings import load_config
from tests.test_federation import _processes_under
from tests.tiny_federation import REPO, write_tiny_site_split
from workspace.simulate.fx_workspace import EVENT_LOG
from workspace.simulate.plan_edits import settings_overrides

pytestmark = pytest.mark.slow  # ~2 min: `make test-faults`
ROUNDS = 1


def leaves(tree: dict, prefix: str = "") -> dict:
    """{dotted path: value} of every leaf of a nested mapping."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out.update(leaves(value, path + ".") if isinstance(value, dict) and value else {path: value})
    return out


def test_the_shipped_plan_and_settings_train_end_to_end_from_the_shipped_backbone(tmp_path):
    write_tiny_site_split(tmp_path, num_images=75, num_sites=3, labels=DEFAULT_LABELS, seed=2, test_fraction=0.2)
    checkpoint = REPO / load_config()["pretrain"]["checkpoint"]
    shipped_backbone = checkpoint.read_bytes()
    cmd = [sys.executable, "-m", "workspace.simulate", "--rounds", str(ROUNDS), "--split", str(tmp_path / "splits"),
           "--runs-dir", str(tmp_path / "runs")]
    env = {k: v for k, v in os.environ.items() if k != "MAKE_COMMAND"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                            env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = (tmp_path / "runs" / "latest").resolve()
    ws = run / "workspace"
    assert _processes_under(run) == []

    # The plan the processes ran is the shipped one, key for key, but for the rounds, the
    # port and where the event log goes (`fx plan initialize` merges each section's
    # `defaults` file into it); its settings resolve to exactly those of
    # configs/default.yaml with the shipped overrides.
    shipped = yaml.safe_load((REPO / "plan" / "plan.yaml").read_text())
    used = yaml.safe_load((ws / "plan" / "plan.yaml").read_text())
    run_only = {"aggregator.settings.rounds_to_train": ROUNDS, "task_runner.settings.rounds": ROUNDS,
                "aggregator.settings.event_log": EVENT_LOG}
    ran = leaves(used)
    differing = {path: (value, ran.get(path)) for path, value in leaves(shipped).items()
                 if path not in run_only and path != "network.settings.agg_port" and not path.endswith(".defaults")
                 and ran.get(path) != value}
    assert differing == {}
    assert all(ran[path] == value for path, value in run_only.items())
    assert load_config(ws / used["task_runner"]["settings"]["config"], settings_overrides(used)) == \
        load_config(REPO / "configs" / "default.yaml", settings_overrides(shipped))

    # The global model starts from the shipped backbone checkpoint, which the run left as it was.
    assert checkpoint.read_bytes() == shipped_backbone
    init, _ = load_pbuf_weights(ws / "save" / "init.pbuf")
    backbone = np.load(checkpoint)
    assert backbone.files and {task_group_of(n) for n in backbone.files} == {"backbone"}
    assert set(backbone.files) == {n for n in init if task_group_of(n) == "backbone"}
    for name in backbone.files:
        np.testing.assert_array_equal(init[name].reshape(backbone[name].shape), backbone[name], err_msg=name)

    # It trained and ended finite: the last aggregate (final.pbuf) moved the backbone and is
    # finite everywhere, as is the best model.
    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    best, _ = load_pbuf_weights(ws / "save" / "best.pbuf")
    assert final_round == ROUNDS and final.keys() == init.keys() == best.keys()
    assert all(np.isfinite(final[n]).all() and np.isfinite(best[n]).all() for n in final)
    assert any(not np.array_equal(final[n], init[n]) for n in backbone.files)

    # The metrics are recorded: every site's per round, the aggregated score, the test evaluation.
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(ROUNDS + 1))
    assert metrics["rounds"][-1].get("validation_only") is True
    sites = [s["site"] for s in yaml.safe_load((tmp_path / "splits" / "split.yaml").read_text())["sites"]]
    for rnd in metrics["rounds"]:
        assert rnd["score"] is not None and math.isfinite(rnd["score"]), rnd
        assert set(rnd["sites"]) == set(sites)
    for site, m in metrics["rounds"][0]["sites"].items():
        assert math.isfinite(m["loss"]) and m["upload_bytes"] > 0, (site, m)
    for evaluation in ("final", "last_aggregate", "initial"):
        test = metrics[evaluation]["test"]
        assert 0 <= test["map50"] <= 1 and 0 <= test["accuracy"] <= 1 and math.isfinite(test["loss"]), evaluation
    assert metrics["backbone_mode"] == "joint" and metrics["exchange"] == "decoupled"
    assert metrics["active_learning"] is None
    events = [json.loads(line) for line in (ws / EVENT_LOG).read_text().splitlines()]
    assert sorted(e["round"] for e in events if e["event"] == "round_end") == list(range(ROUNDS + 1))
    assert not [e for e in events if e["event"] == "rejected"]
