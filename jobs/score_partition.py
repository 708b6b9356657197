"""spark-submit entry point: `score_partition --dataset NAME --date YYYY-MM-DD`; ``STEP`` is what it runs."""

import sys

from jobs._entry import run_job
from models.scoring import score_partition

STEP = score_partition

if __name__ == "__main__":
    sys.exit(run_job("score_partition", STEP))
