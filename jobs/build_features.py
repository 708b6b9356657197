"""spark-submit entry point: `build_features --dataset NAME --date YYYY-MM-DD`; ``STEP`` is what it runs."""

import sys

from feature_store.pipeline import build_features
from jobs._entry import run_job

STEP = build_features

if __name__ == "__main__":
    sys.exit(run_job("build_features", STEP))
