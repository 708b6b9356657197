"""spark-submit entry point: `score_partition --dataset NAME --date YYYY-MM-DD`."""

import sys

from jobs._entry import run_job
from models.scoring import score_partition

if __name__ == "__main__":
    sys.exit(run_job("score_partition", score_partition))
