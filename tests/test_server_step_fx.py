"""The server step size over real `fx` processes: with `server_lr` != 1 every round's global
model is the model the round started with, moved server_lr of the way to the weighted mean
of what the sites uploaded, so the aggregator must look up the right starting model for
each round (at server_lr 1 the starting model cancels out and nothing checks it).

Two sites, two rounds, the tiny model; real `fx collaborator start` processes and mutual
TLS. The aggregator runs OpenFL's own `fx` entry point (`aggregator start`) in a process
that records, before anything else runs, what it received and what each round started
with (tests/recorded_fx.py); it changes nothing the aggregator does.
"""
import numpy as np
import pytest

from src.federated.aggregation import STATISTICS
from src.federated.checkpoint import load_pbuf_weights
from src.model.config import task_group_of
from src.task_groups import DEFAULT_GROUPS, task_balanced_weights
from tests.recorded_fx import run_recorded_federation

pytestmark = pytest.mark.slow  # ~45 s alone, more beside other work (fx cold starts): `make test-faults`
SITES = ["site1", "site2"]
ROUNDS, SERVER_LR = 2, 0.5



def run_federation(root, record):
    """The repository's plan with server_lr = SERVER_LR, two tiny sites, run to its end; the workspace."""
    return run_recorded_federation(root, record, SITES, ("both",), ROUNDS,
                                   {"tasks.train.aggregation_type.settings.server_lr": SERVER_LR})


def test_each_round_steps_server_lr_of_the_way_from_its_own_starting_model(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    ws = run_federation(tmp_path, record)
    starts = {0: load_pbuf_weights(ws / "save" / "init.pbuf")[0],
              **{r: dict(np.load(record / f"start-{r}.npz")) for r in range(1, ROUNDS + 1)}}
    final, final_round = load_pbuf_weights(ws / "save" / "final.pbuf")
    assert final_round == ROUNDS and final.keys() == starts[ROUNDS].keys()
    assert all(np.array_equal(final[n], starts[ROUNDS][n].reshape(final[n].shape)) for n in final)
    for r in range(ROUNDS):
        start, aggregate = starts[r], starts[r + 1]
        uploads = {s: dict(np.load(record / f"upload-{r}-{s}.npz")) for s in SITES}
        samples = {s: {g: float(uploads[s][f"samples_{g}"]) for g in DEFAULT_GROUPS} for s in SITES}
        backbone = task_balanced_weights(samples)  # the plan's backbone_weighting
        stepped = 0
        for name, base in start.items():
            senders = [s for s in SITES if name in uploads[s]]
            assert senders == SITES, (r, name)  # sites with both labels train and send every tensor
            group = task_group_of(name)
            weights = np.array([backbone[s] if group == "backbone" else samples[s][group] for s in SITES])
            mean = sum(w * uploads[s][name] for w, s in zip(weights / weights.sum(), SITES))
            base = base.reshape(mean.shape).astype(np.float64)
            step = 1.0 if name.split("/")[-1] in STATISTICS else SERVER_LR
            np.testing.assert_allclose(aggregate[name].reshape(mean.shape), base + step * (mean - base),
                                       rtol=1e-5, atol=1e-7, err_msg=f"round {r}: {name}")
            stepped += step != 1.0 and not np.allclose(aggregate[name].reshape(mean.shape), mean, rtol=1e-3, atol=1e-6)
        # the step is visible: most tensors sit well away from the plain mean
        assert stepped > len(start) // 2, (r, stepped, len(start))
