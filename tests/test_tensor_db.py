"""The dict-keyed TensorDB answers every call the way OpenFL's pandas TensorDB does."""
import numpy as np
import pytest
from openfl.databases.tensor_db import TensorDB
from openfl.interface.aggregation_functions import WeightedAverage
from openfl.utilities import TensorKey, change_tags

from src.federated.aggregation import ServerStepAverage
from src.federated.tensor_db import KeyedTensorDB

AGG = "agg-uuid"


def _fill(db):
    """Two rounds of a two-site federation as the aggregator caches them."""
    rng = np.random.default_rng(0)
    values = {}
    for rnd in (0, 1):
        tag = "model" if rnd == 0 else "aggregated"
        for name in ("conv/kernel", "bn/moving_mean"):
            values[(name, rnd, "global")] = rng.normal(size=(3, 2))
            db.cache_tensor({TensorKey(name, AGG, rnd, False, (tag,)): values[(name, rnd, "global")]})
            for site in ("site1", "site2"):
                values[(name, rnd, site)] = rng.normal(size=(3, 2))
                tags = change_tags(("trained",), add_field=site)  # (sorted, as OpenFL makes them)
                db.cache_tensor({TensorKey(name, AGG, rnd, False, tags): values[(name, rnd, site)]})
        db.cache_tensor({TensorKey("loss", AGG, rnd, True, ("metric", "site1")): np.array(1.0 + rnd)})
    return values


@pytest.fixture
def dbs():
    stock, keyed = TensorDB(), KeyedTensorDB()
    _fill(stock)
    _fill(keyed)
    return stock, keyed


def test_lookups_and_filters_match_the_stock_tensor_db(dbs):
    stock, keyed = dbs
    keys = [TensorKey("conv/kernel", AGG, 1, False, ("aggregated",)),
            TensorKey("bn/moving_mean", AGG, 0, False, ("site2", "trained")),
            TensorKey("loss", AGG, 1, True, ("metric", "site1")),
            TensorKey("conv/kernel", AGG, 2, False, ("aggregated",)),   # no such round
            TensorKey("conv/kernel", AGG, 1, True, ("aggregated",))]    # report differs
    for key in keys:
        a, b = stock.get_tensor_from_cache(key), keyed.get_tensor_from_cache(key)
        assert (a is None) == (b is None), key
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # a second value under an existing key: the first one stays the answer
    for db in dbs:
        db.cache_tensor({keys[0]: np.zeros((3, 2))})
    np.testing.assert_array_equal(stock.get_tensor_from_cache(keys[0]), keyed.get_tensor_from_cache(keys[0]))
    assert not np.allclose(keyed.get_tensor_from_cache(keys[0]), 0)
    a = stock.get_tensors_by_round_and_tags(1, ("site1", "trained"))
    b = keyed.get_tensors_by_round_and_tags(1, ("site1", "trained"))
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("function", [WeightedAverage(), ServerStepAverage(server_lr=1.5)],
                         ids=["fedavg", "server_step"])
def test_aggregation_matches_the_stock_tensor_db(dbs, function):
    """ServerStepAverage reads the round's starting global value through db_iterator."""
    stock, keyed = dbs
    key = TensorKey("conv/kernel", AGG, 1, False, ("trained",))
    weights = {"site1": 0.25, "site2": 0.75}
    a = stock.get_aggregated_tensor(key, weights, aggregation_function=function)
    b = keyed.get_aggregated_tensor(key, weights, aggregation_function=function)
    np.testing.assert_allclose(a, b)
    assert not np.allclose(b, 0)
    # then cached under the aggregated key
    np.testing.assert_array_equal(keyed.get_tensor_from_cache(key), b)
    missing = {"site1": 0.5, "site3": 0.5}
    other = TensorKey("bn/moving_mean", AGG, 1, False, ("trained",))
    assert keyed.get_aggregated_tensor(other, missing, aggregation_function=function) is None
    assert stock.get_aggregated_tensor(other, missing, aggregation_function=function) is None


def test_clean_up_keeps_the_last_rounds_and_every_report(dbs):
    stock, keyed = dbs
    stock.clean_up(1)
    keyed.clean_up(1)
    a = stock.get_tensors_by_filter()
    b = keyed.get_tensors_by_filter()
    assert a.keys() == b.keys()
    assert {k.round_number for k in b if not k.report} == {1}
    assert TensorKey("loss", AGG, 0, True, ("metric", "site1")) in b


def test_a_stock_db_is_carried_over_with_its_rows():
    stock = TensorDB()
    values = _fill(stock)
    keyed = KeyedTensorDB.from_tensor_db(stock)
    assert len(keyed) == len(stock.get_tensors_by_filter())
    np.testing.assert_array_equal(
        keyed.get_tensor_from_cache(TensorKey("conv/kernel", AGG, 1, False, ("aggregated",))),
        values[("conv/kernel", 1, "global")])
    assert list(keyed.tensor_db.columns) == ["tensor_name", "origin", "round", "report", "tags", "nparray"]
