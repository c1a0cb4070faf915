"""`python -m src.data.splits`: see src/data/splits/cli.py."""
import sys

from src.data.splits.cli import main

sys.exit(main())
