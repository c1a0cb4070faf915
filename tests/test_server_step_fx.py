"""The server step size over real `fx` processes: with `server_lr` != 1 every round's global
model is the model the round started with, moved server_lr of the way to the weighted mean
of what the sites uploaded, so the aggregator must look up the right starting model for
each round (at server_lr 1 the starting model cancels out and nothing checks it).

Two sites, two rounds, the tiny model; real `fx collaborator start` processes and mutual
TLS. The aggregator runs OpenFL's own `fx` entry point (`aggregator start`) in a process
that records, before anything else runs, what it received and what each round started
with (RECORDING_AGGREGATOR); it changes nothing the aggregator does.
"""
import sys

import numpy as np
import pytest
import yaml

from src.federated.aggregation import STATISTICS
from src.federated.checkpoint import load_pbuf_weights
from src.model.config import TASK_GROUPS, task_group_of
from src.task_groups import task_balanced_weights
from tests.tiny_federation import REPO, TINY, write_tiny_site_split
from workspace.simulate.fx_workspace import certify, prepare_workspace, workspace_values
from workspace.simulate.plan_edits import edit_plan
from workspace.simulate.processes import FX, Children, free_port, fx_environment, tail, wait_for_port

pytestmark = pytest.mark.slow  # ~45 s alone, more beside other work (fx cold starts): `make test-faults`
SITES = ["site1", "site2"]
ROUNDS, SERVER_LR = 2, 0.5

# `fx aggregator start` (OpenFL's entry point), recording into the folder argv[1]: each site's
# train upload as the aggregator decoded it (upload-<round>-<site>.npz) and, as each round
# ends, the global model the next round starts with, from the aggregator's tensor store
# (start-<round>.npz).
RECORDING_AGGREGATOR = """
import sys
from pathlib import Path
import numpy as np
from src.federated.aggregator import PromptAggregator
from src.federated.in_process import decode_named_tensors

record = Path(sys.argv.pop(1))
receive, end_round = PromptAggregator.send_local_task_results, PromptAggregator._end_of_round_check

def send_local_task_results(self, collaborator_name, round_number, task_name, data_size, named_tensors):
    if task_name == "train":
        np.savez(record / f"upload-{round_number}-{collaborator_name}.npz", **decode_named_tensors(named_tensors))
    return receive(self, collaborator_name, round_number, task_name, data_size, named_tensors)

def _end_of_round_check(self):
    before = self.round_number
    end_round(self)
    start = self.global_tensors()
    if self.round_number != before and all(value is not None for value in start.values()):
        np.savez(record / f"start-{self.round_number}.npz", **start)

PromptAggregator.send_local_task_results = send_local_task_results
PromptAggregator._end_of_round_check = _end_of_round_check
# (imported last: it keeps a reference to sys.path, which importing TensorFlow replaces)
from openfl.interface.cli import entry
sys.argv = ["fx", *sys.argv[1:]]
entry()
"""


def run_federation(root, record) -> tuple:
    """The repository's plan with server_lr = SERVER_LR, two tiny sites, run to its end; the workspace."""
    write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both",), seed=5, test_fraction=0.2)
    port = free_port()
    plan = edit_plan(yaml.safe_load((REPO / "plan" / "plan.yaml").read_text()),
                     {"tasks.train.aggregation_type.settings.server_lr": SERVER_LR,
                      # the shipped backbone fits the default model only; one pass over a site an epoch
                      "task_runner.settings.backbone_init": "scratch", "data_loader.settings.repeat_to_batches": None,
                      **workspace_values(ROUNDS, port)}, overrides={"seed": 0, **TINY})
    ws, env = root / "ws", {**fx_environment(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    prepare_workspace(ws, plan, root / "splits")
    certify(ws, SITES, "splits", root / "setup.log", env)
    children = Children()
    try:
        aggregator = children.start("aggregator", [sys.executable, "-c", RECORDING_AGGREGATOR, str(record),
                                                   "aggregator", "start"], ws, ws / "aggregator.log", env)
        wait_for_port(port, aggregator, ws / "aggregator.log")
        sites = {s: children.start(s, [FX, "collaborator", "start", "-n", s], ws, ws / f"{s}.log", env) for s in SITES}
        for site, proc in sites.items():
            assert proc.wait(timeout=600) == 0, tail(ws / f"{site}.log", 40)
        assert aggregator.wait(timeout=120) == 0, tail(ws / "aggregator.log", 40)
    finally:
        children.kill_all()
    return ws


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
        samples = {s: {g: float(uploads[s][f"samples_{g}"]) for g in TASK_GROUPS} for s in SITES}
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
