"""`python -m workspace.al_experiment`: see workspace/al_experiment/cli.py."""
import sys

from workspace.al_experiment.cli import main

sys.exit(main())
