"""The experiment file (configs/privacy_experiment.yaml): read, checked, and the runs it asks for.

It speaks the language of `make al-experiment`: `config:` holds settings keys
(configs/default.yaml) by dotted name, `plan:` plan values by dotted plan path; the
`privacy:` and `attacks:` sections describe the two tables. Each run is a plain dict
(its name, number of sites, attack, defence, epsilon), so what a kept result
depends on can be hashed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workspace.al_experiment.experiment import read_experiment_file
from workspace.privacy_experiment.backdoor import Backdoor
from workspace.simulate.fx_workspace import REPO

DEFAULT_CONFIG = REPO / "configs" / "privacy_experiment.yaml"
DEFAULT_OUT = REPO / "workspace" / "runs" / "privacy"
KNOWN_KEYS = {"config", "plan", "rounds", "labels", "alpha", "seeds", "deterministic", "privacy", "attacks", "out"}
PRIVACY_KEYS = {"sites", "epsilons", "delta", "clip_norm"}
ATTACK_KEYS = {"sites", "attacker", "scales", "backdoor", "defence"}
BACKDOOR = "backdoor"


def load_experiment(path: Path, seeds=None, rounds=None) -> dict:
    """The experiment settings, command-line choices applied, checked (a misspelt key fails
    here, naming the file, not an hour into the runs)."""
    exp = read_experiment_file(Path(path))
    for section, known in ((exp, KNOWN_KEYS), (exp.get("privacy", {}), PRIVACY_KEYS),
                           (exp.get("attacks", {}), ATTACK_KEYS)):
        unknown = sorted(set(section) - known)
        if unknown:
            where = "" if section is exp else f" in {'privacy' if known is PRIVACY_KEYS else 'attacks'}:"
            raise SystemExit(f"{path}:{where} unknown keys {unknown}; known: {sorted(known)}")
    exp.setdefault("config", {})
    exp.setdefault("plan", {})
    if seeds is not None:
        exp["seeds"] = seeds
    if rounds is not None:
        exp["rounds"] = rounds
    if not exp.get("seeds"):
        raise SystemExit(f"{path}: no seeds")
    if exp.get("rounds", 0) < 1:
        raise SystemExit(f"{path}: rounds must be >= 1")
    attacks, privacy = exp["attacks"], exp["privacy"]
    try:
        Backdoor(**attacks[BACKDOOR])
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{path}: attacks.backdoor: {err}") from None
    if BACKDOOR in attacks["scales"]:
        raise SystemExit(f"{path}: attacks.scales: {BACKDOOR!r} names the data attack; call the scaling another name")
    clip = privacy["clip_norm"]
    if clip != "median" and not (isinstance(clip, (int, float)) and clip > 0):
        raise SystemExit(f"{path}: privacy.clip_norm must be 'median' or a norm > 0, got {clip!r}")
    if int(attacks["attacker"].removeprefix("site")) > min(attacks["sites"]):
        raise SystemExit(f"{path}: attacks.attacker {attacks['attacker']} is not a site of a "
                         f"{min(attacks['sites'])}-site federation")
    return exp


def clean_name(sites: int, defence: bool) -> str:
    return f"sites{sites}-clean{'-defence' if defence else ''}"


def privacy_runs(exp: dict, seed: int) -> list[dict]:
    """The epsilon table: the run without DP (also the attack table's clean run), then one per epsilon."""
    sites = exp["privacy"]["sites"]
    runs = [{"name": clean_name(sites, False), "sites": sites, "attack": None, "defence": False, "epsilon": None}]
    return runs + [{"name": f"sites{sites}-dp-eps{eps:g}", "sites": sites, "attack": None, "defence": False,
                    "epsilon": float(eps)} for eps in exp["privacy"]["epsilons"]]


def attack_runs(exp: dict, seed: int) -> list[dict]:
    """The attack table: per number of sites, clean and each attack, without and with the defence."""
    attacks = [None, *exp["attacks"]["scales"], BACKDOOR]
    return [{"name": clean_name(sites, defence) if attack is None
             else f"sites{sites}-{attack}{'-defence' if defence else ''}",
             "sites": sites, "attack": attack, "defence": defence, "epsilon": None}
            for sites in exp["attacks"]["sites"] for attack in attacks for defence in (False, True)]


def all_runs(exp: dict, seed: int) -> list[dict]:
    """Every run of a seed, each once, the run without DP first (the DP runs take its update norms)."""
    runs = {}
    for run in privacy_runs(exp, seed)[:1] + attack_runs(exp, seed) + privacy_runs(exp, seed)[1:]:
        runs.setdefault(run["name"], run)
    return list(runs.values())


def run_key(exp: dict, run: dict, seed: int, clip_norm: float | None) -> str:
    """What a finished run depends on: a changed setting makes its kept result stale."""
    fields = {k: exp[k] for k in ("config", "plan", "rounds", "labels", "alpha", "deterministic") if k in exp}
    if run["attack"] is not None or run["defence"]:
        fields["attacks"] = {k: v for k, v in exp["attacks"].items() if k != "sites"}
    if run["epsilon"] is not None:
        fields["privacy"] = {"delta": exp["privacy"]["delta"], "clip_norm": clip_norm}
    text = json.dumps({"exp": fields, "run": run, "seed": seed,
                       "plan": (REPO / "plan" / "plan.yaml").read_text()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
