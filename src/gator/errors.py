"""The error types Gator raises for problems a user can fix.

The library raises them with a message that names what is wrong and what to do; the `gator` command
(gator/cli.py) prints such an error as one line without a traceback. Programming errors stay ordinary
Python exceptions. This module imports nothing from Gator, so any module may raise these errors without
pulling in the command line.

    GatorError          bad input or a state the user can change (the base class)
    TrainingError       training cannot start or cannot go on (bad data, a non-finite loss, ...)
    CheckpointError     writing a checkpoint failed; the previous checkpoint is untouched (also an OSError)
"""

from __future__ import annotations


class GatorError(Exception):
    """An error caused by the user's input: printed as one clear line, no traceback."""


class TrainingError(GatorError):
    """Training stopped because of bad input or a fault; the message says what to do."""


class CheckpointError(GatorError, OSError):
    """Writing a checkpoint failed; the previous checkpoint is untouched."""
