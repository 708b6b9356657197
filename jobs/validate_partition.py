"""spark-submit entry point: `validate_partition --dataset NAME --date YYYY-MM-DD`; ``STEP`` is what it runs."""

import sys

from fleetwatch.core.quality import validate_partition
from jobs._entry import run_job

STEP = validate_partition

if __name__ == "__main__":
    sys.exit(run_job("validate_partition", STEP))
