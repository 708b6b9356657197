"""spark-submit entry point: `train_models --dataset NAME --date YYYY-MM-DD`."""

import sys

from jobs._entry import run_job
from models.training import train_models

if __name__ == "__main__":
    sys.exit(run_job("train_models", train_models))
