"""Run reports: final test evaluation of a saved global model, curves and a detection grid."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


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
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.6))
    for ax, (name, values) in zip(axes, series.items()):
        x = trained if name in ("score", "mAP@0.5", "accuracy") else [t + 1 for t in trained]
        ax.plot(x, values, "o-", label="federated (global model, mean over sites' val)")
        if central_series.get(name):
            ax.plot(range(1, len(central_series[name]) + 1), central_series[name], "s--",
                    label="centralized (val, per epoch)")
        ax.set_title(name)
        ax.set_xlabel("epochs of training (federated: rounds)")
        ax.grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
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


def load_central(repo: Path) -> dict | None:
    path = repo / "workspace" / "runs" / "central" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None
