"""spark-submit entry point: `build_features --dataset NAME --date YYYY-MM-DD`."""

import sys

from feature_store.pipeline import build_features
from jobs._entry import run_job

if __name__ == "__main__":
    sys.exit(run_job("build_features", build_features))
