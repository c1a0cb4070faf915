"""Deployment: export (export.py), runtimes (runtimes.py), numpy pre/post-processing
(postprocess.py), the inference CLI (predict.py) and the quality-vs-speed report (report.py)."""
