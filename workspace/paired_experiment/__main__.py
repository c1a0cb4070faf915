"""`python -m workspace.paired_experiment`: see workspace/paired_experiment/cli.py."""
import sys

from workspace.paired_experiment.cli import main

sys.exit(main())
