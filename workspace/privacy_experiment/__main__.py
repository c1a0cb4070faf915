"""`python -m workspace.privacy_experiment`: see workspace/privacy_experiment/cli.py."""
import sys

from workspace.privacy_experiment.cli import main

sys.exit(main())
