"""Pairwise-masked sums (src/secure_aggregation.py): the sum comes out exact, a single message
tells nothing about its site's vector, and the weight components give the plain weighted mean."""
import os

import numpy as np
import pytest

from src.secure_aggregation import (LIMIT, SecureAggregationError, SiteKey, decode, encode, flatten, from_wire,
                                    masked, stream_name, to_wire, unflatten, unmasked_sum)
from src.task_groups import mean_of_component_sums, task_balanced_weights, weight_components


def site_keys(n):
    keys = {f"site{i}": SiteKey.generate() for i in range(1, n + 1)}
    return keys, {s: k.public_hex for s, k in keys.items()}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_secure_sum_equals_plain_sum(n):
    rng = np.random.default_rng(n)
    keys, members = site_keys(n)
    vectors = {s: rng.normal(0, 3, 20_000) * rng.integers(1, 500) for s in keys}
    stream = stream_name("fed", 4, "backbone", "samples")
    messages = {s: masked(vectors[s], s, keys[s], members, stream) for s in keys}
    total = unmasked_sum(messages, members)
    expected = sum(vectors.values())
    assert np.max(np.abs(total - expected)) < n * 2.0 ** -32
    assert np.linalg.norm(total - expected) / np.linalg.norm(expected) < 1e-9


def test_secure_single_message_is_unreadable():
    """Each message, read as fixed point, is uncorrelated with its vector and nowhere near it."""
    rng = np.random.default_rng(0)
    keys, members = site_keys(3)
    vectors = {s: rng.normal(0.1, 0.05, 50_000) for s in keys}
    stream = stream_name("fed", 0, "neck", "samples")
    for site in keys:
        message = decode(masked(vectors[site], site, keys[site], members, stream))
        assert abs(np.corrcoef(message, vectors[site])[0, 1]) < 0.03
        assert np.median(np.abs(message - vectors[site])) > 1e6  # uniform over +-2^31
    # the plain path for comparison: a message is the vector itself
    site = "site1"
    alone = decode(encode(vectors[site]))
    assert np.corrcoef(alone, vectors[site])[0, 1] > 0.999


def test_secure_masks_are_fresh_per_round_group_and_pair():
    keys, members = site_keys(3)
    zeros = np.zeros(1000)
    a = masked(zeros, "site1", keys["site1"], members, stream_name("fed", 0, "neck", "samples"))
    b = masked(zeros, "site1", keys["site1"], members, stream_name("fed", 1, "neck", "samples"))
    c = masked(zeros, "site1", keys["site1"], members, stream_name("fed", 0, "det_head", "samples"))
    assert len({a.tobytes(), b.tobytes(), c.tobytes()}) == 3


def test_secure_sum_refuses_a_missing_member_or_a_wrong_length():
    keys, members = site_keys(3)
    stream = stream_name("fed", 0, "neck", "samples")
    messages = {s: masked(np.ones(10), s, keys[s], members, stream) for s in keys}
    with pytest.raises(SecureAggregationError, match="no message from \\['site2'\\]"):
        unmasked_sum({s: m for s, m in messages.items() if s != "site2"}, members)
    messages["site3"] = messages["site3"][:9]
    with pytest.raises(SecureAggregationError, match="differ in length"):
        unmasked_sum(messages, members)
    with pytest.raises(SecureAggregationError, match="not listed"):
        masked(np.ones(3), "site1", SiteKey.generate(), members, stream)


def test_secure_encoding_range_and_wire_round_trip():
    with pytest.raises(SecureAggregationError, match="fixed-point range"):
        encode(np.array([LIMIT * 1.01]))
    with pytest.raises(SecureAggregationError, match="NaN"):
        encode(np.array([np.nan]))
    words = encode(np.array([-1.5, 0.0, 1e-9, 123456.789]))
    wire = to_wire(words)
    assert wire.dtype == np.float32 and wire.size == 8
    # through OpenFL's float32 pipeline: bytes out, bytes in
    back = from_wire(np.frombuffer(wire.astype(np.float32).tobytes(), dtype=np.float32))
    assert np.array_equal(back, words)
    np.testing.assert_allclose(decode(back), [-1.5, 0.0, 1e-9, 123456.789], rtol=0, atol=2.0 ** -33)
    shapes = {"b/kernel": (2, 3), "a/bias": (4,)}
    tensors = {name: np.arange(np.prod(shape), dtype=np.float64).reshape(shape) for name, shape in shapes.items()}
    for name, value in unflatten(flatten(tensors), shapes).items():
        assert np.array_equal(value, tensors[name])


def test_secure_site_key_is_kept_private_and_reloaded(tmp_path):
    path = tmp_path / "cert" / "client" / "secagg_site1.key"
    first = SiteKey.load_or_create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert SiteKey.load_or_create(path).public_hex == first.public_hex


@pytest.mark.parametrize("weighting", ["samples", "task_balanced"])
def test_secure_component_sums_give_the_plain_weighted_mean(weighting):
    """The backbone mean from per-task sums equals the mean under task_balanced_weights."""
    rng = np.random.default_rng(1)
    counts = {"site1": {"backbone": 50, "neck": 40, "cls_head": 30},
              "site2": {"backbone": 70, "neck": 70, "cls_head": 0},
              "site3": {"backbone": 200, "neck": 0, "cls_head": 200}}
    updates = {s: rng.normal(size=100) for s in counts}
    votes = {"boxes": 3.0, "class": 1.0}
    components = weight_components("backbone", weighting, votes)
    sums = {c: sum(counts[s][group] * updates[s] for s in counts) for c, (group, _) in components.items()}
    totals = {c: sum(counts[s][group] for s in counts) for c, (group, _) in components.items()}
    mean = mean_of_component_sums(sums, totals, components)
    if weighting == "task_balanced":
        weights = task_balanced_weights(counts, votes)
    else:
        weights = {s: counts[s]["backbone"] for s in counts}
    expected = sum(weights[s] * updates[s] for s in counts) / sum(weights.values())
    np.testing.assert_allclose(mean, expected, rtol=1e-12)
