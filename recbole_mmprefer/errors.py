"""Errors about the user's input: the command line prints them without a traceback."""


class InputError(ValueError):
    """A data file, feature file or setting that cannot be used as it is."""


class MissingInputError(FileNotFoundError):
    """An input file that does not exist; the message names the command that makes it."""
