"""The project's refusals: one base class for every error that is the user's mistake or the machine's state.

The command line prints such an error as one line and exits with its ``exit_code`` (:data:`EXIT_USER_ERROR`,
or 75 for a run stopped by a signal); anything else is a bug or an unexpected failure, printed with its traceback
and exit code :data:`EXIT_INTERNAL_ERROR`, so an internal torch error is never mistaken for a bad flag.
Each concrete error also derives from the builtin it has always been (``ValueError`` for bad values,
``RuntimeError`` for run-folder and training states), so ``except ValueError`` in user code keeps working.
Torch-free.
"""
from __future__ import annotations

__all__ = ['UserError', 'UsageError', 'EXIT_USER_ERROR', 'EXIT_INTERNAL_ERROR', 'EXIT_PREEMPTED']

EXIT_USER_ERROR = 2      # a refusal: bad input, a folder in use, a missing file (argparse uses 2 as well)
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: an unexpected exception, shown with its traceback
EXIT_PREEMPTED = 75       # EX_TEMPFAIL: stopped by a signal at a saved step, "try again" (schedulers requeue on it)


class UserError(Exception):
    """Base of the project's refusals: the message says what is wrong and what is allowed."""

    exit_code = EXIT_USER_ERROR


class UsageError(UserError, ValueError):
    """A value given by the user (a flag, an argument, a recipe value) is not allowed."""
