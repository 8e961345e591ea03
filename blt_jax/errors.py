"""The one error type for user mistakes.

A `UserError` says what was wrong and what to do, in one line; the CLI prints it and exits 2.
Every other exception is a defect and keeps its traceback (exit 1), so a bug is never shown
as if the user had made a mistake. Subclassing ValueError keeps `except ValueError` callers
working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user mistake (bad flag, config, data, workdir): one line, 'what was wrong, what to do'."""


class TrainingDiverged(UserError):
    """The loss or gradient norm became non-finite; the last good checkpoint is intact."""
