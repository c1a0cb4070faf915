"""Evaluate a saved model on any split: COCO mAP, per-class AP, accuracy, macro-F1, confusion matrix.

python -m src.cli.evaluate --model workspace/runs/central/model.keras \
    [--split data_splits/default | --sources data/real/sources.yaml] [--out workspace/runs/eval] \
    [--config configs/default.yaml] [--set key=value ...] [--on-error raise|skip]

--model: a `.keras` file or an OpenFL state (`save/best.pbuf`; architecture from
the config). --split: the held-out test split of a split folder (test.tsv);
--sources: every image of a sources.yaml. Writes metrics.json and
confusion_matrix.png into --out and prints a summary. Input it cannot use ends
the command with one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from src.cli.command import load_settings, run_command

log = logging.getLogger("evaluate")


def load_records(cfg: dict, split: Path | None, sources: Path | None, on_error: str):
    from src.data.manifests import load_test_split
    from src.data.sources import load_sources

    victim, disaster = cfg["classes"]["victim"], cfg["classes"]["disaster"]
    if sources is not None:
        per_source, report = load_sources(sources, victim, disaster, on_error=on_error)
        if report.messages:
            log.warning(report.summary())
        return [r for name in sorted(per_source) for r in per_source[name]]
    split = split or Path("data_splits/default")
    return load_test_split(split, victim, disaster, default_data_root=cfg["data"]["root"], on_error=on_error)


def run(model_path: Path, cfg: dict, out_dir: Path, split: Path | None = None, sources: Path | None = None,
        on_error: str = "raise") -> dict:
    """Score the model on the records; its boxes decode as the model file records (else as the settings say)."""
    from src.settings import model_config
    from src.model.config import with_recorded_decode
    from src.federated.checkpoint import load_trained_model
    from src.evaluation import Predictor, check_model_fits, plot_confusion_matrix, score_predictions

    out_dir.mkdir(parents=True, exist_ok=True)  # a bad --out fails before the work, not after
    model = load_trained_model(model_path, cfg)
    mcfg = with_recorded_decode(model_config(cfg), model_path)
    check_model_fits(model, mcfg, str(model_path))
    predictor = Predictor(model, mcfg, **cfg.get("evaluation", {}))
    records = load_records(cfg, split, sources, on_error)
    if not records:
        raise ValueError("no images to evaluate")
    predictions = predictor.predict(records, progress=True)
    ids = [getattr(r, "image_id", None) for r in records]
    ids = ids if None not in ids and len(set(ids)) == len(ids) else None  # COCO ids: ties ranked as COCOeval
    result = score_predictions(predictions, records, mcfg, victim_class_names=cfg["classes"]["victim"],
                               disaster_class_names=cfg["classes"]["disaster"], image_ids=ids)
    result.update(model=str(model_path), data=str(sources or split or "data_splits/default"),
                  centre_range=mcfg.centre_range)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if "confusion_matrix" in result:
        plot_confusion_matrix(result["confusion_matrix"], cfg["classes"]["disaster"],
                              out_dir / "confusion_matrix.png")
    nan = float("nan")
    print(f"{len(records)} images | mAP@0.5 {result.get('map50', nan):.4f} mAP@0.5:0.95 "
          f"{result.get('map50_95', nan):.4f} | accuracy {result.get('accuracy', nan):.4f} macro-F1 "
          f"{result.get('macro_f1', nan):.4f} -> {out_dir}/metrics.json")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--split", type=Path, help="split folder; its test.tsv is evaluated")
    where.add_argument("--sources", type=Path, help="sources.yaml; all its images are evaluated")
    p.add_argument("--out", type=Path, default=Path("workspace/runs/eval"))
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_command(lambda: run(args.model, load_settings(args.config, args.set), args.out,
                                   args.split, args.sources, args.on_error))


if __name__ == "__main__":
    sys.exit(main())
