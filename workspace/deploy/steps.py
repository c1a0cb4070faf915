"""The runbook's sequences (docs/deployment.md, section 1) over a Rehearsal's machines.

Each function is one or more steps of the runbook in its order, with the operator's
part the runbook leaves to people: settling the plan (C2), the site's images (S3),
moving the files of the travel table, and comparing the request's hash before
answering the signing prompt (C4).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from workspace.deploy.hosts import Rehearsal
from workspace.simulate.plan_edits import edit_plan

ARCHIVE = "federation.zip"
SIGN_PROMPT = "Do you want to sign this certificate?"
SITE_HASH = re.compile(r"The CSR Hash ([0-9a-f]{32,})")
SHOWN_HASH = re.compile(r"The CSR Hash for file \S+ is ([0-9a-f]{32,})")


class HashMismatch(RuntimeError):
    """The coordinator was shown another request than the site made: not signed."""


def settle_plan(r: Rehearsal, host: str, values: dict, overrides: dict | None = None) -> dict:
    """C2's first step, the operator's: plan values into the coordinator's plan/plan.yaml."""
    path = r.machines[host].home / "federation" / "plan" / "plan.yaml"
    plan = edit_plan(yaml.safe_load(path.read_text()), values, overrides)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return plan


def coordinator_setup(r: Rehearsal, host: str, values: dict, overrides: dict) -> None:
    """C1 (checkout, workspace), the plan, then C2 (CA, aggregator certificate)."""
    r.checkout(host)
    r.run(host, "coordinator/workspace")
    settle_plan(r, host, values, overrides)
    r.run(host, "coordinator/initialize")


def site_prepare(r: Rehearsal, site: str, coordinator: str, make_images) -> None:
    """S1, the site's own images (`make_images(folder)`: its data exists before the
    federation does), then S2 with the coordinator's current export."""
    r.checkout(site)
    make_images(r.expand(site, r.values_for(site)["DATA"]))
    r.move(ARCHIVE, coordinator, site)
    r.run(site, "site/import")


def site_request(r: Rehearsal, site: str) -> str:
    """S3 and S4: sources.yaml, validate, site folder, `fx collaborator create`, request;
    the hash the request printed (the one the site reads to the coordinator)."""
    r.write_file(site, "site/sources")
    r.run(site, "site/data")
    return new_request(r, site)


def new_request(r: Rehearsal, site: str) -> str:
    """S4 alone (also a rotation's first step): the printed request hash."""
    found = SITE_HASH.findall(r.run(site, "site/request"))
    if len(found) != 1:
        raise RuntimeError(f"{site}: site/request printed {len(found)} request hashes")
    return found[0]


def sign(r: Rehearsal, coordinator: str, site: str, site_hash: str) -> str:
    """The request to the coordinator, C4 answering `y` only if the hash it shows is
    `site_hash`, the signed package back to the site; the coordinator's output."""
    r.move(f"col_{site}_to_agg_cert_request.zip", site, coordinator)
    shown: list[str] = []

    def answer(output: str) -> str | None:
        if output.count(SIGN_PROMPT) <= len(shown):
            return None
        shown.append((SHOWN_HASH.findall(output) or ["(no hash shown)"])[-1])
        return "y\n" if shown[-1] == site_hash else "n\n"

    output = r.run(coordinator, "coordinator/sign", answer=answer, SITE=site)
    if shown != [site_hash]:
        raise HashMismatch(f"{site}: the coordinator was shown {shown}, the site's request has {site_hash}")
    r.move(f"agg_to_col_{site}_signed_cert.zip", coordinator, site)
    return output


def install(r: Rehearsal, site: str) -> None:
    """S5."""
    r.run(site, "site/install")


def events(r: Rehearsal, coordinator: str) -> list[dict]:
    """The aggregator's event log (C6 reads it with jq), as records."""
    path = r.machines[coordinator].home / "federation" / "logs" / "federation_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def files_under(folder: Path):
    """Every regular file under folder; symlinks (the linked .venv) are not followed."""
    for top, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(names):
            path = Path(top) / name
            if path.is_file() and not path.is_symlink():
                yield path
