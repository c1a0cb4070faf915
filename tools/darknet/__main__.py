"""`python -m tools.darknet`: see tools.darknet.cli (exit status 2 on a file/layout error)."""
import sys

from tools.darknet.cli import main
from tools.darknet.model_check import DarknetLayoutError
from tools.darknet.weights_file import DarknetFileError

if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, DarknetFileError, DarknetLayoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
