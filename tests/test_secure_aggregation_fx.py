"""Secure aggregation (pairwise_masking) over real `fx` processes with mutual TLS: three tiny
sites that each train a different set of task groups (boxes+class, boxes, class), two rounds.
The aggregator records what it received and each round's resulting global model; each site
records its plaintext upload before masking (tests/recorded_fx.py). Checked: (c) the masked
federation's global model is the plain weighted mean of the plaintexts, per group, and no
tensor the aggregator received says anything about one site's update."""
import numpy as np
import pytest

from src.federated.checkpoint import load_pbuf_weights
from src.federated.secure_sums import is_message
from src.model.config import task_group_of
from src.secure_aggregation import decode, from_wire
from src.task_groups import DEFAULT_GROUPS, task_balanced_weights
from tests.recorded_fx import run_recorded_federation
from tests.tiny_federation import of
from workspace.simulate.events import read_events
from workspace.simulate.fx_workspace import EVENT_LOG

pytestmark = pytest.mark.slow  # fx cold starts of 4 processes: `make test-faults`
SITES = ["site1", "site2", "site3"]
ROUNDS = 2


def test_secure_aggregation_over_fx_equals_plain_mean_and_hides_each_upload(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    ws = run_recorded_federation(tmp_path, record, SITES, ("both", "boxes", "class"), ROUNDS,
                                 {"aggregator.settings.pairwise_masking": True}, record_sites=True)
    events = read_events(ws / EVENT_LOG)
    assert {e["site"] for e in of(events, "secagg_registered")} == set(SITES)
    assert not of(events, "secure_sum_incomplete") and not of(events, "rejected")
    starts = {0: load_pbuf_weights(ws / "save" / "init.pbuf")[0],
              **{r: dict(np.load(record / f"start-{r}.npz")) for r in range(1, ROUNDS + 1)}}
    for r in range(ROUNDS):
        assert {e["group"] for e in of(events, "secure_sum", round=r)} == set(DEFAULT_GROUPS)
        plain = {s: dict(np.load(record / f"plain-{r}-{s}.npz")) for s in SITES}
        counts = {s: {g: float(plain[s].pop(f"count_{g}")) for g in DEFAULT_GROUPS} for s in SITES}
        backbone = task_balanced_weights(counts)  # the plan's backbone_weighting
        for group in DEFAULT_GROUPS:  # the groups of the model these sites train
            names = sorted({n for s in SITES for n in plain[s] if task_group_of(n) == group})
            expected, got = [], []
            for name in names:
                senders = [s for s in SITES if name in plain[s]]
                weights = {s: backbone[s] if group == "backbone" else counts[s][group] for s in senders}
                if len(senders) < 2:
                    continue  # uploaded by one site alone: not sent with masking
                expected.append(sum(w * plain[s][name].astype(np.float64) for s, w in weights.items()).ravel()
                                / sum(weights.values()))
                got.append(starts[r + 1][name].ravel().astype(np.float64))
            expected, got = np.concatenate(expected), np.concatenate(got)
            assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5, (r, group)
        for site in SITES:
            received = dict(np.load(record / f"upload-{r}-{site}.npz"))
            messages = [n for n in received if is_message(n)]
            assert messages and not any(n in starts[0] for n in received), sorted(received)[:5]
            own = np.concatenate([plain[site][n].ravel() for n in sorted(plain[site])])
            for name in messages:
                seen = decode(from_wire(received[name]))
                assert np.median(np.abs(seen)) > 1e6, (r, site, name)  # uniform words, not weights
                size = min(seen.size, own.size)
                assert abs(np.corrcoef(seen[:size], own[:size])[0, 1]) < 5.0 / np.sqrt(size), (r, site, name)
    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    assert final_round == ROUNDS and all(np.all(np.isfinite(v)) for v in final.values())
