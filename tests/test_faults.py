"""Faults a federation must survive, on OpenFL's own Aggregator and Collaborator
classes in process (tiny model, real training). The scenarios that need real
`fx` processes, certificates and sockets are in tests/test_faults_fx.py."""
import json

import numpy as np
import pytest

from src.federated.checkpoint import load_pbuf_weights
from src.federated.task_runner import MultiTaskRunner
from src.federated.update_checks import update_problem
from tests.tiny_federation import REPO as REPO_ROOT, write_tiny_plan, write_tiny_site_split

pytestmark = pytest.mark.faults
SITES = ("site1", "site2")
POISONED = "site2"


def poison(upload: dict, round_num: int) -> str:
    """Break one det_head kernel of a site's real upload: NaN in round 0, wrong shape after."""
    key = next(k for k in upload if k.tensor_name.startswith("det_head") and "kernel" in k.tensor_name)
    value = np.array(upload[key], copy=True)
    if round_num == 0:
        value.flat[::7] = np.nan
    else:
        value = value.reshape(-1)[:-1]
    upload[key] = value
    return key.tensor_name


@pytest.fixture(scope="module")
def poisoned_federation(tmp_path_factory):
    """Two sites, two rounds; site2 trains for real, then sends a broken det_head kernel."""
    from src.federated.in_process import run_federation

    root = tmp_path_factory.mktemp("faults")
    write_tiny_site_split(root, num_images=40, num_sites=2, labels=("both",), seed=3, test_fraction=0.2)
    workspace = root / "ws"
    write_tiny_plan(workspace, root / "splits", rounds=2, sites=SITES)
    broken = {}
    real_train = MultiTaskRunner.train_task

    def train_task(self, col_name, round_num, *args, **kwargs):
        upload, local = real_train(self, col_name, round_num, *args, **kwargs)
        if col_name == POISONED:
            broken[round_num] = poison(upload, round_num)
        return upload, local

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MultiTaskRunner, "train_task", train_task)
        mp.chdir(workspace)
        aggregator, clients = run_federation(workspace)
    events = [json.loads(x) for x in (workspace / "logs" / "events.jsonl").read_text().splitlines()]
    return workspace, aggregator, clients, events, broken


def test_a_site_sending_nan_or_a_wrong_shape_is_left_out_of_that_round(poisoned_federation):
    workspace, aggregator, clients, events, broken = poisoned_federation
    assert aggregator.round_number == 3  # 2 training rounds, then the plan's final validation round
    rejected = {e["round"]: e for e in events if e["event"] == "rejected"}
    assert set(rejected) == {0, 1} and {e["site"] for e in rejected.values()} == {POISONED}
    assert broken[0] in rejected[0]["reason"] and "non-finite" in rejected[0]["reason"]
    assert broken[1] in rejected[1]["reason"] and "shape" in rejected[1]["reason"]

    # The global model stays finite and, each round, is the update of the healthy site alone.
    init, _ = load_pbuf_weights(workspace / "save" / "init.pbuf")
    final, final_round = load_pbuf_weights(workspace / "save" / "final.pbuf")
    assert final_round == 2 and all(np.isfinite(v).all() for v in final.values())
    healthy = clients["site1"].uploads[(1, "train")]["tensors"]
    trained = [n for n in final if n in healthy]
    assert len(trained) == len(init)  # a site with both labels trains every group in joint mode
    for name in trained:
        np.testing.assert_allclose(final[name].ravel(), healthy[name].ravel(), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    # The poisoned site received that finite model: apart from the tensor it broke,
    # its round-1 update is finite (it trained from a healthy start).
    second = clients[POISONED].uploads[(1, "train")]["tensors"]
    assert all(np.isfinite(v).all() for n, v in second.items() if n != broken[1])


def test_update_problem_names_what_is_wrong():
    shapes = {"a/kernel": (2, 3), "a/bias": (3,)}
    good = {"a/kernel": np.zeros((2, 3), np.float32), "a/bias": np.ones(3, np.float32)}
    assert update_problem(good, shapes, {"det_head": 10.0}) is None
    assert "not a tensor of the model" in update_problem({**good, "b/kernel": np.zeros(1)}, shapes)
    assert "shape (3, 2)" in update_problem({**good, "a/kernel": np.zeros((3, 2))}, shapes)
    assert "1 non-finite" in update_problem({**good, "a/bias": np.array([0, np.inf, 0])}, shapes)
    assert "dtype" in update_problem({**good, "a/bias": np.array(["x", "y", "z"])}, shapes)
    assert "samples_det_head" in update_problem(good, shapes, {"det_head": float("nan")})
    assert "samples_cls_head" in update_problem(good, shapes, {"cls_head": -1.0})


WRITER = """
import sys, numpy as np
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import utils
from src.atomic_files import dump_proto_atomically
version = 0
while True:
    version += 1
    state = {"w": np.full(40_000_000, version, np.float32)}
    dump_proto_atomically(utils.construct_model_proto(state, version, NoCompressionPipeline()), sys.argv[1])
"""


def test_a_checkpoint_write_killed_midway_leaves_the_previous_state_intact(tmp_path):
    """A process rewriting a 160 MB state file the way the aggregator does is SIGKILLed while
    the new version is half written: the file still loads, complete, as the previous version."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "best.pbuf"
    caught_partial = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + 120
            partial = []
            while not partial and time.monotonic() < deadline and proc.poll() is None:
                partial = [p for p in tmp_path.glob(".best.partial-*") if target.exists()]
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert partial, "the writer never started a second version"
        weights, version = load_pbuf_weights(target)
        assert version >= 1 and weights["w"].size == 40_000_000
        assert np.all(weights["w"] == version)
        leftovers = list(tmp_path.glob(".best.partial-*"))
        if leftovers and leftovers[0].stat().st_size < target.stat().st_size:
            caught_partial += 1  # the kill really landed mid-write
        for p in leftovers:
            p.unlink()
        if caught_partial >= 2:
            break
    assert caught_partial >= 2
