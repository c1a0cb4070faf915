"""Poisoning over real `fx` processes with mutual TLS: one of three tiny sites sends its real
update scaled x-10 (a scaled and sign-flipped update) from its own `fx collaborator start`
process (tests/recorded_fx.py: ATTACKING_SITE). Without the defence the global model
follows the attacker; with `clip_updates: median` and a coordinate-wise median the attacker
is bounded in every group, every round, and the global model is exactly the median of the
bounded uploads the aggregator received, close to the honest sites' mean."""
import numpy as np
import pytest

from src.federated.checkpoint import load_pbuf_weights
from src.model.config import task_group_of
from src.robust_aggregation import bound_updates, combine
from tests.recorded_fx import run_recorded_federation
from tests.test_poisoning_defence import relative_distance
from tests.tiny_federation import of
from workspace.simulate.events import read_events
from workspace.simulate.fx_workspace import EVENT_LOG

pytestmark = pytest.mark.slow  # two fx federations of 4 processes: `make test-faults`
SITES, ATTACKER, SCALE, ROUNDS = ["site1", "site2", "site3"], "site3", -10.0, 2
DEFENCE = {"aggregator.settings.clip_updates": "median", "tasks.train.aggregation_type.settings.statistic": "median"}


def federation(tmp_path, plan_values):
    record = tmp_path / "record"
    record.mkdir()
    ws = run_recorded_federation(tmp_path, record, SITES, ("both",), ROUNDS, plan_values,
                                 attacker=(ATTACKER, SCALE))
    starts = {0: load_pbuf_weights(ws / "save" / "init.pbuf")[0],
              **{r: dict(np.load(record / f"start-{r}.npz")) for r in range(1, ROUNDS + 1)}}
    uploads = {r: {s: {n: v for n, v in np.load(record / f"upload-{r}-{s}.npz").items() if n in starts[0]}
                   for s in SITES} for r in range(ROUNDS)}
    return read_events(ws / EVENT_LOG), starts, uploads


@pytest.mark.parametrize("defended", [False, True], ids=["plain", "defended"])
def test_poisoning_site_scaling_x_minus_10_over_fx(tmp_path, defended):
    events, starts, uploads = federation(tmp_path, DEFENCE if defended else {})
    for r in range(ROUNDS):
        names = sorted(set.intersection(*(set(u) for u in uploads[r].values())))
        start = {n: starts[r][n].reshape(uploads[r][SITES[0]][n].shape) for n in names}
        aggregate = {n: starts[r + 1][n].reshape(start[n].shape) for n in names}
        honest = {n: np.mean([uploads[r][s][n] for s in SITES if s != ATTACKER], axis=0) for n in names}
        off = relative_distance(aggregate, honest, start, names)
        if not defended:
            assert off > 2.0, (r, off)  # the attacker drags the plain average far off
            assert not of(events, "clipped")
            continue
        groups = {task_group_of(n) for n in names}
        assert {e["group"] for e in of(events, "clipped", round=r, site=ATTACKER)} == groups
        bounded, _, _ = bound_updates(uploads[r], start, "median", task_group_of)
        for n in names:
            expected = combine([bounded[s][n] for s in SITES], [1.0] * len(SITES), "median")
            np.testing.assert_allclose(aggregate[n], expected, rtol=1e-5, atol=1e-6, err_msg=f"round {r}: {n}")
        assert off < 0.5, (r, off)
