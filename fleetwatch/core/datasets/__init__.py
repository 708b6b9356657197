"""Loaders that turn published datasets into FleetWatch specs, raw partitions and labels."""
