"""User-facing errors and the exit codes of the interface contract.

Every error a user can see carries a message that says what went wrong and, where we
know it, what to do about it. The exit code tells scripts what state the fleet is in:
2 means nothing was changed, 1 means something failed and everything was undone,
3 means some undo could not run and a human must look.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED_ROLLED_BACK = 1
    REFUSED = 2
    ROLLBACK_INCOMPLETE = 3


class HotcopyError(Exception):
    """Base of every error meant for the user; ``hint`` says what to do next."""

    exit_code: ExitCode = ExitCode.FAILED_ROLLED_BACK

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(HotcopyError):
    """The configuration file is missing or invalid; nothing was changed."""

    exit_code = ExitCode.REFUSED


class RefusedError(HotcopyError):
    """A precondition does not hold (preflight, lock held, bad argument); nothing changed."""

    exit_code = ExitCode.REFUSED


class CommandError(HotcopyError):
    """A command on a host failed; carries its exit status and the tail of stderr."""

    def __init__(
        self, message: str, *, returncode: int | None = None, stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stderr = stderr


class MySQLError(HotcopyError):
    """A server refused a statement, or could not be reached."""


class StepFailed(HotcopyError):
    """A workflow step failed; the workflow rolls back and reports it."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"step '{step}' failed: {cause}")
        self.step = step
        self.cause = cause


class Interrupted(HotcopyError):
    """SIGINT or SIGTERM arrived: the work stops and everything is rolled back."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
