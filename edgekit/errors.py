"""One error type the CLI turns into a one-line message and an exit code."""

from __future__ import annotations


class EdgeKitError(Exception):
    """A failure the user can act on: `message` names the problem, `hint` the fix.

    exit_code 2 means a usage or input error, 1 a failure (a failed gate, a crash of a runtime).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # what was measured before the failure, for --json

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgeKitError):
    """Bad input: a missing file, a wrong flag, a malformed spec. Exit code 2."""

    exit_code = 2
