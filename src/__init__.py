"""Federated multi-task disaster perception (OpenFL workspace package)."""
