"""Errors a user meets: one line that names the thing and what to do."""


class FleetWatchError(Exception):
    """Base of every error a user can act on; the CLI prints it without a stack trace."""


class SpecError(FleetWatchError):
    """A dataset spec file is missing, malformed or inconsistent."""


class PartitionNotFound(FleetWatchError):
    """A lake partition that a job needs does not exist."""


class ValidationFailed(FleetWatchError):
    """A raw partition broke an expectation; it has been quarantined."""


class AlertsStoreError(FleetWatchError):
    """The alerts database cannot be reached or used."""


class ModelNotFound(FleetWatchError):
    """No registered model version (or alias) to score with."""


class EnvironmentProblem(FleetWatchError):
    """Something the platform needs on this machine is missing (e.g. Java 17)."""


class CorruptModel(FleetWatchError):
    """A model version whose files are missing, truncated or do not match their checksums."""


class ConnectServerUnavailable(EnvironmentProblem):
    """The Spark Connect server does not answer; unlike bad input, a retry may succeed."""
