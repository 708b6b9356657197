"""spark-submit entry point: `check_drift --dataset NAME --date YYYY-MM-DD`; ``STEP`` is what it runs."""

import sys

from jobs._entry import run_job
from models.drift_check import check_drift

STEP = check_drift

if __name__ == "__main__":
    sys.exit(run_job("check_drift", STEP))
