"""`make paired-experiment`: the default federation's comparisons as paired per-seed differences
(see cli.py for the whole story).

`experiment` reads the experiment file and defines the arms and comparisons, `runs` runs
them, `differences` holds the paired statistics, `report` sums them up (report.json,
report.md; docs/results/paired.md through workspace/results.py), `cli` is the command line.
"""
