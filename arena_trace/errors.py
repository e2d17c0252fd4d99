"""User-facing failures: each carries a one-line message and a documented exit code (README, "Exit codes")."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug in arena-trace: the only case that prints a traceback (with --debug)
    USAGE = 2  # bad command line
    BAD_TRACE = 3  # trace file unreadable, not a trace, wrong version, corrupted
    ENVIRONMENT = 4  # no privileges, no BPF, bcc or headers missing, tracefs missing
    TARGET = 5  # no such process, kernel thread, exited during attach, no supported allocator
    ATTACH = 6  # probes failed to attach
    OUTPUT = 7  # output path unwritable or exists without --force
    PARTIAL = 8  # analysis done, but the trace was damaged at the tail (data up to the damage used)


class ArenaTraceError(Exception):
    """An expected failure with a clear one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ArenaTraceError):
    exit_code = ExitCode.USAGE


class BadTraceError(ArenaTraceError):
    exit_code = ExitCode.BAD_TRACE


class EnvironmentProblem(ArenaTraceError):
    exit_code = ExitCode.ENVIRONMENT


class TargetError(ArenaTraceError):
    exit_code = ExitCode.TARGET


class AttachError(ArenaTraceError):
    exit_code = ExitCode.ATTACH


class OutputError(ArenaTraceError):
    exit_code = ExitCode.OUTPUT
