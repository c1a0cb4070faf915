"""Data: everything between files on disk and the model's input batches.

records (the one record type), formats (readers of real label formats),
sources (a sources.yaml combining them), synthetic (the built-in data set),
manifests (a site's share of the data), duplicates (one picture reached through
several sources, merged), splits (building split folders,
`python -m src.data.splits`), datasets (a run's train/val/test lists),
validate (`python -m src.data.validate`), pipeline (the tf.data pipeline).
"""
