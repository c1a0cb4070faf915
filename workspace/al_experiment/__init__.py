"""`make al-experiment`: what active learning buys, measured (see cli.py for the whole story).

`experiment` reads and checks an experiment file, `runs` runs its federations, `report`
sums them up (report.json, report.md, curves.png), `cli` is the command line.
"""
