"""Differential privacy of the aggregate (src/privacy.py): clipping, calibrated noise, the accountant."""
import math

import numpy as np
import pytest
from scipy.stats import norm as gaussian

from src.privacy import DifferentialPrivacy, check_budget, epsilon_after, noise_multiplier_for, privatize


def exact_gaussian_delta(epsilon: float, sigma: float) -> float:
    """delta(epsilon) of one Gaussian mechanism with sensitivity 1 (Balle & Wang 2018, Theorem 8)."""
    return gaussian.cdf(-epsilon * sigma + 1 / (2 * sigma)) - math.exp(epsilon) * gaussian.cdf(
        -epsilon * sigma - 1 / (2 * sigma))


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_privacy_accountant_bounds_the_exact_epsilon_of_one_gaussian_round_closely(sigma):
    delta = 1e-5
    epsilon = epsilon_after(1, sigma, delta)
    # the RDP bound is valid (the exact mechanism meets delta at it) and not loose by more than 2x
    assert exact_gaussian_delta(epsilon, sigma) <= delta
    assert exact_gaussian_delta(epsilon / 2, sigma) > delta


def test_privacy_epsilon_grows_with_rounds_and_falls_with_noise():
    assert epsilon_after(0, 1.0, 1e-5) == 0.0
    assert epsilon_after(1, 1.0, 1e-5) < epsilon_after(7, 1.0, 1e-5) < epsilon_after(20, 1.0, 1e-5)
    assert epsilon_after(7, 4.0, 1e-5) < epsilon_after(7, 1.0, 1e-5)
    sigma = noise_multiplier_for(4.0, 1e-5, 7)
    assert epsilon_after(7, sigma, 1e-5) == pytest.approx(4.0, rel=0.02)


def test_privacy_budget_check_refuses_a_plan_that_would_pass_its_target():
    spent = DifferentialPrivacy(noise_multiplier=1.0, clip_norm=1.0, target_epsilon=4.0)
    reason = check_budget(spent, rounds=7)
    assert reason and "epsilon 15.18" in reason and "noise_multiplier >= 3.0" in reason
    assert check_budget(DifferentialPrivacy(noise_multiplier=4.0, clip_norm=1.0, target_epsilon=4.0), 7) is None


def test_privacy_noise_on_the_mean_is_calibrated_and_updates_are_clipped():
    rng = np.random.default_rng(0)
    start = {"a": np.zeros(20000, np.float32), "b": np.zeros(10000, np.float32)}
    updates = {f"s{i}": {"a": rng.normal(size=20000).astype(np.float32),
                         "b": rng.normal(size=10000).astype(np.float32)} for i in range(3)}
    updates["s3"] = {"a": rng.normal(size=20000).astype(np.float32)}  # a site that trained group a only
    privacy = DifferentialPrivacy(noise_multiplier=0.5, clip_norm=2.0)
    # clipping alone (no noise): every site's whole update has norm clip_norm
    quiet = DifferentialPrivacy(noise_multiplier=1e-12, clip_norm=2.0)
    clipped, norms = privatize(updates, start, quiet, np.random.default_rng(1))
    for site, values in clipped.items():
        assert math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in values.values())) == \
            pytest.approx(2.0, rel=1e-4)
        assert norms[site] > 100
    noisy, _ = privatize(updates, start, privacy, np.random.default_rng(2))
    for name, senders in (("a", 4), ("b", 3)):
        clean = np.mean([clipped[s][name] for s in clipped if name in clipped[s]], axis=0)
        mean = np.mean([noisy[s][name] for s in noisy if name in noisy[s]], axis=0)
        assert np.std(mean - clean) == pytest.approx(privacy.noise_std(senders), rel=0.05)


@pytest.mark.parametrize("settings, message", [
    ({"noise_multiplier": 1.0}, "needs"),
    ({"noise_multiplier": 0, "clip_norm": 1}, "noise_multiplier"),
    ({"noise_multiplier": 1, "clip_norm": 1, "delta": 1.0}, "delta"),
    ({"noise_multiplier": 1, "clip_norm": 1, "epsilon": 1.0}, "unknown"),
    ({"noise_multiplier": 1, "clip_norm": 1, "on_target": "stop"}, "on_target"),
])
def test_privacy_settings_that_cannot_work_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        DifferentialPrivacy.from_plan(settings)
