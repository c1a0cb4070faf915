"""OpenFL adapters only: data loader, task runner, aggregator tweak.

The learning logic lives in src.model / src.training / src.evaluation and runs
without OpenFL; these classes translate between it and OpenFL's interfaces.
"""
