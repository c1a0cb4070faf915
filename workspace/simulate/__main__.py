"""`python -m workspace.simulate`: see workspace/simulate/cli.py."""
import sys

from workspace.simulate.cli import main

sys.exit(main())
