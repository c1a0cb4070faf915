"""A tiny federation for tests: the real plan with a tiny model and batches, run in
process (write_tiny_plan) or as a certified `fx` workspace with real processes (FxFederation)."""
import os
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TINY = {"model.input_size": 64, "model.width": 0.125, "model.depth": [1, 1, 1, 1, 1],
        "model.cls_head_blocks": 1}


def write_tiny_plan(workspace: Path, sites_dir: Path, rounds: int, sites=("site1", "site2"),
                    runner: dict | None = None, aggregator: dict | None = None, overrides: dict | None = None,
                    sections: dict | None = None):
    """plan/ (plan.yaml from the repository with tiny settings; `runner` / `aggregator`
    settings, settings `overrides` and top-level plan `sections` to set), cols.yaml and
    data.yaml for `sites` under `sites_dir`."""
    plan = {**yaml.safe_load((REPO / "plan" / "plan.yaml").read_text()), **(sections or {})}
    # in-process runs never restart: no OpenFL restart database (its writes cost seconds a round)
    plan["aggregator"]["settings"].update(rounds_to_train=rounds, event_log="logs/events.jsonl",
                                          persist_checkpoint=False)
    # config, overrides and rounds are YAML anchors: one object in both sections
    plan["task_runner"]["settings"]["config"] = plan["data_loader"]["settings"]["config"] = \
        str(REPO / "configs" / "default.yaml")
    plan["task_runner"]["settings"]["rounds"] = rounds
    # batch 8 at every site, one pass an epoch (the plan's small-site batches and repeated
    # epochs would multiply the steps of these tiny sites; those policies have their own
    # test, tests/test_site_data_loader.py, and the fx end-to-end test runs them as planned)
    plan["task_runner"]["settings"]["overrides"].update({**TINY, "pipeline.batch_size": 8, **(overrides or {})})
    # the shipped public backbone fits the default model, not this tiny one
    plan["task_runner"]["settings"].update({"backbone_init": "scratch", **(runner or {})})
    plan["aggregator"]["settings"].update(aggregator or {})
    plan["data_loader"]["settings"].update(min_batches_per_epoch=None, repeat_to_batches=None,
                                            max_images_per_epoch=None)
    (workspace / "plan").mkdir(parents=True)
    (workspace / "plan" / "plan.yaml").write_text(yaml.safe_dump(plan))
    (workspace / "plan" / "cols.yaml").write_text(yaml.safe_dump({"collaborators": list(sites)}))
    (workspace / "plan" / "data.yaml").write_text("".join(f"{s},{sites_dir / s}\n" for s in sites))
    return plan


def write_tiny_site_split(root: Path, num_images: int, num_sites: int, labels, seed: int,
                          test_fraction: float = 0.25, val_fraction: float = 0.25) -> list[dict]:
    """A small synthetic data set in root/data split over sites in root/splits (+ test.tsv)."""
    from src.settings import load_config, parse_assignments
    from src.data.splits import build_site_splits
    from src.data.synthetic import generate_dataset

    cfg = load_config(overrides=parse_assignments([f"data.root={root / 'data'}", f"data.test_fraction={test_fraction}",
                                 f"data.val_fraction={val_fraction}"]))
    generate_dataset(root / "data", num_images=num_images, seed=seed, min_size=96, max_size=128, workers=1)
    return build_site_splits(cfg, root / "splits", num_sites=num_sites, alpha=100.0, seed=0, labels=labels)


# ---- a certified fx workspace and its processes ---------------------------------------------
FX_ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
          "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


class FxFederation:
    """A certified OpenFL workspace for a tiny federation (made as `make simulate` makes
    one) and the `fx` processes started in it, each in its own session.

    The aggregator's port is held (PortReservation) from the moment it is picked until
    the aggregator listens on it, also across a restart."""

    def __init__(self, root: Path, split_dir: Path, name: str, sites: list[str], rounds: int,
                 plan_sections: dict | None = None):
        from workspace.simulate.fx_workspace import certify, prepare_workspace, workspace_values
        from workspace.simulate.plan_edits import edit_plan
        from workspace.simulate.processes import Children, PortReservation

        self.sites, self.children = list(sites), Children()
        self._reservation = PortReservation()
        self.port = self._reservation.port
        plan = {**yaml.safe_load((REPO / "plan" / "plan.yaml").read_text()), **(plan_sections or {})}
        # the shipped backbone fits the default model only; one pass over a tiny site's images
        # an epoch: these scenarios are about faults, not steps
        plan = edit_plan(plan, {"task_runner.settings.backbone_init": "scratch",
                                "data_loader.settings.repeat_to_batches": None,
                                "data_loader.settings.max_images_per_epoch": None,
                                **workspace_values(rounds, self.port)}, overrides={"seed": 0, **TINY})
        self.ws = root / name
        prepare_workspace(self.ws, plan, split_dir)
        certify(self.ws, self.sites, split_dir.name, root / f"{name}-setup.log", FX_ENV)

    def events(self) -> list[dict]:
        """The aggregator's event log as it stands, complete lines only."""
        from workspace.simulate.events import read_events
        from workspace.simulate.fx_workspace import EVENT_LOG

        return read_events(self.ws / EVENT_LOG)

    def start_aggregator(self, log_name: str = "aggregator.log"):
        """`fx aggregator start`; returns once it listens (on the port it had before, if restarted)."""
        from workspace.simulate.processes import FX, PortReservation, wait_for_port

        self._reservation = self._reservation or PortReservation(self.port)
        try:
            proc = self.children.start(log_name, [FX, "aggregator", "start"], self.ws, self.ws / log_name, FX_ENV)
            wait_for_port(self.port, proc, self.ws / log_name)
        finally:
            self._reservation.release()
            self._reservation = None
        return proc

    def start_site(self, site: str, log_name: str | None = None):
        from workspace.simulate.processes import FX

        log_name = log_name or f"{site}.log"
        return self.children.start(log_name, [FX, "collaborator", "start", "-n", site], self.ws,
                                   self.ws / log_name, FX_ENV)

    def log(self, name: str) -> str:
        return (self.ws / name).read_text(errors="replace")

    def wait_for(self, condition, timeout_s: float, what: str, procs=(), poll_s: float = 0.5) -> list[dict]:
        """The event log once condition(events) holds; fails after timeout_s, or as soon as one
        of `procs` ((name, Popen) pairs) exits with an error."""
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.events()
            if condition(events):
                return events
            for name, proc in procs:
                assert proc.poll() in (None, 0), f"{name} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
            time.sleep(poll_s)

    def stop(self):
        self.children.kill_all()
        if self._reservation:
            self._reservation.release()


def of(events: list[dict], kind: str, **fields) -> list[dict]:
    """The events of one kind whose fields have the given values, in log order."""
    return [e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]
