"""Errors the command line prints without a traceback: bad input, and training that cannot go on."""


class InputError(ValueError):
    """A data file, feature file or setting that cannot be used as it is."""


class MissingInputError(FileNotFoundError):
    """An input file that does not exist; the message names the command that makes it."""


class TrainingDiverged(ArithmeticError):
    """A loss that is not finite; the message names the step, the batch and the last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a resumable stage; the message says what was kept and how to resume."""
