"""Spark entry points run by spark-submit (and by the CLI in-process): thin wrappers."""
