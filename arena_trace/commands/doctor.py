"""`arena-trace doctor`: can this machine trace? Exit 0 only when everything tracing needs is there."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from arena_trace.errors import ExitCode


class DoctorCommand:
    name = "doctor"
    help = "check that this machine can trace"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, arguments: argparse.Namespace) -> int:
        from arena_trace.tracer.environment import run_checks

        console = Console(highlight=False)
        checks = run_checks()
        for check in checks:
            mark = "[green]ok[/]  " if check.ok else "[red]FAIL[/]"
            console.print(f"{mark} {check.name}: {escape(check.detail)}")
            if not check.ok and check.fix:
                console.print(f"      fix: {escape(check.fix)}")
        failed = [check.name for check in checks if not check.ok]
        if failed:
            console.print(f"tracing will not work: {', '.join(failed)}")
            return ExitCode.ENVIRONMENT
        console.print("tracing will work")
        return ExitCode.OK


COMMAND = DoctorCommand()
