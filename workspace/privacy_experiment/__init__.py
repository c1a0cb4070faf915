"""`make privacy-experiment`: what differential privacy costs and what the poisoning defence buys,
measured (see cli.py for the whole story).

`experiment` reads and checks the experiment file and lists its runs, `backdoor` poisons
the attacker's data and measures the backdoor, `runs` runs the federations, `report`
sums them up (report.json, report.md; docs/results/privacy.md through workspace/results.py).
"""
