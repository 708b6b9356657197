"""FleetWatch core: settings, dataset specs, lake paths, alerts store, data quality, CLI."""

__version__ = "0.1.0"
