"""`python -m tools.darknet`: see tools.darknet.cli (one `error:` line and exit status 2 on bad input)."""
import sys

from tools.darknet.cli import main

if __name__ == "__main__":
    sys.exit(main())
