"""An OpenFL workspace folder for one run: plan, code, data, the split, and its certificates.

The run folder holds a workspace of its own (the repository's code and data linked, the
split copied), so runs never write into the repository and a finished run can be
inspected as it ran.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from workspace.simulate import RunFailed
from workspace.simulate.processes import tail

REPO = Path(__file__).resolve().parents[2]
EVENT_LOG = "logs/federation_events.jsonl"  # the aggregator's event log, relative to the workspace
FX_BATCH = Path(__file__).with_name("fx_batch.py")

log = logging.getLogger("simulate")


def workspace_values(rounds: int, port: int) -> dict:
    """The plan values every run sets (see plan_edits.edit_plan): its rounds, the
    aggregator's port and the event log the progress lines are read from."""
    return {"aggregator.settings.rounds_to_train": rounds, "network.settings.agg_port": port,
            "aggregator.settings.event_log": EVENT_LOG}


def prepare_workspace(ws: Path, plan: dict, split_dir: Path) -> None:
    """Write the workspace: `plan` (already edited for the run) as plan/plan.yaml, links to
    the repository's src/, configs/ and data/, a copy of the split, empty state folders."""
    ws.mkdir(parents=True)
    (ws / ".workspace").write_text("")
    for name in ("src", "configs", "data"):
        (ws / name).symlink_to(REPO / name)
    (ws / "plan").mkdir()
    (ws / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    (ws / "plan" / "cols.yaml").write_text("collaborators: []\n")
    (ws / "plan" / "data.yaml").write_text("")
    copy_split(split_dir, ws / "data_splits" / split_dir.name)
    for folder in ("logs", "save", "local_state"):
        (ws / folder).mkdir()


def copy_split(split_dir: Path, target: Path):
    """Copy a split folder (its split.yaml's sites only) into the workspace; its data paths
    (relative to where the split was written) become absolute, so they stay valid in the copy."""
    sites = split_sites(split_dir)
    shutil.copytree(split_dir, target, ignore=lambda folder, names: [
        n for n in names if Path(folder) == split_dir and (split_dir / n).is_dir() and n not in sites])
    for meta_file in [target / "split.yaml", *(target / site / "site.yaml" for site in sites)]:
        meta = yaml.safe_load(meta_file.read_text()) or {}
        original = split_dir / meta_file.relative_to(target).parent
        for key in ("sources", "data_root"):
            if meta.get(key):
                meta[key] = str((original / meta[key]).resolve())
        meta_file.write_text(yaml.safe_dump(meta, sort_keys=False))


def split_sites(split_dir: Path) -> list[str]:
    """The sites of a split, as its split.yaml lists them (not whatever folders exist)."""
    from src.data.manifests import split_sites as listed_sites

    try:
        return listed_sites(split_dir)
    except (ValueError, OSError) as err:
        raise RunFailed(str(err)) from err


def certify(ws: Path, sites: list[str], split_name: str, setup_log: Path, env):
    """The stock OpenFL sequence (docs/deployment.md): CA, aggregator, one cert per site.

    The command lines run through OpenFL's `fx` entry point in one process
    (fx_batch.py beside this file): the same commands, without ~5 s of imports each."""
    steps = [["plan", "initialize", "-a", "localhost"],
             ["workspace", "certify"],
             ["aggregator", "generate-cert-request", "--fqdn", "localhost"],
             ["aggregator", "certify", "--fqdn", "localhost", "--silent"]]
    for site in sites:
        steps += [["collaborator", "create", "-n", site, "-d", f"data_splits/{split_name}/{site}", "-s"],
                  ["collaborator", "generate-cert-request", "-n", site, "-s"],
                  ["collaborator", "certify", "-n", site, "-s"]]
    cmd = [sys.executable, str(FX_BATCH), *(shlex.join(step) for step in steps)]
    done = 0
    with open(setup_log, "a") as f, subprocess.Popen(cmd, cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     env=env, text=True) as proc:
        for out in proc.stdout:
            f.write(out)
            if out.startswith("$ fx "):
                done += 1
                log.info("setup %d/%d: %s", done, len(steps), out.strip()[2:])
    if proc.returncode != 0:
        raise RunFailed(f"fx setup failed (exit {proc.returncode}):\n{tail(setup_log)}")
