"""The foundation: settings, dataset specs, the lake, errors, the Spark session, the alerts
store, data quality and dataset loaders. It imports nothing else of FleetWatch."""

__version__ = "0.1.0"
