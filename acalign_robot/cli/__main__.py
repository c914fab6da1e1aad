"""`python -m acalign_robot.cli ...`: what the `acalign` console script runs (tests, benchmarks and the supervisor
start the processes this way)."""

import sys

from acalign_robot.cli import main

if __name__ == "__main__":
    sys.exit(main())
