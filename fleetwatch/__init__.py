"""FleetWatch: scheduled per-entity anomaly detection with Airflow, Spark, MLflow and SQL alerts.

Layers, each importing only those below it (checked by ``tests/test_architecture.py``):
``fleetwatch.app`` (CLI, demo, orchestration, evaluation) > ``jobs`` > ``models`` >
``feature_store`` > ``fleetwatch.core`` (settings, specs, lake, errors, Spark session, alerts
store, data quality, dataset loaders).
"""
