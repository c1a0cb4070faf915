"""`make test-deploy`: the runbook docs/deployment.md rehearsed as separate machines.

The modules, in the order a rehearsal uses them: `runbook` (the runbook's tagged blocks,
placeholders and travel table), `network` (a network namespace per host), `hosts` (the
host folders, running a block on a host, the mover), `steps` (the runbook's sequences,
with the operator's parts) and `probe` (a site's connection attempt with a given
certificate). The scenario and its checks: tests/test_deploy_hosts.py.
"""
