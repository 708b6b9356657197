"""spark-submit entry point: `train_models --dataset NAME --date YYYY-MM-DD`; ``STEP`` is what it runs."""

import sys

from jobs._entry import run_job
from models.training import train_models

STEP = train_models

if __name__ == "__main__":
    sys.exit(run_job("train_models", STEP))
