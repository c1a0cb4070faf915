"""A run's report: the global models scored on the held-out test split, metrics.json,
curves.png, detections.png, model.keras and the closing console lines.

Also the one plotting function of the workspace tools (`plot_panels`): simulate's
curves and the active-learning experiment's curves are both panels of series.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from workspace.simulate.events import FederationEvents, traffic_summary  # noqa: E402
from workspace.simulate.fx_workspace import REPO  # noqa: E402
from workspace.simulate.phases import Marks, phase_lines, run_phases  # noqa: E402
from workspace.simulate.plan_edits import settings_overrides  # noqa: E402


# ---- the test evaluation and metrics.json ----------------------------------------------------
def final_report(run_dir: Path, ws: Path, split_dir: Path, events: FederationEvents, seed: int,
                 started: float, run: dict | None = None, marks: Marks | None = None) -> dict:
    """Evaluate init/last/best on the test split, write the report files; returns metrics.json's content.

    `wall_s` is everything a user waits for, from `started` (monotonic) to the
    report written, this evaluation included; `federation_s` stops when the last
    fx process exits. `run`: where the result comes from (src/run_record.py).
    `marks`: the orchestrator's clock marks, for the time breakdown `phases`
    (workspace/simulate/phases.py)."""
    federation_s = time.monotonic() - started
    marks = marks or Marks()
    marks.mark("federation_end")
    from src.settings import load_config, model_config
    from src.training import train_options
    from src.evaluation import Predictor, score_predictions
    from src.model.loss import MultiTaskLoss
    from src.atomic_files import save_model_atomically
    from src.model import build_model
    from src.federated.checkpoint import assign_weights, load_pbuf_weights
    from src.data.manifests import load_test_split

    plan = yaml.safe_load((ws / "plan" / "plan.yaml").read_text())
    runner = plan["task_runner"]["settings"]
    cfg = load_config(ws / runner.get("config", "configs/default.yaml"), settings_overrides(plan))
    mcfg = model_config(cfg)
    # a segmenting model's mask classes: what the test masks' values index, and the per-class IoU names
    mask_classes = {"mask_classes": cfg["classes"]["mask"]} if mcfg.num_mask_classes else {}
    records = load_test_split(split_dir, cfg["classes"]["victim"], cfg["classes"]["disaster"],
                              default_data_root=REPO / cfg["data"]["root"], **mask_classes)
    loss_weights = train_options(cfg).loss_weights

    # one model and one compiled pass for every state: each state only assigns its weights
    model = build_model(mcfg)
    predictor, loss = Predictor(model, mcfg, **cfg.get("evaluation", {})), MultiTaskLoss(mcfg, loss_weights)
    evaluated = []  # (weights, evaluation): a state equal to one already evaluated is not evaluated again

    def evaluate_state(path: Path):
        weights, state_round = load_pbuf_weights(path)
        for seen, result in evaluated:
            if seen.keys() == weights.keys() and all(np.array_equal(seen[k], weights[k]) for k in weights):
                return weights, *result[:2], state_round
        assign_weights(model, weights)
        predictions, mean_loss = predictor.predict_with_loss(records, loss, progress=True)
        result = score_predictions(predictions, records, mcfg,
                                   mask_class_names=mask_classes.get("mask_classes"))
        result["loss"] = mean_loss
        evaluated.append((weights, (predictions, result)))
        return weights, predictions, result, state_round

    initial = evaluate_state(ws / "save" / "init.pbuf")[2]
    last_aggregate = evaluate_state(ws / "save" / "final.pbuf")[2]
    best_path = ws / "save" / "best.pbuf"
    # with the plan's final validation round the best model is often the last aggregate
    best_weights, predictions, test, best_round = evaluate_state(
        best_path if best_path.exists() else ws / "save" / "last.pbuf")
    assign_weights(model, best_weights)
    save_model_atomically(model, run_dir / "model.keras")
    rounds = [events.round_summary(r) for r in events.finished_rounds()]
    idle = [r["idle_s"] for r in rounds[1:] if r["idle_s"] is not None]
    model_bytes = events.model_bytes()
    central = load_central(REPO)
    plot_curves(rounds, run_dir / "curves.png", central)
    plot_detections(records, predictions, cfg["classes"]["disaster"], run_dir / "detections.png")
    metrics = {
        "run": run,
        "final": {"test": test, "best_round": int(best_round)},
        "initial": {"test": initial},
        # the aggregate after the last round's training (OpenFL's best/last.pbuf hold
        # models a round started with: without the plan's final validation round,
        # best has at most rounds-1 epochs)
        "last_aggregate": {"test": last_aggregate},
        "rounds": rounds,
        "median_idle_s": statistics.median(idle) if idle else None,
        "wall_s": time.monotonic() - started, "federation_s": federation_s,
        "seed": seed, "sites": events.sites,
        "model": mcfg.to_dict(),
        "backbone_mode": runner.get("backbone_mode", "joint"), "exchange": runner.get("exchange", "decoupled"),
        "active_learning": runner.get("active_learning"),
        "model_bytes": model_bytes["model_bytes"], "model_bytes_by_group": model_bytes["by_group"],
        "traffic": traffic_summary(rounds, model_bytes["model_bytes"]),
    }
    if central:
        metrics["central_reference"] = {"test": central["test"], "epochs": central["epochs"],
                                        "split": central.get("split"), "labels": central.get("labels")}
    marks.mark("end")
    metrics["phases"] = run_phases(events.events, marks.times, events.rounds)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def summary_lines(metrics: dict, rounds: int, run_dir: Path) -> list[str]:
    """The console lines that close a run: test scores, idle and wall time, upload, labels, files."""
    nan = float("nan")
    t, la = metrics["final"]["test"], metrics["last_aggregate"]["test"]
    lines = [f"test (best global model: the aggregate of round {metrics['final']['best_round']} "
             f"of {rounds}, chosen by the sites' validation score): "
             f"mAP50 {t.get('map50', nan):.3f} mAP50-95 {t.get('map50_95', nan):.3f} "
             f"accuracy {t.get('accuracy', nan):.3f} macro-F1 {t.get('macro_f1', nan):.3f} | "
             f"median idle {metrics['median_idle_s'] or 0:.2f} s/round | wall {metrics['wall_s']:.0f} s "
             f"(federation {metrics['federation_s']:.0f} s, then the test evaluation)",
             f"test (aggregate after the last round): mAP50 {la.get('map50', nan):.3f} "
             f"accuracy {la.get('accuracy', nan):.3f}" + (f" mIoU {la['miou']:.3f}" if "miou" in la else ""),
             f"upload per round ({metrics['exchange']}, backbone {metrics['backbone_mode']}; "
             f"full model {(metrics['model_bytes'] or 0) / 1e6:.2f} MB): " + " | ".join(
                 f"{site} {s['upload_bytes_per_round'] / 1e6:.2f} MB "
                 f"({100 * (s['upload_fraction_of_model'] or 0):.1f} %: "
                 + ", ".join(f"{g} {b / 1e6:.2f}" for g, b in s["upload_bytes_by_group"].items()) + ")"
                 for site, s in metrics["traffic"].items())]
    if "miou" in t:  # the model segments (a site held masks)
        lines.insert(1, f"test segmentation (best global model): mIoU {t['miou']:.3f} over "
                        f"{t['segmentation_images']} images | per class IoU " + " ".join(
                            f"{name} {_iou(iou)}" for name, iou in t["per_class_iou"].items()))
    if metrics["active_learning"]:
        last = metrics["rounds"][rounds - 1]["sites"]
        lines.append(f"labeled at the end ({metrics['active_learning']['strategy']}, simulated oracle): " + " | ".join(
            f"{site} {m['al_labeled']:.0f} of {m['al_labeled'] + m['al_pool'] + m.get('al_pending', 0):.0f}"
            for site, m in last.items() if "al_labeled" in m))
    if metrics.get("phases"):
        lines += phase_lines(metrics["phases"], rounds)
    lines.append(f"report: {run_dir}/(metrics.json, curves.png, detections.png, model.keras)")
    return lines


def _iou(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # None: a class neither truth nor prediction shows


def load_central(repo: Path) -> dict | None:
    """`make train-central`'s metrics, the reference a federation is compared with, if it ran."""
    path = repo / "workspace" / "runs" / "central" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---- plots ------------------------------------------------------------------------------------
