"""spark-submit entry point: `validate_partition --dataset NAME --date YYYY-MM-DD`."""

import sys

from fleetwatch.core.quality import validate_partition
from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("validate_partition", validate_partition))
