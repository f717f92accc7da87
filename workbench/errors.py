"""One exception type for mistakes a user can fix.

The CLI prints these as one clear line (no traceback), because they name the bad value and
what would have been valid; anything else is a bug and keeps its traceback.
"""


class WorkbenchError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible cache."""


def choices_error(what: str, given: object, valid: "list[str] | tuple[str, ...]") -> WorkbenchError:
    """Build the error for an unknown name, listing every valid choice."""
    shown = ", ".join(str(v) for v in valid)
    return WorkbenchError(f"unknown {what} {given!r}; valid choices: {shown}")