@dataclass
class Series:
    """One line of a panel; `band`: a half-width drawn shaded around it (e.g. a standard deviation)."""
    x: Sequence
    y: Sequence
    label: str
    style: dict = field(default_factory=dict)  # matplotlib line properties
    band: Sequence | None = None


@dataclass
class Panel:
    title: str
    series: list[Series]
    xlabel: str
    legend_fontsize: float | None = None  # None: no legend on this panel


def plot_panels(panels: list[Panel], out: Path, panel_size: tuple[float, float] = (4, 3.6),
                dpi: int = 90) -> None:
    """Panels side by side in one PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size[0] * len(panels), panel_size[1]))
    for ax, panel in zip(np.atleast_1d(axes), panels):
        for s in panel.series:
            line, = ax.plot(s.x, s.y, label=s.label, **s.style)
            if s.band is not None:
                y, band = np.asarray(s.y, dtype=float), np.asarray(s.band, dtype=float)
                ax.fill_between(s.x, y - band, y + band, color=line.get_color(), alpha=0.15)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
        if panel.legend_fontsize:
            ax.legend(fontsize=panel.legend_fontsize)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def plot_curves(rounds: list[dict], out: Path, central: dict | None = None) -> dict:
    """Score, mAP@0.5, accuracy and train loss (mean over sites), with the centralized
    reference's per-epoch numbers when available, on one axis: epochs of training;
    with active learning also the labeled images (sum over sites) each round trained
    on. Returns the federated series plotted, by panel title.

    A round's validation scores the global model it *starts* with (trained for
    round - 1 epochs) and its train loss is its own epoch, so validation points
    sit at x = round index, losses at round index + 1: both curves then compare
    models that saw the same number of epochs.
    """
    trained = [r["round"] for r in rounds]
    series = {
        "score": [r.get("score") for r in rounds],
        "mAP@0.5": [_over_sites(r, "map50") for r in rounds],
        "accuracy": [_over_sites(r, "accuracy") for r in rounds],
        "train loss": [_over_sites(r, "loss") for r in rounds],
    }
    labeled = [_over_sites(r, "al_labeled", np.sum) for r in rounds]
    if any(v is not None for v in labeled):
        series["labeled images (all sites)"] = labeled
    central_series = {}
    if central:
        hist = central.get("history", [])
        central_series = {
            "mAP@0.5": [h.get("val", {}).get("map50") for h in hist],
            "accuracy": [h.get("val", {}).get("accuracy") for h in hist],
            "train loss": [h["train"]["loss"] for h in hist],
        }
    panels = []
    for name, values in series.items():
        x = trained if name in ("score", "mAP@0.5", "accuracy") else [t + 1 for t in trained]
        lines = [Series(x, values, "federated (global model, mean over sites' val)",
                        {"marker": "o", "linestyle": "-"})]
        if central_series.get(name):
            lines.append(Series(range(1, len(central_series[name]) + 1), central_series[name],
                                "centralized (val, per epoch)", {"marker": "s", "linestyle": "--"}))
        panels.append(Panel(name, lines, "epochs of training (federated: rounds)",
                            legend_fontsize=7 if name == "train loss" else None))
    plot_panels(panels, out)
    return series


def _over_sites(round_entry: dict, key: str, reduce=np.mean):
    """`reduce` (mean by default) of `key` over the sites that report it; None if none does."""
    values = [s[key] for s in round_entry.get("sites", {}).values() if s.get(key) is not None]
    return float(reduce(values)) if values else None


def plot_detections(records, predictions, class_names, out: Path, count: int = 8,
                    min_score: float = 0.3):
    """A grid of test images: predicted boxes with scores (red), truth (green), classes."""
    count = min(count, len(records))
    cols = 4
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.4))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, r, p in zip(np.ravel(axes), records[:count], predictions[:count]):
        ax.imshow(Image.open(r.image_path).convert("RGB"))
        for x1, y1, x2, y2 in r.boxes:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1))
        for (x1, y1, x2, y2), s in zip(p["boxes"], p["scores"]):
            if s >= min_score:
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1))
                ax.text(x1, y1 - 1, f"{s:.2f}", color="red", fontsize=6)
        pred = int(np.argmax(p["disaster_probs"]))
        truth = class_names[r.disaster_class] if r.has_class else "?"
        ax.set_title(f"pred {class_names[pred]} ({p['disaster_probs'][pred]:.2f})\ntrue {truth}",
                     fontsize=7, color="black" if class_names[pred] == truth else "red")
    fig.suptitle("green: truth, red: predicted victims (score >= %.1f)" % min_score, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
