"""Errors the CLI turns into one-line messages.

InputError: bad input or usage (exit code 2). CheckFailed: a check ran and failed
(exit code 1). Anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input: missing or corrupt files, unknown names, invalid YAML, too-long input."""


class CheckFailed(Exception):
    """A verification or regression check failed."""
