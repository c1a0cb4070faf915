"""Splits: which images each site holds, with which labels, and the global test split.

stratified (seeded train/val/test cuts that keep bursts whole), partition (dealing
images to sites, the active-learning seed set, SplitError), output (writing a split
folder and swapping it in whole), builtin_data (the built-in data's default federation),
user_sources (user data from a sources.yaml), cli (`python -m src.data.splits`, one
entry point for both).
"""
from src.data.splits.builtin_data import (DEFAULT_LABELS, LABEL_KINDS, LABEL_SETS, build_site_splits, label_flags,
                                          site_labels)
from src.data.splits.cli import main
from src.data.splits.output import relative_path, write_split
from src.data.splits.partition import SplitError, active_learning_seed, dirichlet_partition, manifest_rows
from src.data.splits.stratified import record_groups, stratified_split
from src.data.splits.user_sources import PARTITION_STRATEGIES, build_split, format_table, site_summary

__all__ = ["DEFAULT_LABELS", "LABEL_KINDS", "LABEL_SETS", "PARTITION_STRATEGIES", "SplitError", "active_learning_seed",
           "build_site_splits", "build_split", "dirichlet_partition", "format_table", "label_flags", "main",
           "manifest_rows", "record_groups", "relative_path", "site_labels", "site_summary", "stratified_split",
           "write_split"]
