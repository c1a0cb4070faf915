"""A tiny federation over real `fx` processes whose aggregator (and optionally sites) record
what they received and sent, for tests that check the aggregate against the uploads.

The aggregator runs OpenFL's own `fx` entry point (`aggregator start`) in a process that
records, before anything else runs, what it received and what each round started with
(RECORDING_AGGREGATOR); a recording site (RECORDING_SITE) saves its plaintext upload
before masking (pairwise_masking). Neither changes what the process does.
"""
import sys

import yaml

from tests.tiny_federation import REPO, TINY, write_tiny_site_split
from workspace.simulate.fx_workspace import certify, prepare_workspace, workspace_values
from workspace.simulate.plan_edits import edit_plan
from workspace.simulate.processes import FX, Children, free_port, fx_environment, tail, wait_for_port

# The end of every script below: run OpenFL's own `fx` entry point with the remaining arguments,
# imported last because it keeps a reference to sys.path, which importing TensorFlow replaces.
FX_ENTRY = """
from openfl.interface.cli import entry
sys.argv = ["fx", *sys.argv[1:]]
entry()
"""

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
""" + FX_ENTRY

# `fx collaborator start`, recording into argv[1] each round's plaintext upload before masking
# (plain-<round>-<site>.npz, with the counts as count_<group>).
RECORDING_SITE = """
import sys
from pathlib import Path
import numpy as np
from src.federated.secure_sums import SiteMasking

record = Path(sys.argv.pop(1))
mask_upload = SiteMasking.mask_upload

def recording_mask_upload(self, upload, round_number, counts, abstain=False):
    plain = {k.tensor_name: np.asarray(v) for k, v in upload.items() if "metric" not in k.tags}
    np.savez(record / f"plain-{round_number}-{self.site}.npz", **plain,
             **{f"count_{g}": np.array(n) for g, n in counts.items()})
    return mask_upload(self, upload, round_number, counts, abstain)

SiteMasking.mask_upload = recording_mask_upload
""" + FX_ENTRY

# `fx collaborator start` of a poisoning site: its trained upload becomes
# start + float(argv[1]) * (trained - start), e.g. 10 (scaled), -10, -1 (sign flipped).
ATTACKING_SITE = """
import sys
from src.federated.task_runner import MultiTaskRunner

scale = float(sys.argv.pop(1))
train_task = MultiTaskRunner.train_task

def attacking_train_task(self, col_name, round_num, input_tensor_dict, *args, **kwargs):
    upload, local = train_task(self, col_name, round_num, input_tensor_dict, *args, **kwargs)
    start = dict(input_tensor_dict)
    for key, value in upload.items():
        if "trained" in key.tags and key.tensor_name in start:
            upload[key] = (start[key.tensor_name] + scale * (value - start[key.tensor_name])).astype(value.dtype)
    return upload, local

MultiTaskRunner.train_task = attacking_train_task
""" + FX_ENTRY


def run_recorded_federation(root, record, sites, labels, rounds: int, plan_values: dict,
                            record_sites: bool = False, attacker: tuple | None = None):
    """The repository's plan with `plan_values`, tiny `sites` holding `labels`, run to its end
    with a recording aggregator (and recording sites; `attacker` = (site, scale) runs that
    site as ATTACKING_SITE); returns the workspace."""
    write_tiny_site_split(root, num_images=20 * len(sites), num_sites=len(sites), labels=labels, seed=5,
                          test_fraction=0.2)
    port = free_port()
    plan = edit_plan(yaml.safe_load((REPO / "plan" / "plan.yaml").read_text()),
                     {**plan_values,
                      # the shipped backbone fits the default model only; one pass over a site an epoch
                      "task_runner.settings.backbone_init": "scratch", "data_loader.settings.repeat_to_batches": None,
                      **workspace_values(rounds, port)}, overrides={"seed": 0, **TINY})
    ws, env = root / "ws", {**fx_environment(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    prepare_workspace(ws, plan, root / "splits")
    certify(ws, list(sites), "splits", root / "setup.log", env)
    children = Children()
    site_command = [sys.executable, "-c", RECORDING_SITE, str(record)] if record_sites else [FX]
    try:
        aggregator = children.start("aggregator", [sys.executable, "-c", RECORDING_AGGREGATOR, str(record),
                                                   "aggregator", "start"], ws, ws / "aggregator.log", env)
        wait_for_port(port, aggregator, ws / "aggregator.log")
        commands = {s: site_command for s in sites}
        if attacker:
            commands[attacker[0]] = [sys.executable, "-c", ATTACKING_SITE, str(attacker[1])]
        procs = {s: children.start(s, [*commands[s], "collaborator", "start", "-n", s], ws, ws / f"{s}.log", env)
                 for s in sites}
        for site, proc in procs.items():
            assert proc.wait(timeout=600) == 0, tail(ws / f"{site}.log", 40)
        assert aggregator.wait(timeout=120) == 0, tail(ws / "aggregator.log", 40)
    finally:
        children.kill_all()
    return ws
