"""Errors a user can act on. Each message is one line: the source (file, key, stage), the place
(line, field, round, step) and what was expected. The CLI prints it without a traceback."""


class GapoError(Exception):
    """Base class for every user-facing error."""


class DataError(GapoError):
    """Bad input data: names file, line, field and the expectation."""


class ModelError(GapoError):
    """A model path or checkpoint that cannot be used as asked."""


class NumericalError(GapoError):
    """NaN/inf in a loss, reward or advantage: names stage, round and step."""
