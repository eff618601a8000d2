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


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty): what a
    one-line error quotes of an exception from a library."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, without expanding huge or shared structures
    (a YAML alias bomb printed in full would take all memory)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxother, r.maxlong = limit, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
