"""Active learning inside a federation (OpenFL's own classes, in process, tiny model,
one site to keep it fast): the site queries its pool with the global model it
received, trains only on what is labeled, keeps its labeled set in its local
state and reports the step."""
import json

import yaml

from src.active_learning.pool import LabelPool
from src.data.manifests import read_manifest, write_site
from tests.test_al_pool import DISASTER, VICTIM
from tests.tiny_federation import write_tiny_plan, write_tiny_site_split

SITES = ("site1",)
BUDGET = 2


def test_sites_query_their_pools_each_round_and_train_on_their_labeled_sets(tmp_path, monkeypatch):
    from src.federated.in_process import run_federation

    write_tiny_site_split(tmp_path, num_images=24, num_sites=1, labels=("both",), seed=6, test_fraction=0.2)
    seeds = {}
    for site in SITES:  # half of the site's train images become its unlabeled pool
        folder = tmp_path / "splits" / site
        meta = yaml.safe_load((folder / "site.yaml").read_text())
        rows = read_manifest(folder / "manifest.tsv")
        train = [i for i, r in enumerate(rows) if r[1] == "train"]
        pool = set(train[len(train) // 2:])
        seeds[site] = len(train) - len(pool)
        write_site(folder, site, meta["data_root"],
                   [(k, "pool" if i in pool else s, int(b), int(c)) for i, (k, s, b, c) in enumerate(rows)])
    ws = tmp_path / "ws"
    write_tiny_plan(ws, tmp_path / "splits", rounds=2, sites=SITES, runner={"active_learning": {
        "strategy": "hybrid", "budget": BUDGET, "query_every": 1, "oracle": "simulated"}})
    monkeypatch.chdir(ws)
    run_federation(ws)

    events = [json.loads(x) for x in (ws / "logs" / "events.jsonl").read_text().splitlines()]
    metric = {(e["round"], e["site"], e["name"]): e["value"] for e in events if e["event"] == "metric"}
    for site in SITES:
        labeled = [metric[(r, site, "al_labeled")] for r in range(2)]  # round 0 does not query
        assert labeled == [seeds[site], seeds[site] + BUDGET], (site, labeled)
        # it trained on exactly its labeled images (each has both labels here)
        assert [metric[(r, site, "samples_backbone")] for r in range(2)] == labeled
        assert metric[(1, site, "al_selected")] == BUDGET and 0 <= metric[(1, site, "al_mean_uncertainty")] <= 1
        assert sum(metric[(1, site, f"al_chosen_class_{i}")] for i in range(len(DISASTER))) == BUDGET
        # the labeled set lives in the site's local state; a restarted site resumes with it
        resumed = LabelPool.from_site(tmp_path / "splits" / site, ws / "local_state" / f"al_{site}.json",
                                      VICTIM, DISASTER)
        assert resumed.counts()["labeled"] == labeled[-1]
