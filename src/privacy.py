"""Client-level differential privacy of the aggregate: settings and accounting.

Why: a model update carries information about the images it was trained on
(membership and reconstruction attacks on updates are well documented), and
the global model, which every site and every user of the export gets, is
built from those updates. Differential privacy bounds what the released
models can reveal about any one site's data: each site's update (all its task
groups together) is clipped to `clip_norm` in L2 norm, and Gaussian noise of
standard deviation `noise_multiplier * clip_norm` is added to each task
group's sum over the sites that sent it (DP-FedAvg, McMahan et al. 2018,
"Learning differentially private recurrent language models"). Every site takes
part in every round (no sampling), so T rounds are T compositions of the
Gaussian mechanism; the Renyi-DP accountant of Google's `dp-accounting` turns
that into (epsilon, delta).

What the guarantee covers: adding or removing one site's whole data set
changes the distribution of the released global models by at most
(epsilon, delta). The number of sites per group is public (the plan's
membership). The aggregator itself sees each site's clipped update before the
noise (central DP: the coordinator is trusted); per-site batch-norm
statistics are part of the update and protected alike.

What it costs: the noise on a group's mean is noise_multiplier * clip_norm / n
for n senders. With 3 sites that is a third of the noise of one site alone,
and an epsilon near 1 needs a noise multiplier near 10 over 7 rounds: the
noise is then several times the update itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from src.robust_aggregation import group_norms

ON_TARGET = ("refuse", "warn")


@dataclass(frozen=True)
class DifferentialPrivacy:
    """The plan's `differential_privacy` settings (aggregator)."""
    noise_multiplier: float
    clip_norm: float
    delta: float = 1e-5
    target_epsilon: float | None = None
    on_target: str = "refuse"   # refuse to start a plan whose rounds would pass target_epsilon, or warn

    def __post_init__(self):
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"differential_privacy.noise_multiplier must be > 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"differential_privacy.clip_norm must be > 0, got {self.clip_norm!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"differential_privacy.delta must be in (0, 1), got {self.delta!r}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"differential_privacy.target_epsilon must be > 0, got {self.target_epsilon!r}")
        if self.on_target not in ON_TARGET:
            raise ValueError(f"differential_privacy.on_target must be one of {ON_TARGET}, got {self.on_target!r}")

    @classmethod
    def from_plan(cls, settings: dict | None) -> "DifferentialPrivacy | None":
        """None when the plan leaves it out (the default: no noise)."""
        if not settings:
            return None
        known = {"noise_multiplier", "clip_norm", "delta", "target_epsilon", "on_target"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"differential_privacy: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        missing = {"noise_multiplier", "clip_norm"} - set(settings)
        if missing:
            raise ValueError(f"differential_privacy needs {sorted(missing)}")
        return cls(**{k: (float(v) if k != "on_target" and v is not None else v) for k, v in settings.items()})

    def noise_std(self, senders: int) -> float:
        """Standard deviation of the noise on each coordinate of a group's mean over `senders` sites."""
        return self.noise_multiplier * self.clip_norm / max(1, senders)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at this delta after `rounds` noisy aggregations."""
        return epsilon_after(rounds, self.noise_multiplier, self.delta)


def epsilon_after(rounds: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of `rounds` compositions of the Gaussian mechanism (RDP accounting)."""
    if rounds <= 0:
        return 0.0
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds))
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest noise multiplier whose `rounds` aggregations stay within target_epsilon."""
    return float(dp_accounting.calibrate_dp_mechanism(
        RdpAccountant,
        lambda sigma: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), rounds),
        target_epsilon, delta, bracket_interval=dp_accounting.ExplicitBracketInterval(0.05, 1000.0)))


def check_budget(privacy: DifferentialPrivacy, rounds: int) -> str | None:
    """Why a plan of `rounds` training rounds would pass the target epsilon (None if it does not)."""
    if privacy.target_epsilon is None:
        return None
    spent = privacy.epsilon(rounds)
    if spent <= privacy.target_epsilon:
        return None
    needed = noise_multiplier_for(privacy.target_epsilon, privacy.delta, rounds)
    return (f"{rounds} rounds at noise_multiplier {privacy.noise_multiplier:g} reach epsilon {spent:.2f} "
            f"(delta {privacy.delta:g}), over target_epsilon {privacy.target_epsilon:g}: "
            f"use noise_multiplier >= {needed:.2f} or fewer rounds")


def privatize(updates: dict, start: dict, privacy: DifferentialPrivacy, rng) -> tuple[dict, dict]:
    """The sites' values after clipping and noise, ready for a uniform mean.

    `updates` is {site: {tensor name: value}}, `start` {tensor name: the round's
    starting global value}. Each site's whole update is scaled to at most
    clip_norm; each value then gets Gaussian noise of std noise_std(n) * sqrt(n),
    n = the number of sites that sent that tensor, so that the uniform mean over
    those n sites carries exactly noise_std(n) (the DP-FedAvg noise on the sum,
    divided by n). Returns the new values and {site: its update's norm before clipping}.
    """
    senders: dict[str, int] = {}
    for values in updates.values():
        for name in values:
            senders[name] = senders.get(name, 0) + 1
    private, norms = {}, {}
    for site, values in updates.items():
        deltas = {name: value - start[name] for name, value in values.items()}
        norm = group_norms(deltas, lambda name: "update").get("update", 0.0)  # all groups together
        scale = min(1.0, privacy.clip_norm / norm) if norm > 0 else 1.0
        private[site] = {
            name: (start[name] + scale * delta
                   + rng.normal(0.0, privacy.noise_std(senders[name]) * math.sqrt(senders[name]), delta.shape)
                   ).astype(values[name].dtype)
            for name, delta in deltas.items()}
        norms[site] = norm
    return private, norms
