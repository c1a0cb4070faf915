"""`make simulate`: a whole OpenFL federation on this machine, real `fx` processes and certificates.

`python -m workspace.simulate --help` lists the options. The modules, in the order a run uses them:
`cli` (options, the run), `data` (data set, split, backbone checkpoint), `plan_edits` (the run's
plan values), `fx_workspace` (the workspace folder and its certificates), `processes` (the fx
processes), `events` (the aggregator's event log as progress and round summaries) and
`final_report` (test evaluation, metrics.json, plots).
"""


class RunFailed(RuntimeError):
    """A step of the run failed; the message names it and shows the end of its log."""
