"""Detectors, calibration, thresholds, explanations, drift, model bundles and the MLflow registry."""
