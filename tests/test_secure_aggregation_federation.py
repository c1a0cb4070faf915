"""Secure aggregation (pairwise_masking) on OpenFL's own Aggregator and Collaborator classes in
process: tiny model, real training, three sites holding boxes+class, boxes only and class only, so
every task group is summed over a different set of sites."""
import json

import numpy as np
import pytest

from src.federated.checkpoint import load_pbuf_weights
from src.federated.secure_sums import SiteMasking, group_layout, is_message
from src.model.config import task_group_of
from src.secure_aggregation import decode, flatten, from_wire
from src.task_groups import DEFAULT_GROUPS, task_balanced_weights
from tests.tiny_federation import write_tiny_plan, write_tiny_site_split

SITES = ("site1", "site2", "site3")
ROUNDS = 2


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """Run the federation; record each site's plaintext before masking and the aggregates."""
    from src.federated.in_process import run_federation

    root = tmp_path_factory.mktemp("secure")
    write_tiny_site_split(root, num_images=60, num_sites=3, labels=("both", "boxes", "class"), seed=7,
                          test_fraction=0.2)
    workspace = root / "ws"
    write_tiny_plan(workspace, root / "splits", rounds=ROUNDS, sites=SITES,
                    aggregator={"pairwise_masking": True}, runner={"pairwise_masking": True})
    plain, aggregates = {}, {}
    real_mask = SiteMasking.mask_upload

    def recording_mask(self, upload, round_number, counts, abstain=False):
        plain[(self.site, round_number)] = ({k.tensor_name: np.array(v) for k, v in upload.items()
                                             if "metric" not in k.tags}, dict(counts))
        return real_mask(self, upload, round_number, counts, abstain)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SiteMasking, "mask_upload", recording_mask)
        mp.chdir(workspace)
        aggregator, clients = run_federation(
            workspace, on_round_end=lambda agg, done: aggregates.__setitem__(done, agg.global_tensors()))
    events = [json.loads(x) for x in (workspace / "logs" / "events.jsonl").read_text().splitlines()]
    init, _ = load_pbuf_weights(workspace / "save" / "init.pbuf")
    return {"plain": plain, "aggregates": aggregates, "clients": clients, "aggregator": aggregator,
            "events": events, "starts": {0: init, **{r + 1: aggregates[r] for r in aggregates}}}


def expected_means(plain: dict, round_number: int) -> dict:
    """The plain decoupled aggregation of the recorded updates: per tensor, the senders'
    weighted mean (image counts; the backbone by task_balanced_weights, the plan's default)."""
    updates = {site: plain[(site, round_number)][0] for site in SITES}
    counts = {site: plain[(site, round_number)][1] for site in SITES}
    backbone_weights = task_balanced_weights(counts)
    out = {}
    for name in sorted({n for u in updates.values() for n in u}):
        group = task_group_of(name)
        weights = {s: backbone_weights[s] if group == "backbone" else counts[s][group]
                   for s in SITES if name in updates[s]}
        total = sum(weights.values())
        out[name] = sum(w * updates[s][name].astype(np.float64) for s, w in weights.items()) / total
    return out


def test_secure_aggregate_equals_plain_aggregation_per_group(masked_run):
    """(a) Masked sums give the plain aggregate within 1e-5 relative, in every group and round."""
    senders = {}
    for round_number in range(ROUNDS):
        expected = expected_means(masked_run["plain"], round_number)
        aggregate, start = masked_run["aggregates"][round_number], masked_run["starts"][round_number]
        for group in DEFAULT_GROUPS:  # the groups of the model these sites train
            names = [n for n in expected if task_group_of(n) == group]
            assert names, f"round {round_number}: nobody trained {group}"
            a = np.concatenate([aggregate[n].ravel() for n in names]).astype(np.float64)
            e = np.concatenate([expected[n].ravel() for n in names])
            s = np.concatenate([start[n].ravel() for n in names]).astype(np.float64)
            assert np.linalg.norm(a - e) / np.linalg.norm(e) < 1e-5, (round_number, group)
            # and the round moved the group: the check above is not comparing a model with itself
            assert np.linalg.norm(e - s) > 100 * np.linalg.norm(a - e), (round_number, group)
        senders[round_number] = {e["group"]: e["sites"] for e in masked_run["events"]
                                 if e["event"] == "secure_sum" and e["round"] == round_number}
    assert senders[0] == {"backbone": list(SITES), "neck": ["site1", "site2"], "det_head": ["site1", "site2"],
                          "cls_head": ["site1", "site3"]}


def test_secure_uploads_reveal_no_single_site_update(masked_run):
    """(b) Every tensor the aggregator received, read as a value, is uncorrelated with the
    site's true (weighted) update; no model tensor reached it in the clear."""
    checked, rosters = 0, masked_run["aggregator"].rosters
    for site, client in masked_run["clients"].items():
        for round_number in range(ROUNDS):
            received = client.uploads[(round_number, "train")]["tensors"]
            updates, counts = masked_run["plain"][(site, round_number)]
            model_tensors = [n for n in received if not n.startswith(("samples_", "al_", "loss", "detection",
                                                                       "disaster", "seconds_"))]
            assert model_tensors and all(is_message(n) for n in model_tensors), model_tensors
            for name in model_tensors:
                group, component = name.split("/secure_sum/")
                layout, _ = group_layout(rosters.members(round_number, group))
                shapes = {n: s for names in rosters.members(round_number, group).values() for n, s in names.items()}
                count_group = rosters.components[group][component][0]
                true = counts[count_group] * flatten({n: updates.get(n, np.zeros(shapes[n])) for n in layout})
                seen = decode(from_wire(received[name]))
                assert seen.size == true.size
                if np.std(true) == 0:  # a weight-0 component (e.g. boxes at the class-only site)
                    continue
                bound = 5.0 / np.sqrt(true.size)  # 5 standard deviations of an independent pair
                assert abs(np.corrcoef(seen, true)[0, 1]) < bound, (site, round_number, name)
                assert np.median(np.abs(seen - true)) > 1e6
                checked += 1
    stored = [k for k in masked_run["aggregator"].tensor_db.get_tensors_by_filter(
        lambda row: "trained" in row["tags"] and any(s in row["tags"] for s in SITES))]
    assert stored and all(is_message(k.tensor_name) for k in stored)
    # a round: backbone 4 non-zero components (site1 boxes+class, site2 boxes, site3 class), 2 per other group
    assert checked == ROUNDS * (4 + 2 + 2 + 2)
