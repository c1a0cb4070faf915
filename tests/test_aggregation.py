"""FedAvg with a server learning rate: the aggregation function the plan names."""
import numpy as np
import pytest
from openfl.utilities import LocalTensor

from src.federated.aggregation import ServerStepAverage


def uploads():
    return [LocalTensor("site1", np.array([1.0, 3.0]), 100), LocalTensor("site2", np.array([4.0, 0.0]), 200)]


def history(name, value, fl_round=2):
    """TensorDB rows as OpenFL's aggregator iterates them: the round's global model and noise."""
    return [{"tensor_name": name, "round": fl_round, "tags": ("aggregated",), "nparray": np.asarray(value)},
            {"tensor_name": name, "round": fl_round, "tags": ("trained", "site1"), "nparray": np.zeros(2)},
            {"tensor_name": "other/kernel", "round": fl_round, "tags": ("aggregated",), "nparray": np.ones(2)}]


def test_server_lr_one_is_the_sample_weighted_mean():
    mean = ServerStepAverage(1.0).call(uploads(), iter(history("w/kernel", [9.0, 9.0])), "w/kernel", 2, ())
    np.testing.assert_allclose(mean, [3.0, 1.0])


def test_server_lr_steps_further_along_the_averaged_update():
    base = np.array([2.0, 2.0])
    out = ServerStepAverage(2.0).call(uploads(), iter(history("w/kernel", base)), "w/kernel", 2, ())
    np.testing.assert_allclose(out, base + 2.0 * (np.array([3.0, 1.0]) - base))


def test_round_zero_steps_from_the_initial_model_tag():
    rows = [{"tensor_name": "w/kernel", "round": 0, "tags": ("model",), "nparray": np.zeros(2)}]
    out = ServerStepAverage(1.5).call(uploads(), iter(rows), "w/kernel", 0, ())
    np.testing.assert_allclose(out, 1.5 * np.array([3.0, 1.0]))


def test_batch_norm_statistics_are_only_averaged():
    name = "backbone_stem_bn/moving_variance"
    out = ServerStepAverage(3.0).call(uploads(), iter(history(name, [100.0, 100.0])), name, 2, ())
    np.testing.assert_allclose(out, [3.0, 1.0])


def test_every_instance_keeps_its_own_server_lr():
    """OpenFL's metaclass would hand back the first instance (server_lr 1.5) to the second call."""
    first, second = ServerStepAverage(1.5), ServerStepAverage(1.0)
    assert (first.server_lr, second.server_lr) == (1.5, 1.0)
    np.testing.assert_allclose(second.call(uploads(), iter(history("w/kernel", [2.0, 2.0])), "w/kernel", 2, ()),
                               [3.0, 1.0])


def test_group_server_lr_steps_only_the_groups_it_names():
    function = ServerStepAverage(1.0, group_server_lr={"det_head": 2.0})
    base = np.array([2.0, 2.0])
    for name, step in (("det_head_s8_out/kernel", 2.0), ("backbone_stem_conv/kernel", 1.0)):
        out = function.call(uploads(), iter(history(name, base)), name, 2, ())
        np.testing.assert_allclose(out, base + step * (np.array([3.0, 1.0]) - base), err_msg=name)
    stats = "det_head_s8_bn/moving_mean"
    np.testing.assert_allclose(function.call(uploads(), iter(history(stats, base)), stats, 2, ()), [3.0, 1.0])


def test_rejects_a_non_positive_server_lr_or_an_unknown_group():
    with pytest.raises(ValueError):
        ServerStepAverage(0.0)
    with pytest.raises(ValueError, match="group_server_lr.neck"):
        ServerStepAverage(1.0, group_server_lr={"neck": -1})
    with pytest.raises(ValueError, match="unknown task groups"):
        ServerStepAverage(1.0, group_server_lr={"detector": 2.0})
