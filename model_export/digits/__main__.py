"""`python -m model_export.digits` (`make eval-digits`); see `--help`."""

import sys

from model_export.digits.command import main

if __name__ == "__main__":  # spawned training processes import this module too
    sys.exit(main())
