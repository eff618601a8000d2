"""Errors the user can fix. The CLI prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input: a config, a path, a game name, a checkpoint. Never an internal bug."""


class ConfigError(UserError, ValueError):
    """A config file or a --set override is invalid."""


class ResultsError(UserError):
    """A results.json file is missing, corrupt or foreign."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not match the run."""


class TrainingDiverged(RuntimeError):
    """Non-finite loss or parameters; the run stops and keeps its last good checkpoint."""
