"""Model files stay loadable where the code writes them: a save that fails partway (the disk
refuses the rest of the file, tests/file_faults.py) leaves the previous file as it was.

- the aggregator's OpenFL state files (best/last/final.pbuf), written by OpenFL's own
  `Aggregator._save_model` through `openfl.protocols.utils.dump_proto`, which importing
  our aggregator replaces with the atomic write (src/federated/aggregator.py);
- the task runner's native model file (`save_native`, what `fx model save` calls).

The centralized trainer's and `make simulate`'s model.keras are checked where those
run: tests/test_training.py and tests/test_federation.py.
"""
from pathlib import Path

import numpy as np
import pytest
from openfl.federated import Plan
from openfl.utilities import TensorKey

from src.federated.checkpoint import load_keras_file, load_pbuf_weights
from tests.file_faults import is_file_too_large, writes_fail_beyond
from tests.tiny_federation import write_tiny_plan, write_tiny_site_split


@pytest.fixture(scope="module")
def federation_plan(tmp_path_factory):
    """The repository's plan for two tiny sites, with the current folder its workspace;
    site1's task runner and the initial model (save/init.pbuf) as `fx plan initialize` writes it."""
    root = tmp_path_factory.mktemp("checkpoints")
    write_tiny_site_split(root, num_images=32, num_sites=2, labels=("both",), seed=6)
    write_tiny_plan(root / "ws", root / "splits", rounds=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root / "ws")
        plan = Plan.parse(plan_config_path=Path("plan/plan.yaml"), cols_config_path=Path("plan/cols.yaml"),
                          data_config_path=Path("plan/data.yaml"))
        runner = plan.get_task_runner(plan.get_data_loader("site1"))
        init_path = Path(plan.config["aggregator"]["settings"]["init_state_path"])
        init_path.parent.mkdir(parents=True)
        plan.save_model_to_state_file(runner.get_tensor_dict(), 0, str(init_path))
        yield plan, runner, init_path


def only_complete_files(folder: Path) -> list[str]:
    """The names in folder; a writer's leftover partial file would be among them."""
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("state", ["best_state_path", "last_state_path", "final_state_path"])
def test_an_aggregator_state_file_whose_rewrite_fails_midway_keeps_the_previous_model(federation_plan, state):
    plan, _, init_path = federation_plan
    aggregator = plan.get_aggregator()  # our DecoupledAggregator, as `fx aggregator start` builds it
    path = Path(getattr(aggregator, state))
    init, _ = load_pbuf_weights(init_path)
    aggregator._save_model(0, str(path))  # OpenFL's own writer of every state file
    previous = path.read_bytes()
    names_before = only_complete_files(path.parent)
    # the model of a round 1, in the aggregator's tensor store as OpenFL keeps it
    round_one = {name: value + 1.0 for name, value in init.items()}
    aggregator.tensor_db.cache_tensor({TensorKey(name, aggregator.uuid, 1, False, ("model",)): value
                                       for name, value in round_one.items()})

    with writes_fail_beyond(len(previous) // 2), pytest.raises(OSError) as failed:
        aggregator._save_model(1, str(path))
    assert is_file_too_large(failed.value)
    assert path.read_bytes() == previous, f"{path.name} was overwritten in place and is now torn"
    kept, kept_round = load_pbuf_weights(path)
    assert kept_round == 0 and all(np.array_equal(kept[n], init[n]) for n in init)
    assert only_complete_files(path.parent) == names_before  # no partial file left behind

    aggregator._save_model(1, str(path))  # the disk has room again: the new model replaces it
    saved, saved_round = load_pbuf_weights(path)
    assert saved_round == 1 and all(np.allclose(saved[n], round_one[n]) for n in init)


def test_a_native_model_save_that_fails_midway_keeps_the_previous_model_file(federation_plan, tmp_path):
    _, runner, _ = federation_plan
    target = tmp_path / "model.keras"
    before = runner.get_tensor_dict()
    assert runner.save_native(str(target)) == str(target)
    previous = target.read_bytes()
    runner.set_tensor_dict({name: value + 1.0 for name, value in before.items()})
    try:
        with writes_fail_beyond(len(previous) // 2), pytest.raises(Exception) as failed:
            runner.save_native(str(target))
        assert is_file_too_large(failed.value), failed.value
        assert target.read_bytes() == previous, "model.keras was overwritten in place and is now torn"
        kept = load_keras_file(target)
        assert all(np.array_equal(v.numpy(), before[v.path]) for v in kept.weights)
        assert only_complete_files(tmp_path) == ["model.keras"]

        runner.save_native(str(target))
        saved = load_keras_file(target)
        assert all(np.allclose(v.numpy(), before[v.path] + 1.0) for v in saved.weights)
    finally:
        runner.set_tensor_dict(before)
