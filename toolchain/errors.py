"""Errors the CLI turns into one-line messages, and the one reader of JSON files that
turns every way such a file can be unreadable into one of them.

InputError: bad input or usage (exit code 2). CheckFailed: a check ran and failed
(exit code 1). Anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input: missing or corrupt files, unknown names, invalid YAML, too-long input."""


class CheckFailed(Exception):
    """A verification or regression check failed."""


def first_line(e: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_json_object(path, what: str = "a JSON object") -> dict:
    """A JSON file that must hold an object (config.json, manifest.json, vocab.json, ...):
    missing, unreadable, truncated, non-UTF-8 or not an object -> one-line InputError naming it."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: invalid JSON (truncated or corrupt): {e}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected {what}")
    return data
