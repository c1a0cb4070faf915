"""Robust aggregation (src/robust_aggregation.py): one bad site of several cannot drag the aggregate."""
import numpy as np
import pytest

from src.robust_aggregation import bound_updates, check_clip, check_statistic, clip_scales, combine, group_norms

GROUP_OF = {"b/k": "backbone", "b/bias": "backbone", "d/k": "det_head"}.__getitem__


def honest_updates(n_sites: int, seed: int = 0) -> list[dict]:
    """Updates of similar direction and size, as sites with similar data send."""
    rng = np.random.default_rng(seed)
    common = {"b/k": rng.normal(size=(4, 4)), "b/bias": rng.normal(size=4), "d/k": rng.normal(size=(3,))}
    return [{k: v + 0.1 * rng.normal(size=v.shape) for k, v in common.items()} for _ in range(n_sites)]


def aggregate(updates: list[dict], statistic: str, clip, trim_fraction: float = 0.0) -> dict:
    """What the aggregator does per round: bound each site per group, then combine per tensor."""
    start = {k: np.zeros_like(v) for k, v in updates[0].items()}
    bounded, _, _ = bound_updates(dict(enumerate(updates)), start, clip, GROUP_OF)
    return {k: combine([u[k] for u in bounded.values()], [1.0] * len(bounded), statistic, trim_fraction)
            for k in updates[0]}


def distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


@pytest.mark.parametrize("attack", ["scaled x10", "scaled x-10", "sign flip"])
@pytest.mark.parametrize("n_sites", [3, 5])
def test_robust_aggregation_bounds_a_poisoning_site_that_plain_averaging_follows(attack, n_sites):
    honest = honest_updates(n_sites)
    clean = aggregate(honest, "mean", None)
    factor = {"scaled x10": 10.0, "scaled x-10": -10.0, "sign flip": -1.0}[attack]
    poisoned = honest[:-1] + [{k: factor * v for k, v in honest[-1].items()}]
    size = np.sqrt(sum(np.sum(v ** 2) for v in clean.values()))
    plain = distance(aggregate(poisoned, "mean", None), clean) / size
    defended = distance(aggregate(poisoned, "median", "median"), clean) / size
    assert plain > 0.3            # the attack moves plain FedAvg far (a sign flip of 1 in 5: 0.4)
    assert defended < 0.15        # norm bound + median stay near it
    assert defended < plain / 4


def test_robust_aggregation_leaves_honest_updates_under_the_bound_unchanged():
    updates = honest_updates(4)
    norms = {i: group_norms(u, GROUP_OF) for i, u in enumerate(updates)}
    largest = max(n for site in norms.values() for n in site.values())
    scales = clip_scales(norms, largest * 1.01)
    assert all(f == 1.0 for site in scales.values() for f in site.values())
    clipped = clip_scales(norms, "median")
    for site, groups in norms.items():
        for group, norm in groups.items():
            bound = np.median([norms[s][group] for s in norms])
            assert norm * clipped[site][group] == pytest.approx(min(norm, bound))


def test_robust_group_norms_are_taken_per_task_group():
    update = {"b/k": np.full((4, 4), 1.0), "b/bias": np.zeros(4), "d/k": np.array([3.0, 4.0, 0.0])}
    assert group_norms(update, GROUP_OF) == {"backbone": pytest.approx(4.0), "det_head": pytest.approx(5.0)}


def test_robust_trimmed_mean_drops_the_extremes_of_each_coordinate():
    values = [np.array([1.0, 10.0]), np.array([2.0, 20.0]), np.array([3.0, 30.0]), np.array([100.0, -100.0])]
    assert combine(values, [1] * 4, "trimmed_mean", 0.25) == pytest.approx([2.5, 15.0])
    assert combine(values, [1] * 4, "trimmed_mean", 0.2) == pytest.approx(np.mean(values, axis=0))  # trims none of 4
    assert combine(values, [1, 1, 1, 0], "mean") == pytest.approx([2.0, 20.0])
    assert combine(values, [1, 1, 1, 1000], "median") == pytest.approx([2.5, 15.0])  # weights buy no influence


@pytest.mark.parametrize("statistic, trim, message", [
    ("krum", 0.0, "statistic"),
    ("trimmed_mean", 0.5, "trim_fraction"),
])
def test_robust_statistics_that_cannot_work_are_refused_by_name(statistic, trim, message):
    with pytest.raises(ValueError, match=message):
        check_statistic(statistic, trim)


@pytest.mark.parametrize("clip", [-1.0, 0, "mean", True])
def test_robust_norm_bounds_that_cannot_work_are_refused_by_name(clip):
    with pytest.raises(ValueError, match="clip_updates"):
        check_clip(clip)



def test_robust_statistic_over_two_senders_is_flagged_as_unable_to_outvote():
    """With decoupled weights a head can have two senders, whose median is their mean."""
    from openfl.utilities import TensorKey

    from src.federated.decoupled import groups_too_small_to_outvote

    key = lambda name: TensorKey(name, "agg", 0, False, ("trained",))  # noqa: E731
    senders = {key("det_head_p3/kernel"): {"site1": 1.0, "site2": 1.0},
               key("det_head_p4/kernel"): {"site1": 1.0, "site2": 1.0},
               key("backbone_stem_conv/kernel"): {"site1": 1.0, "site2": 1.0, "site3": 1.0}}
    assert groups_too_small_to_outvote(senders) == {"det_head": 2}
    assert combine([np.ones(3), 3 * np.ones(3)], [1.0, 1.0], "median").tolist() == [2.0, 2.0, 2.0]
