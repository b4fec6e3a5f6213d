"""The command's errors and exit codes; each error carries the exit code it ends the command with."""

from __future__ import annotations

from enum import IntEnum

from pipeline_core.errors import PipelineError


class ExitCode(IntEnum):
    """What `classify` exits with."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    INTERRUPTED = 130


class CliError(PipelineError):
    """Root of the errors that end the command with a one-line message instead of a traceback."""

    exit_code: ExitCode = ExitCode.USAGE


class UsageError(CliError):
    """Bad arguments, or nothing to classify."""


class AuthenticationError(CliError):
    """The system wants an API key and none, or a wrong one, was given."""


class SystemUnreachableError(CliError):
    """The upload API or the results service cannot be reached, or stays overloaded past every retry."""

    exit_code = ExitCode.UNREACHABLE
    retriable = True


class ProtocolError(CliError):
    """The system answered something this client does not understand (wrong URL, another service)."""

    exit_code = ExitCode.UNREACHABLE


class UploadRejectedError(CliError):
    """The API refused an upload (4xx): carries the status, the short error code, the reason and file name."""

    def __init__(self, status: int, error: str, reason: str, filename: str | None) -> None:
        super().__init__(f"{error}: {reason}" if reason else error)
        self.status = status
        self.error = error
        self.reason = reason
        self.filename = filename
